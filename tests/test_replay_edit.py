"""`montra-hooks replay --edit` through real processes: a real editor program, a real `serve`, its real store.

The "editor" is a small Python script run by `$VISUAL`/`$EDITOR` (with arguments, as `code --wait`
would be): it notes what it was given (its arguments, the file's mode and text) and rewrites the
file, or breaks it, or exits with an error, as asked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.db import query
from support.server import MONTRA_HOOKS, ServerProcess
from support.signing import signed_post

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

EDITOR = """
import json, os, stat, sys

args, path = sys.argv[1:-1], sys.argv[-1]
text = open(path, encoding="utf-8").read()
envelope = json.loads(text)
event = envelope["data"]["id"]
with open(os.environ["EDITOR_LOG"], "a") as log:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    log.write(json.dumps({"args": args, "path": path, "mode": oct(mode), "text": text, "event": event}) + "\\n")
if "--fail-on" in args and args[args.index("--fail-on") + 1] == event:
    sys.exit(3)
if "--remove" in args and args[args.index("--remove") + 1] == event:
    os.remove(path)
    sys.exit(0)
if "--break" in args and args[args.index("--break") + 1] == event:
    open(path, "w").write('{"type": "payment.failed", "data": {')
    sys.exit(0)
envelope["data"]["amount"] = int(args[args.index("--amount") + 1])
open(path, "w").write(json.dumps(envelope, indent=1))
"""


@pytest.fixture
def receiver(tmp_path: Path, serve: Callable[..., ServerProcess]) -> ServerProcess:
    """A real receiver (no handlers) holding two payments: msg_a (pay_a, 100) and msg_b (pay_b, 200)."""
    server = serve("--db", "events.db", "--secret", SECRET)
    for name, amount in (("a", 100), ("b", 200)):
        body = json.dumps({"type": "payment.failed", "data": {"id": f"pay_{name}", "amount": amount}}).encode()
        assert signed_post(server.url + "/webhooks", body, SECRET, f"msg_{name}").status_code == 200
    (tmp_path / "editor.py").write_text(EDITOR)
    return server


def replay_edit(
    tmp_path: Path, server: ServerProcess, *editor_args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`montra-hooks replay --id msg_a --id msg_b --edit` with no terminal, $VISUAL (unless `env` says) the script."""
    editor = shlex.join([sys.executable, str(tmp_path / "editor.py"), *editor_args])
    base = {k: v for k, v in os.environ.items() if k not in ("VISUAL", "EDITOR")}
    command = [str(MONTRA_HOOKS), "replay", "--db", "events.db", "--id", "msg_a", "--id", "msg_b", "--edit"]
    return subprocess.run(
        [*command, "--to", server.url + "/webhooks", "--secret", SECRET],
        cwd=tmp_path,
        env={**base, "EDITOR_LOG": str(tmp_path / "editor.log"), **(env if env is not None else {"VISUAL": editor})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def editor_log(tmp_path: Path) -> list[dict[str, str]]:
    log = tmp_path / "editor.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def replays(tmp_path: Path) -> list[tuple[str, str, bytes]]:
    """(id, montra-replay-of, body) of every stored replay, sorted (a replay's id begins with the id it replays):
    replay sends several at once, so they may arrive in either order."""
    rows = query(tmp_path / "events.db", "SELECT id, headers, body FROM events WHERE seq > 2")
    return sorted((id, json.loads(headers).get("montra-replay-of"), bytes(body)) for id, headers, body in rows)


def test_edit_sends_what_the_editor_saved_re_signed_under_new_ids(tmp_path: Path, receiver: ServerProcess) -> None:
    # $VISUAL wins over $EDITOR (here a command that would fail), as git chooses.
    editor = shlex.join([sys.executable, str(tmp_path / "editor.py"), "--amount", "999"])
    done = replay_edit(tmp_path, receiver, env={"VISUAL": editor, "EDITOR": "false"})
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert (lines[1:3], lines[-1]) == (["  by status: 200 x 2", "  by answer: stored x 2"], "All 2 accepted.")

    log = editor_log(tmp_path)
    assert [entry["event"] for entry in log] == ["pay_a", "pay_b"]
    for entry, amount in zip(log, (100, 200), strict=True):
        assert entry["args"] == ["--amount", "999"]  # the command's own arguments, the file last
        assert entry["mode"] == "0o600"
        # Pretty-printed, as a person edits it.
        expected = {"type": "payment.failed", "data": {"id": entry["event"], "amount": amount}}
        assert entry["text"] == json.dumps(expected, indent=2) + "\n"
        assert not Path(entry["path"]).exists()  # removed once read

    sent = replays(tmp_path)
    assert [(re.fullmatch(r"msg_[ab]_r[0-9a-f]{8}", id) is not None, of) for id, of, _ in sent] == [
        (True, "msg_a"),
        (True, "msg_b"),
    ]
    for (_, of, body), name in zip(sent, "ab", strict=True):
        # The exact bytes saved: the editor's own indentation, the edit in them.
        assert (
            body
            == json.dumps({"type": "payment.failed", "data": {"id": f"pay_{name}", "amount": 999}}, indent=1).encode()
        )
        assert of == f"msg_{name}"


def test_without_visual_or_editor_it_says_so_and_sends_nothing(tmp_path: Path, receiver: ServerProcess) -> None:
    done = replay_edit(tmp_path, receiver, env={})
    assert done.returncode == 2
    assert done.stderr == "Error: --edit needs an editor: set $VISUAL or $EDITOR (e.g. export EDITOR=nano).\n"
    assert (editor_log(tmp_path), replays(tmp_path)) == ([], [])


def test_an_editor_that_exits_with_an_error_aborts_before_anything_is_sent(
    tmp_path: Path, receiver: ServerProcess
) -> None:
    done = replay_edit(tmp_path, receiver, "--amount", "999", "--fail-on", "pay_b")
    assert done.returncode == 2
    assert done.stderr == "Error: The editor exited with status 3 while editing msg_b: nothing was sent.\n"
    assert [entry["event"] for entry in editor_log(tmp_path)] == ["pay_a", "pay_b"]
    assert replays(tmp_path) == []  # msg_a was edited, but every body is edited before any is sent


def test_a_saved_body_that_is_not_json_is_named_and_not_sent(tmp_path: Path, receiver: ServerProcess) -> None:
    done = replay_edit(tmp_path, receiver, "--amount", "7", "--break", "pay_b")
    assert done.returncode == 2
    assert done.stderr == (
        "Error: The body saved for msg_b is not JSON (Expecting property name enclosed in double quotes "
        "at line 1, column 37): it was not sent.\n"
    )
    sent = replays(tmp_path)
    assert [(of, json.loads(body)["data"]) for _, of, body in sent] == [("msg_a", {"id": "pay_a", "amount": 7})]


def test_a_missing_editor_program_is_one_line(tmp_path: Path, receiver: ServerProcess) -> None:
    done = replay_edit(tmp_path, receiver, env={"EDITOR": "no-such-editor-montra --wait"})
    assert done.returncode == 2
    assert done.stderr == (
        "Error: Cannot run the editor 'no-such-editor-montra --wait' (No such file or directory): "
        "set $VISUAL or $EDITOR to an editor on PATH. Nothing was sent.\n"
    )
    assert replays(tmp_path) == []


def test_an_editor_that_removes_the_file_sends_nothing_for_that_event(tmp_path: Path, receiver: ServerProcess) -> None:
    done = replay_edit(tmp_path, receiver, "--amount", "5", "--remove", "pay_a")
    assert done.returncode == 2
    assert done.stderr == "Error: The editor removed the file of msg_a, so nothing was saved: it was not sent.\n"
    assert [(of, json.loads(body)["data"]) for _, of, body in replays(tmp_path)] == [
        ("msg_b", {"id": "pay_b", "amount": 5})
    ]
