"""The README is the front door and docs/ the rest of the house: every command and option is documented,
the CLI reference is generated from the commands themselves, and the examples are the code that runs."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from mkdocs_click._docs import make_command_docs

from receiver import VerificationError
from replay.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
CLI_PAGE = (DOCS / "cli.md").read_text()
# The guides: every page a reader reads, the generated reference aside.
GUIDES = README + "".join(page.read_text() for page in sorted(DOCS.glob("*.md")) if page.name != "cli.md")


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            names.extend(_commands(command, f"{prefix}{name} "))
        else:
            names.append(f"{prefix}{name}")
    return names


def _command(path: str) -> click.Command:
    target: click.Command = cli
    for part in path.split():
        assert isinstance(target, click.Group)
        target = target.commands[part]
    return target


def _visible_options(command: click.Command) -> list[str]:
    hidden = {p.name for p in command.params if getattr(p, "hidden", False)}
    return [max(p.opts, key=len) for p in command.params if isinstance(p, click.Option) and p.name not in hidden]


def _directive() -> dict[str, str]:
    block = CLI_PAGE.split("::: mkdocs-click", 1)[1]
    return dict(re.findall(r"^\s+:(\w+): (.+)$", block, flags=re.MULTILINE))


def _reference() -> str:
    """docs/cli.md as the site shows it: what mkdocs-click renders from the directive on that page."""
    options = _directive()
    lines = make_command_docs(
        prog_name=options["prog_name"],
        command=cli,
        depth=int(options["depth"]),
        style=options["style"],
        list_subcommands=options["list_subcommands"] == "true",
    )
    return "\n".join(lines)


REFERENCE = _reference()


def test_the_cli_reference_is_generated_from_the_group() -> None:
    assert _directive() == {
        "module": "replay.cli",
        "command": "cli",
        "prog_name": "montra-hooks",
        "depth": "1",
        "style": "plain",
        "list_subcommands": "true",
    }


@pytest.mark.parametrize("command", _commands(cli))
def test_every_command_is_in_the_cli_reference(command: str) -> None:
    assert f"montra-hooks {command}" in REFERENCE
    assert f"`{command.split()[0]}" in CLI_PAGE  # and in the page's overview table


@pytest.mark.parametrize("command", _commands(cli))
def test_every_command_is_in_a_guide(command: str) -> None:
    assert f"montra-hooks {command}" in GUIDES


@pytest.mark.parametrize("command", _commands(cli))
def test_every_option_of_every_command_is_in_the_cli_reference(command: str) -> None:
    for option in _visible_options(_command(command)):
        assert option in REFERENCE, f"{command}: {option} is not in the generated reference"


@pytest.mark.parametrize("command", _commands(cli))
def test_every_option_of_every_command_is_explained_in_the_guides(command: str) -> None:
    for option in _visible_options(_command(command)):
        assert option in GUIDES, f"{command}: {option} is not documented outside the generated reference"


def test_make_targets_the_docs_name_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?:^|`)make ([a-z][\w-]*)", GUIDES, flags=re.MULTILINE))
    assert {"run", "test", "docs", "bench"} <= targets
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), target


def test_make_test_builds_the_docs_strictly() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(MKDOCS) build --strict" in recipe and "MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs" in makefile
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in README and "make run" in README


def test_the_readme_is_a_front_page() -> None:
    assert len(README.splitlines()) <= 300
    assert "Standard Webhooks 1.0" in README
    assert "`. .venv/bin/activate`" in README  # the console script lives in the venv: say how to reach it
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"(docs/{page.name}" in README, f"the README does not link docs/{page.name}"
    for heading in ("merchants", "replay events in your tests", "tunnel webhooks to your laptop"):
        assert re.search(rf"^## .*{heading}", README, flags=re.MULTILINE), heading


def test_the_readme_names_every_dependency() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    names = re.findall(r'^\s+"([a-z0-9][a-z0-9-]*)', pyproject, flags=re.MULTILINE)
    dependencies = README.split("## Dependencies", 1)[1]
    for name in names:
        assert f"`{name}`" in dependencies, f"{name} is not in the README's dependency list"


def test_the_signing_example_runs() -> None:
    handlers = (DOCS / "handlers.md").read_text()
    block = handlers.split("from receiver import Verifier, VerificationError, sign", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec("from receiver import Verifier, VerificationError, sign" + block, namespace)  # our own docs
    headers = namespace["headers"]
    assert isinstance(headers, dict) and set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    with pytest.raises(VerificationError):
        from receiver import Verifier

        Verifier(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).verify(b'{"type": "tampered"}', headers)


def test_the_testing_page_pytest_example_is_the_file_that_runs() -> None:
    example = (ROOT / "tests" / "test_readme_example.py").read_text()
    code = example[example.index("from receiver import Event, Hooks") :]
    assert code.strip() in (DOCS / "testing.md").read_text()


def test_the_readme_pytest_example_is_part_of_the_file_that_runs() -> None:
    example = (ROOT / "tests" / "test_readme_example.py").read_text()
    block = README.split("```python\nfrom receiver import Event, Hooks\n", 1)[1].split("```", 1)[0]
    for chunk in ("from receiver import Event, Hooks\n" + block).split("\n\n\n"):
        assert chunk.strip() in example, chunk


def test_help_of_the_group_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output
