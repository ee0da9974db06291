"""`montra-hooks watch`: real file saves, a real watch process, a real receiver or handlers in-process."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.db import query
from support.server import ServerProcess
from support.wait import wait_until
from support.watch import WAIT, WatchProcess

from replay.cli import cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., WatchProcess]]:
    started: list[WatchProcess] = []

    def start(*args: str) -> WatchProcess:
        process = WatchProcess(list(args), tmp_path)
        started.append(process)
        process.expect(r"^Watching .* for fixture saves")
        return process

    yield start
    for process in started:
        process.stop()


def save(path: Path, document: Any) -> None:
    """Save as editors do: a new file written next to it, then renamed over it."""
    temporary = path.with_name(path.name + ".tmp~")
    temporary.write_text(json.dumps(document, indent=2))
    temporary.replace(path)


def wait_for_rows(db: Path, count: int) -> list[tuple[Any, ...]]:
    """The stored events once there are `count` or more (the test then asserts exactly which)."""
    return wait_until(
        lambda: query(db, "SELECT id, type, body FROM events ORDER BY seq"),
        until=lambda rows: len(rows) >= count,
        timeout=WAIT,
        what=f"{count} stored events",
    )


def test_watch_sends_a_fixture_to_a_receiver_each_time_it_is_saved(
    serve: Callable[..., ServerProcess], watch: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    server = serve("--secret", SECRET, "--db", "events.db")
    folder = tmp_path / "fixtures"
    folder.mkdir()
    process = watch("--fixtures", str(folder), "--to", f"{server.url}/webhooks", "--secret", SECRET)

    save(folder / "refund.created.json", {"type": "refund.created", "data": {"id": "re_1", "amount": 4242}})
    first = process.expect(r"^--> refund\.created \[(evt_\w+)\]$")[1]
    process.expect(r"^<-- \[200\] stored \(\d+ ms\)$")
    save(folder / "refund.created.json", {"type": "refund.created", "data": {"id": "re_1", "amount": 4343}})
    second = process.expect(r"^--> refund\.created \[(evt_\w+)\]$")[1]
    process.expect(r"^<-- \[200\] stored \(\d+ ms\)$")

    rows = wait_for_rows(server.cwd / "events.db", 2)
    assert [(event_id, event_type) for event_id, event_type, _ in rows] == [
        (first, "refund.created"),
        (second, "refund.created"),
    ]
    assert [json.loads(body)["data"]["amount"] for *_, body in rows] == [4242, 4343]
    # A file that is not a fixture (an editor's backup, another extension) sends nothing.
    (folder / "notes.txt").write_text("not a fixture")
    save(folder / "scenarios.json.bak", {})
    save(folder / "customer.created.json", {"type": "customer.created", "data": {"id": "cus_1"}})
    process.expect(r"^--> customer\.created ")
    assert [line for line in process.seen if line.startswith("-->")][-1].startswith("--> customer.created")
    assert len(wait_for_rows(server.cwd / "events.db", 3)) == 3


HANDLERS_V1 = """
from pathlib import Path

from receiver import Event, Hooks

hooks = Hooks()


@hooks.on("refund.created")
def record(event: Event) -> None:
    with Path("handled.txt").open("a") as out:
        out.write(f"v1 {event.type} {event.data['amount']}\\n")
"""


def test_watch_with_app_runs_handlers_reloads_their_code_and_reruns_the_last_event(
    watch: Callable[..., WatchProcess], tmp_path: Path
) -> None:
    folder = tmp_path / "fixtures"
    folder.mkdir()
    module = tmp_path / "watched_handlers.py"
    module.write_text(textwrap.dedent(HANDLERS_V1))
    handled = tmp_path / "handled.txt"
    process = watch("--fixtures", str(folder), "--app", "watched_handlers:hooks")

    save(folder / "refund.created.json", {"type": "refund.created", "data": {"id": "re_1", "amount": 7}})
    process.expect(r"^--> refund\.created \[evt_\w+\]$")
    process.expect(r"^<-- \[handled\] by watched_handlers\.record \(\d+ ms\)$")
    assert handled.read_text() == "v1 refund.created 7\n"

    module.write_text(HANDLERS_V1.replace("v1 {event.type}", "v2 (reloaded) {event.type}"))
    process.expect(r"^Reloaded watched_handlers:hooks: watched_handlers\.record$")
    process.expect(r"^Running the last event again on the new code:$")
    process.expect(r"^<-- \[handled\] by watched_handlers\.record")
    assert handled.read_text() == "v1 refund.created 7\nv2 (reloaded) refund.created 7\n"

    # Code that does not import is shown; the previous code keeps running until the next save.
    module.write_text(HANDLERS_V1 + "\ndef broken(:\n")
    process.expect(r"^Could not reload watched_handlers:hooks; the previous code still runs:$")
    process.expect(r"SyntaxError")
    save(folder / "refund.created.json", {"type": "refund.created", "data": {"id": "re_1", "amount": 8}})
    process.expect(r"^<-- \[handled\] by watched_handlers\.record")
    assert handled.read_text().splitlines()[-1] == "v2 (reloaded) refund.created 8"

    # A handler that raises is reported with its traceback, and watching goes on.
    module.write_text(HANDLERS_V1.replace("    with Path", "    raise RuntimeError('no refunds today')\n    with Path"))
    process.expect(r"^Reloaded watched_handlers:hooks")
    process.expect(
        r"^<-- \[failed\] 1 handler\(s\) failed on refund\.created \[evt_\w+\]: watched_handlers\.record "
        r"\(RuntimeError: no refunds today\) \(\d+ ms\)$"
    )
    process.expect(r"^RuntimeError: no refunds today$")
    assert process.proc.poll() is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "http://127.0.0.1:9/webhooks"], "Error: Nothing to watch: pass --fixtures DIR"),
        (["--fixtures", "."], "Error: Pass one target: --to URL"),
        (["--fixtures", ".", "--to", "http://198.51.100.1/x", "--secret", SECRET], "is not on loopback"),
        (["--fixtures", ".", "--app", "no_such_module_here:hooks"], "Invalid value for --app: cannot import"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["watch", *args], env={"MONTRA_HOOKS_FIXTURES": None})
    assert result.exit_code == 2, result.output
    assert message in result.output
