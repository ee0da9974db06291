"""The README is the front door: its commands exist, its examples run, and every command is documented."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from receiver import VerificationError
from replay.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            names.extend(_commands(command, f"{prefix}{name} "))
        else:
            names.append(f"{prefix}{name}")
    return names


@pytest.mark.parametrize("command", _commands(cli))
def test_every_command_is_in_the_readme_synopsis(command: str) -> None:
    assert f"montra-hooks {command}" in README


@pytest.mark.parametrize("command", _commands(cli))
def test_every_option_of_every_command_is_in_the_readme(command: str) -> None:
    target: click.Command = cli
    for part in command.split():
        assert isinstance(target, click.Group)
        target = target.commands[part]
    hidden = {p.name for p in target.params if getattr(p, "hidden", False)}
    for param in target.params:
        if isinstance(param, click.Option) and param.name not in hidden:
            longest = max(param.opts, key=len)
            assert longest in README, f"{command}: {longest} is not documented"


def test_make_targets_the_readme_names_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", README, flags=re.MULTILINE):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in README and "make run" in README


def test_the_readme_signing_example_runs() -> None:
    block = README.split("from receiver import Verifier, VerificationError, sign", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec("from receiver import Verifier, VerificationError, sign" + block, namespace)  # our own README
    headers = namespace["headers"]
    assert isinstance(headers, dict) and set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    with pytest.raises(VerificationError):
        from receiver import Verifier

        Verifier(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).verify(b'{"type": "tampered"}', headers)


def test_the_readme_pytest_example_is_the_file_that_runs() -> None:
    example = (ROOT / "tests" / "test_readme_example.py").read_text()
    code = example[example.index("from receiver import Event, Hooks") :]
    assert code.strip() in README


def test_help_of_the_group_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output
