"""Secrets in `.montra-hooks/`: owner-only, created once, and never written or read through a planted link."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.server import MONTRA_HOOKS

from receiver.dev_secret import load_dev_secret, load_or_create_dev_secret
from receiver.errors import ConfigurationError
from replay.cli import cli

ATTACKER_TEXT = "whsec_YXR0YWNrZXItY2hvc2VuLXNlY3JldA==\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / ".montra-hooks"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file a planted link points at: it must come out of every test unchanged."""
    path = tmp_path / "victim.txt"
    path.write_text(ATTACKER_TEXT)
    return path


def test_the_dev_secret_is_created_once_owner_only(folder: Path) -> None:
    secret, created = load_or_create_dev_secret(folder / "dev-secret")
    assert created and secret.startswith("whsec_")
    assert (mode(folder), mode(folder / "dev-secret")) == (0o700, 0o600)
    assert (folder / "dev-secret").read_text() == secret + "\n"
    assert load_or_create_dev_secret(folder / "dev-secret") == (secret, False)
    assert load_dev_secret(folder / "dev-secret") == secret
    assert sorted(p.name for p in folder.iterdir()) == ["dev-secret"]  # no temporary file left behind


def test_a_folder_made_by_an_older_version_is_tightened(folder: Path) -> None:
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    load_or_create_dev_secret(folder / "dev-secret")
    assert mode(folder) == 0o700


def test_a_link_planted_at_the_temporary_name_is_not_followed(folder: Path, victim: Path) -> None:
    # The name the temporary file used to have (`dev-secret.<pid>.tmp`): predictable, so plantable.
    folder.mkdir(mode=0o700)
    (folder / f"dev-secret.{os.getpid()}.tmp").symlink_to(victim)
    secret, created = load_or_create_dev_secret(folder / "dev-secret")
    assert created
    assert victim.read_text() == ATTACKER_TEXT  # neither truncated nor given the secret
    assert (folder / "dev-secret").read_text() == secret + "\n"
    assert not (folder / "dev-secret").is_symlink()


@pytest.mark.parametrize("load", [load_dev_secret, load_or_create_dev_secret])
def test_a_link_planted_at_the_final_name_is_refused(
    folder: Path, victim: Path, load: Callable[[Path], object]
) -> None:
    folder.mkdir(mode=0o700)
    (folder / "dev-secret").symlink_to(victim)
    with pytest.raises(ConfigurationError, match=r"dev-secret is a symbolic link: .* Remove it and start again\."):
        load(folder / "dev-secret")  # reading through it would sign with a secret the attacker chose
    assert victim.read_text() == ATTACKER_TEXT
    assert os.readlink(folder / "dev-secret") == str(victim)


def test_a_dangling_link_at_the_final_name_is_not_written_through(folder: Path, tmp_path: Path) -> None:
    folder.mkdir(mode=0o700)
    target = tmp_path / "would-be-created"
    (folder / "dev-secret").symlink_to(target)
    with pytest.raises(ConfigurationError, match="is a symbolic link"):
        load_or_create_dev_secret(folder / "dev-secret")
    assert not target.exists()


@pytest.mark.parametrize("load", [load_dev_secret, load_or_create_dev_secret])
def test_a_linked_folder_is_refused(folder: Path, tmp_path: Path, load: Callable[[Path], object]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match=r"\.montra-hooks is not a folder \(a symbolic link or a file\?\)"):
        load(folder / "dev-secret")
    assert list(elsewhere.iterdir()) == []


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path) -> None:
    code = "from receiver.dev_secret import load_or_create_dev_secret as f; s, c = f(); print(s, c)"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    results = [proc.communicate(timeout=30)[0].split() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    secrets = {secret for secret, _ in results}
    assert secrets == {(tmp_path / ".montra-hooks" / "dev-secret").read_text().strip()}
    assert [created for _, created in results].count("True") == 1


def test_serve_and_trigger_refuse_a_planted_link_in_one_line(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_SECRETS", raising=False)
    (tmp_path / ".montra-hooks").mkdir(mode=0o700)
    (tmp_path / ".montra-hooks" / "dev-secret").symlink_to(victim)
    served = subprocess.run(
        [str(MONTRA_HOOKS), "serve", "--db", "events.db", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "MONTRA_HOOKS_SECRETS"},
    )
    assert served.returncode == 2
    assert served.stderr.splitlines()[-1] == (
        "Error: .montra-hooks/dev-secret is a symbolic link: montra-hooks does not follow links where it keeps "
        "secrets. Remove it and start again."
    )
    triggered = CliRunner().invoke(cli, ["trigger", "customer.created"])
    assert triggered.exit_code == 2
    assert "dev-secret is a symbolic link" in triggered.output
    assert victim.read_text() == ATTACKER_TEXT
