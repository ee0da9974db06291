"""Nothing a handler or a file mishap does takes a real `montra-hooks serve` down or loses an acknowledged event.

A handler's `sys.exit`, `KeyboardInterrupt` or other BaseException fails its try and the receiver goes on;
one that kills its process (`os._exit`) uses a try each time, so a supervisor restarting the receiver sees
at most `max_attempts` deaths before the run is `dead`. A database file deleted or replaced while serving
makes ingest and `/healthz` answer 503 rather than acknowledge events into a file nobody will read again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from support.db import query
from support.dispatch import SECRET, envelope, read_log, runs, settled
from support.server import ServerProcess
from support.signing import signed_post
from support.wait import wait_until

from receiver import Event, Hooks, NoRetry, create_app

Serve = Callable[..., ServerProcess]

CRASHING_APP = Path(__file__).resolve().parent / "support" / "apps" / "crashing.py"


@pytest.fixture
def crashing(tmp_path: Path) -> Path:
    """Copy the crashing handlers into tmp_path; return the JSON-lines log they write."""
    shutil.copy(CRASHING_APP, tmp_path / "crashing.py")
    return tmp_path / "runs.jsonl"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def send(server: ServerProcess, client: httpx.Client, msg_id: str, event_type: str, **data: Any) -> httpx.Response:
    return signed_post(server.url + "/webhooks", envelope(event_type, **data), SECRET, msg_id, client=client)


def supervise(server: ServerProcess, done: Callable[[], bool], *, most: int) -> list[int]:
    """Restart `server` whenever it exits, as a supervisor would, until `done()`; return the exit codes seen.

    Fails once it has died more than `most` times (a crash loop) or after 60 s.
    """
    exits: list[int] = []
    deadline = time.monotonic() + 60
    while not done():
        assert server.proc is not None
        code = server.proc.poll()
        if code is not None:
            exits.append(code)
            assert len(exits) <= most, f"the receiver died {len(exits)} times:\n{server.output()}"
            with contextlib.suppress(RuntimeError):  # it may die again before it answers /healthz: seen next turn
                server.start()
        assert time.monotonic() < deadline, f"timed out; exits so far {exits}:\n{server.output()}"
        time.sleep(0.02)
    return exits


def tries(log: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    found: dict[tuple[str, str], list[int]] = {}
    for line in log:
        if line["phase"] == "start":
            found.setdefault((line["event"], line["handler"]), []).append(line["attempt"])
    return found


# The last line of the traceback each misbehaviour leaves in `last_error`.
LAST_LINES = {
    "sys.exit": "SystemExit: 3",
    "KeyboardInterrupt": "KeyboardInterrupt",
    "BaseException": "crashing.Unusual: {handler} raised a BaseException on try 2",
    "CancelledError": "asyncio.exceptions.CancelledError: {handler} cancelled itself on try 2",
}


def test_sys_exit_keyboard_interrupt_and_base_exceptions_fail_the_try_and_the_receiver_goes_on(
    serve: Serve, tmp_path: Path, crashing: Path, http: httpx.Client
) -> None:
    server = serve("--app", "crashing:hooks", "--db", "events.db", "--secret", SECRET, "--max-attempts", "2",
                   "--backoff", "0.02")  # fmt: skip
    sent = {}
    for how in LAST_LINES:
        for kind in ("async", "sync"):
            msg_id = f"msg_{kind}_{how.replace('.', '_')}"
            response = send(server, http, msg_id, f"crash.{kind}", how=how)
            assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})
            sent[msg_id] = (f"{kind}_handler", how)
    rows = settled(tmp_path / "events.db", len(sent))
    wait_until(lambda: len([line for line in read_log(crashing) if line["phase"] == "dead"]) == len(sent))

    assert server.running and server.starts == 1, server.output()
    assert tries(read_log(crashing)) == {(msg_id, handler): [1, 2] for msg_id, (handler, _) in sent.items()}
    for msg_id, (handler, how) in sent.items():
        row = rows[msg_id, handler]
        assert (row["status"], row["attempts"], row["lease_owner"]) == ("dead", 2, None)
        assert row["last_error"].startswith("Traceback (most recent call last):\n")
        assert row["last_error"].rstrip("\n").splitlines()[-1] == LAST_LINES[how].format(handler=handler)
    dead = {(line["event"], line["handler"], line["attempt"]) for line in read_log(crashing) if line["phase"] == "dead"}
    assert dead == {(msg_id, handler, 2) for msg_id, (handler, _) in sent.items()}

    # Still serving, and still dispatching: the next event's handler runs and succeeds.
    assert http.get(server.url + "/healthz").json() == {"status": "ok"}
    assert send(server, http, "msg_fine", "crash.sync", how="nothing").json() == {"id": "msg_fine", "status": "stored"}
    row = settled(tmp_path / "events.db", len(sent) + 1)["msg_fine", "sync_handler"]
    assert (row["status"], row["attempts"], row["last_error"]) == ("succeeded", 1, None)
    assert server.running and server.starts == 1


@pytest.mark.parametrize(("kind", "backend"), [("async", "sqlite"), ("sync", "sqlite"), ("async", "postgres")])
def test_a_handler_that_kills_its_process_is_dead_after_max_attempts_deaths(
    serve: Serve, tmp_path: Path, crashing: Path, http: httpx.Client, request: pytest.FixtureRequest, kind: str,
    backend: str,
) -> None:  # fmt: skip
    handler = f"{kind}_handler"
    db: Path | str = tmp_path / "events.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    server = serve("--app", "crashing:hooks", "--db", str(db), "--secret", SECRET, "--max-attempts", "3",
                   "--backoff", "0.02", "--lease", "0.5")  # fmt: skip
    response = send(server, http, "msg_poison", f"crash.{kind}", how="os._exit")
    assert (response.status_code, response.json()) == (200, {"id": "msg_poison", "status": "stored"})
    first = server.proc.pid  # type: ignore[union-attr]

    def dead() -> bool:
        return runs(db).get(("msg_poison", handler), {}).get("status") == "dead"

    exits = supervise(server, dead, most=3)
    assert exits == [1, 1, 1]  # each of the three tries ended its process; a fourth start gave up without a try
    log = read_log(crashing)
    assert tries(log) == {("msg_poison", handler): [1, 2, 3]}
    assert log[0]["pid"] == first
    row = runs(db)["msg_poison", handler]
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("dead", 3, None)
    # The process named is the one that ran try 3: host:pid:token.
    third = [line["pid"] for line in log if line["phase"] == "start"][2]
    owner = re.escape(f"{socket.gethostname()}:{third}:") + "[0-9a-f]{8}"
    assert re.fullmatch(
        re.escape("The receiver's process died while this handler ran (try 3 of 3, process ")
        + owner
        + re.escape(
            "): it ended without an outcome (os._exit, a signal, a segfault or the out-of-memory killer) and its "
            "lease expired. No try is left: fix the handler, then re-queue the run with `montra-hooks retry`."
        ),
        row["last_error"],
    ), row["last_error"]
    wait_until(lambda: [line for line in read_log(crashing) if line["phase"] == "dead"], what="on_dead")
    assert [(line["phase"], line["attempt"]) for line in read_log(crashing)] == [
        ("start", 1),
        ("start", 2),
        ("start", 3),
        ("dead", 3),
    ]
    # The receiver that gave up is up and serving.
    assert server.running and server.starts == 4
    assert http.get(server.url + "/healthz").json() == {"status": "ok"}
    assert send(server, http, "msg_after", "crash.sync").json() == {"id": "msg_after", "status": "stored"}


@pytest.mark.parametrize("mishap", ["deleted", "replaced"])
def test_a_database_deleted_or_replaced_while_serving_acknowledges_nothing(
    serve: Serve, tmp_path: Path, http: httpx.Client, mishap: str
) -> None:
    db = tmp_path / "events.db"
    server = serve("--db", str(db), "--secret", SECRET)
    assert send(server, http, "msg_before", "customer.created").json() == {"id": "msg_before", "status": "stored"}
    assert http.get(server.url + "/healthz").status_code == 200
    if mishap == "deleted":
        db.unlink()
    else:
        copy = tmp_path / "copy.db"
        with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target)
        os.replace(copy, db)

    for n in range(5):
        response = send(server, http, f"msg_lost_{n}", "customer.created")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "store_unavailable"
        what = "deleted or moved" if mishap == "deleted" else "replaced by another file"
        assert body["message"] == (
            f"The event store could not write: the database file {db} was {what} while the receiver ran, so nothing "
            "more is written to the old one; restart the receiver to open the file now at that path. Nothing was "
            "stored: send it again later."
        )
    health = http.get(server.url + "/healthz")
    assert (health.status_code, health.json()["error"]) == (503, "store_unavailable")
    assert server.running

    # After a deletion the old WAL is left beside the path by a crash (SIGKILL): the new database ignores it.
    if mishap == "deleted":
        server.kill()
        assert (tmp_path / "events.db-wal").exists() and not db.exists()
    server.restart()
    stored = [event_id for (event_id,) in query(db, "SELECT id FROM events ORDER BY seq")]
    assert stored == ([] if mishap == "deleted" else ["msg_before"])  # no phantom of the five 503s
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert send(server, http, "msg_lost_0", "customer.created").json() == {"id": "msg_lost_0", "status": "stored"}
    assert http.get(server.url + "/healthz").json() == {"status": "ok"}


def test_the_served_database_and_its_wal_are_private(serve: Serve, tmp_path: Path, http: httpx.Client) -> None:
    previous = os.umask(0o022)
    try:
        server = serve("--db", "events.db", "--secret", SECRET)
    finally:
        os.umask(previous)
    assert send(server, http, "msg_0", "customer.created").json() == {"id": "msg_0", "status": "stored"}
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.glob("events.db*")}
    assert modes == {"events.db": "0o600", "events.db-wal": "0o600", "events.db-shm": "0o600"}


def test_on_dead_callbacks_that_exit_or_interrupt_do_not_stop_the_others_or_the_receiver(tmp_path: Path) -> None:
    hooks = Hooks()
    told: list[str] = []

    @hooks.on("*", name="refuses")
    async def refuses(event: Event) -> None:
        raise NoRetry("no")

    @hooks.on_dead
    def exits(event: Event, handler: str, error: str) -> None:  # sync: it runs in the dispatcher's threads
        sys.exit(4)

    @hooks.on_dead
    async def interrupts(event: Event, handler: str, error: str) -> None:
        raise KeyboardInterrupt

    @hooks.on_dead
    async def alert(event: Event, handler: str, error: str) -> None:
        told.append(f"{handler} on {event.id}")

    app = create_app(hooks, db=str(tmp_path / "events.db"), secrets=[SECRET])
    with TestClient(app) as client:
        for n in range(2):
            posted = signed_post("/webhooks", envelope("customer.created"), SECRET, f"msg_{n}", client=client)
            assert posted.json() == {"id": f"msg_{n}", "status": "stored"}
            wait_until(lambda n=n: len(told) == n + 1, what="the alert")  # type: ignore[misc]
        assert client.get("/healthz").json() == {"status": "ok"}
    assert told == ["refuses on msg_0", "refuses on msg_1"]
