"""The shape of the CLI: one `montra-hooks` group that `python -m replay` runs, a library that speaks no
click, read-only commands that start without the web stack, and first-run errors that take one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from receiver.errors import ConfigurationError
from receiver.hooks import Hooks, import_hooks
from receiver.stores.sqlite.store import connect
from replay.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def python(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env, check=False
    )


def test_python_dash_m_replay_lists_every_command() -> None:
    result = python("-m", "replay", "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("Usage: montra-hooks [OPTIONS] COMMAND [ARGS]...\n")
    listed = re.findall(r"^  (\S+)  ", result.stdout.split("Commands:\n", 1)[1], flags=re.MULTILINE)
    assert listed == sorted(cli.commands)
    expected = {"serve", "events", "rejections", "retry", "prune", "trigger", "replay", "watch", "listen", "fixtures"}
    expected.add("drift")
    assert set(listed) == expected


def test_the_console_script_and_python_dash_m_are_one_cli() -> None:
    script = Path(sys.executable).parent / "montra-hooks"
    if not script.exists():
        pytest.skip("the montra-hooks script is not installed beside this Python")
    by_script = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert by_script.stdout == python("-m", "replay", "--help").stdout


def test_nothing_under_receiver_imports_click_in_its_source() -> None:
    importing = re.compile(r"^\s*(import click|from click\b)", flags=re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "receiver").rglob("*.py") if importing.search(p.read_text())]
    assert offenders == []


def test_replay_library_modules_import_no_click() -> None:
    importing = re.compile(r"^\s*(import click|from click\b)", flags=re.MULTILINE)
    library = [p for p in (ROOT / "replay").glob("*.py") if p.name != "__main__.py"]
    assert {p.name for p in library} >= {"watch.py", "replay.py", "sources.py", "send.py", "listen.py", "fixtures.py"}
    assert [p.name for p in library if importing.search(p.read_text())] == []


# Imports the modules named in argv[1:], refusing `import click` from any of them (sqlite-utils, a dependency,
# may import it: the rule is about this project's code).
_NO_CLICK_FROM = """
import builtins, importlib, sys
banned = set(sys.argv[1:])
real_import = builtins.__import__

def guarded(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if name.split(".")[0] == "click" and importer in banned:
        raise ImportError(f"{importer} imports click")
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded
for name in sys.argv[1:]:
    importlib.import_module(name)
print(len(sys.argv[1:]))
"""


def _modules(package: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not name.endswith("__main__") and not name.startswith(skip):
            found.append(name)
    return found


def test_no_receiver_module_imports_click() -> None:
    modules = _modules("receiver")
    assert "receiver.stores.postgres.store" in modules and "receiver.inspector.pages" in modules
    result = python("-c", _NO_CLICK_FROM, *modules, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{len(modules)}\n"


def test_the_verifier_and_hooks_import_with_click_absent() -> None:
    code = (
        'import sys; sys.modules["click"] = None; '
        "import receiver.verify, receiver.hooks, receiver.event, receiver.errors, receiver.dev_secret; "
        "from receiver.hooks import import_hooks; from receiver import Verifier, sign"
    )
    result = python("-c", code, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")


def test_replay_library_modules_import_no_click_at_run_time() -> None:
    modules = _modules("replay", skip=("replay.cli",))
    assert {"replay.watch", "replay.replay", "replay.sources", "replay.send", "replay.listen"} <= set(modules)
    result = python("-c", _NO_CLICK_FROM, *modules, cwd=ROOT)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{len(modules)}\n"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("handlers_here", "'handlers_here' is not MODULE:HOOKS: a dotted module name (not a file path) and a name"),
        (":hooks", "':hooks' is not MODULE:HOOKS"),
        ("../x:y", "'../x:y' is not MODULE:HOOKS: a dotted module name (not a file path)"),
        ("handlers_here:hooks()", "is not MODULE:HOOKS"),
        (
            "no_such_module_anywhere:hooks",
            "cannot import 'no_such_module_anywhere': no module named 'no_such_module_anywhere'.",
        ),
        ("handlers_here:missing", "handlers_here:missing is nothing, not a receiver.Hooks."),
        ("handlers_here:value", "handlers_here:value is int, not a receiver.Hooks."),
    ],
)
def test_import_hooks_raises_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str
) -> None:
    (tmp_path / "handlers_here.py").write_text("from receiver import Hooks\nvalue = 3\nhooks = Hooks()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "handlers_here", raising=False)
    with pytest.raises(ConfigurationError) as raised:
        import_hooks(spec)
    assert not isinstance(raised.value, click.ClickException)
    assert message in str(raised.value)


def test_a_module_that_raises_on_import_shows_its_own_frames_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "handlers_broken.py").write_text(
        "import os\n\ndef setup():\n    raise ValueError('no DSN')\n\nsetup()\n"
    )
    (tmp_path / "handlers_needy.py").write_text("import not_installed_anywhere\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("handlers_broken", "handlers_needy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ConfigurationError) as raised:
        import_hooks("handlers_broken:hooks")
    broken = str(tmp_path / "handlers_broken.py")
    assert str(raised.value).splitlines() == [
        "importing 'handlers_broken' failed:",
        f'  File "{broken}", line 6, in <module>',
        "    setup()",
        f'  File "{broken}", line 4, in setup',
        "    raise ValueError('no DSN')",
        "ValueError: no DSN",
    ]
    with pytest.raises(ConfigurationError) as needy:
        import_hooks("handlers_needy:hooks")  # a module the user's module imports is missing: its frame shows
    assert str(needy.value).splitlines()[0] == "importing 'handlers_needy' failed:"
    assert str(needy.value).splitlines()[-1] == "ModuleNotFoundError: No module named 'not_installed_anywhere'"


def test_import_hooks_returns_the_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "handlers_ok.py").write_text("from receiver import Hooks\nhooks = Hooks()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "handlers_ok", raising=False)
    hooks = import_hooks("handlers_ok:hooks")
    assert isinstance(hooks, Hooks)
    assert hooks is sys.modules["handlers_ok"].hooks


_LOADED = """
import json, sys
from replay.cli import cli
try:
    cli(sys.argv[1:], prog_name="montra-hooks")
except SystemExit as e:
    code = e.code
web = sorted(m for m in sys.modules if m.split(".")[0] in ("starlette", "uvicorn", "jinja2", "httpx"))
print(json.dumps({"exit": code, "web": web}))
"""


@pytest.fixture(scope="module")
def light_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an empty store and a handlers module that needs nothing but receiver."""
    folder = tmp_path_factory.mktemp("light")
    (folder / "handlers_light.py").write_text("from receiver import Hooks\nhooks = Hooks()\n")
    connect(str(folder / "events.db")).close()
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["events", "list"],
        ["events", "show", "evt_none"],
        ["retry"],
        ["rejections", "list"],
        ["prune", "--older-than", "30d"],
        ["fixtures", "list"],
        ["fixtures", "show", "refund.created"],
        ["replay", "--dry-run", "--app", "handlers_light:hooks"],
    ],
    ids=" ".join,
)
def test_read_commands_do_not_load_the_web_stack(light_dir: Path, command: list[str]) -> None:
    env = {**os.environ, "MONTRA_HOOKS_DB": str(light_dir / "events.db")}
    result = python("-c", _LOADED, *command, cwd=light_dir, env=env)
    outcome = json.loads(result.stdout.splitlines()[-1])
    expected_exit = 1 if command[:2] == ["events", "show"] else 0  # evt_none is not stored
    assert outcome == {"exit": expected_exit, "web": []}, result.stdout + result.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_SECRETS", raising=False)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--db", str(tmp_path / "e.db")])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"Error: Port {port} on 127.0.0.1 is already in use (another montra-hooks serve?): "
        f"stop it, or pass --port with a free port, e.g. --port {port + 1}."
    ]
    assert list(tmp_path.iterdir()) == []  # neither a dev secret nor a store was created


def test_serve_on_a_port_in_use_as_a_process(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = python("-m", "replay", "serve", "--port", str(port), "--db", str(tmp_path / "e.db"), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"Error: Port {port} on 127.0.0.1 is already in use (another montra-hooks serve?): "
        f"stop it, or pass --port with a free port, e.g. --port {port + 1}."
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("group", ["events", "fixtures"])
def test_group_help_shows_examples(group: str) -> None:
    result = CliRunner().invoke(cli, [group, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    for name in cli.commands[group].commands:  # type: ignore[attr-defined]
        assert f"montra-hooks {group} {name}" in result.output


def test_bench_runner_outside_the_venv_says_make_bench(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(ROOT / "bench" / "run.py", bench / "run.py")
    # -S: no site-packages, as a Python without the project's dependencies; and no .venv beside this copy.
    result = python("-S", str(bench / "run.py"), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"bench/run.py: this Python ({sys.executable}) lacks starlette, uvicorn, httpx, sqlite_utils, receiver: "
        "run `make bench`, which installs the project into .venv first."
    ]


def test_bench_runner_outside_the_venv_re_runs_itself_with_the_venv(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(ROOT / "bench" / "run.py", bench / "run.py")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    # Stands in for the project's venv Python: this one, which has the dependencies.
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv_bin / "python").chmod(0o755)
    result = python("-S", str(bench / "run.py"), "no_such_benchmark", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "no benchmark named no_such_benchmark; there are: \n"
