"""Debugging a delivery from the terminal, on every backend: attempt history, resources, rejections, tail.

`events list --ref/--handler/--until` and its footer, `events show`'s timeline, `rejections list/show`
(refusals recorded by a real receiver app), `events tail` as a real process stopped with Ctrl-C, and a
selection that matches nothing (exit 1, naming the filter).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result
from starlette.testclient import TestClient
from support.db import query
from support.signing import signed_post

from receiver import create_app, sign
from receiver.event import resource_refs
from receiver.rejections import explain
from receiver.stores.open import open_store
from receiver.stores.protocol import Incoming, Rejection, Store
from receiver.stores.sqlite import schema as sqlite_schema
from receiver.verify import generate_secret
from replay.cli import cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = generate_secret()
T0 = float(int(time.time()) - 3600)  # whole seconds, an hour ago: --until 30m falls after every event


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def envelope(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "data": data}).encode()


def stored(event_id: str, event_type: str, data: dict[str, Any], *, at: float, handlers: tuple[str, ...]) -> Incoming:
    return Incoming(
        id=event_id,
        type=event_type,
        occurred_at=None,
        received_at=at,
        headers={"webhook-id": event_id},
        body=envelope(event_type, data),
        handlers=handlers,
        refs=resource_refs(event_type, data),
    )


async def fill(store: Store) -> None:
    """Three events about cus_1 / sub_1 / cus_2; billing.grant fails twice (once timed out) then succeeds."""
    await store.ingest(stored("evt_c", "customer.created", {"id": "cus_1"}, at=T0, handlers=("crm.sync",)))
    await store.ingest(
        stored(
            "evt_s",
            "subscription.upgraded",
            {"id": "sub_1", "customer_id": "cus_1"},
            at=T0 + 1,
            handlers=("billing.grant", "crm.sync"),
        )
    )
    await store.ingest(stored("evt_o", "customer.created", {"id": "cus_2"}, at=T0 + 2, handlers=()))
    await store.claim(owner="w1", handlers=["billing.grant", "crm.sync"], now=T0 + 3, lease=30, limit=10)
    for event_id in ("evt_c", "evt_s"):
        assert await store.finish(
            owner="w1",
            event_id=event_id,
            handler="crm.sync",
            status="succeeded",
            error=None,
            next_attempt_at=None,
            finished_at=T0 + 3.5,
            duration_ms=500.0,
        )
    tries = [
        ("failed", "Traceback...\nRuntimeError: billing down", None),
        ("failed", "HandlerTimeout: 30 s", "timeout"),
    ]
    for n, (status, error, outcome) in enumerate(tries):
        if n:
            await store.claim(owner="w1", handlers=["billing.grant"], now=T0 + 10 * n + 3, lease=30, limit=10)
        assert await store.finish(
            owner="w1",
            event_id="evt_s",
            handler="billing.grant",
            status=status,  # type: ignore[arg-type]
            error=error,
            next_attempt_at=T0 + 10 * n + 13,
            finished_at=T0 + 10 * n + 4,
            duration_ms=1000.0,
            outcome=outcome,  # type: ignore[arg-type]
        )
    await store.claim(owner="w2", handlers=["billing.grant"], now=T0 + 23, lease=30, limit=10)
    assert await store.finish(
        owner="w2",
        event_id="evt_s",
        handler="billing.grant",
        status="succeeded",
        error=None,
        next_attempt_at=None,
        finished_at=T0 + 23.25,
        duration_ms=250.0,
    )


@pytest.fixture
def db(store_url: str) -> str:
    async def work() -> None:
        store = open_store(store_url)
        try:
            await fill(store)
        finally:
            await store.close()

    asyncio.run(work())
    return store_url


def ids(output: str) -> list[str]:
    rows = output.split("\n\n")[0].splitlines()[1:]
    return [row.split()[1] for row in rows]


# -- events list ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--ref", "cus_1"], ["evt_s", "evt_c"]),
        (["--ref", "sub_1"], ["evt_s"]),
        (["--handler", "billing.grant"], ["evt_s"]),
        (["--handler", "crm.sync", "--ref", "cus_1", "--type", "customer.*"], ["evt_c"]),
        (["--until", "30m"], ["evt_o", "evt_s", "evt_c"]),
        (["--until", datetime.fromtimestamp(T0 + 1, UTC).isoformat()], ["evt_c"]),
    ],
)
def test_events_list_ref_handler_until(db: str, options: list[str], expected: list[str]) -> None:
    result = invoke("events", "list", "--db", db, *options)
    assert result.exit_code == 0, result.output
    assert ids(result.stdout) == expected
    assert "showing" not in result.stdout  # the whole selection fits the page


def test_events_list_footer_counts_beyond_the_page(db: str) -> None:
    result = invoke("events", "list", "--db", db, "--limit", "2")
    assert result.exit_code == 0, result.output
    assert ids(result.stdout) == ["evt_o", "evt_s"]
    assert result.stdout.splitlines()[-1] == "showing 2 of 3: --limit shows more, --until or --since narrow it"
    as_json = invoke("events", "list", "--db", db, "--limit", "2", "--json")
    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == ["evt_o", "evt_s"]


def test_events_list_footer_stops_counting_at_the_cap(tmp_path: Path) -> None:
    path = str(tmp_path / "many.db")

    async def work() -> None:
        store = open_store(path)
        try:
            await asyncio.gather(*(store.ingest(stored(f"e{n}", "a.b", {}, at=T0, handlers=())) for n in range(1005)))
        finally:
            await store.close()

    asyncio.run(work())
    result = invoke("events", "list", "--db", path)
    assert result.stdout.splitlines()[-1] == "showing 20 of 1,000+: --limit shows more, --until or --since narrow it"


# -- events show ------------------------------------------------------------------------------


def test_events_show_prints_resources_and_every_attempt(db: str) -> None:
    result = invoke("events", "show", "evt_s", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "resources: customer cus_1, subscription sub_1" in lines
    start = lines.index("billing.grant: succeeded, 3 attempt(s)")

    def at(seconds: float) -> str:
        return datetime.fromtimestamp(T0 + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    assert lines[start + 1 : start + 5] == [
        f"  try 1  {at(3)}  failed      1000.0 ms  w1  RuntimeError: billing down",
        f"  try 2  {at(13)}  timeout     1000.0 ms  w1  HandlerTimeout: 30 s",
        f"  try 3  {at(23)}  succeeded    250.0 ms  w2",
        "",
    ]
    crm = lines.index("crm.sync: succeeded, 1 attempt(s)")
    assert lines[crm + 1 :] == [f"  try 1  {at(3)}  succeeded    500.0 ms  w1"]


def test_events_show_puts_the_timeline_below_the_last_error(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")

    async def work() -> None:
        store = open_store(path)
        try:
            await store.ingest(stored("evt_f", "customer.created", {"id": "cus_1"}, at=T0, handlers=("h.sync",)))
            await store.claim(owner="w1", handlers=["h.sync"], now=T0, lease=30, limit=1)
            error = "Traceback (most recent call last):\n  File x\nValueError: bad"
            await store.finish(
                owner="w1",
                event_id="evt_f",
                handler="h.sync",
                status="failed",
                error=error,
                next_attempt_at=T0 + 5,
                finished_at=T0 + 1,
                duration_ms=1000.0,
            )
        finally:
            await store.close()

    asyncio.run(work())
    lines = invoke("events", "show", "evt_f", "--db", path).stdout.splitlines()
    start = lines.index("h.sync: failed, 1 attempt(s)")
    stamp = datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert lines[start + 1 :] == [
        "  Traceback (most recent call last):",
        "    File x",
        "  ValueError: bad",
        f"  next attempt at {datetime.fromtimestamp(T0 + 5, UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}",
        f"  try 1  {stamp}  failed      1000.0 ms  w1  ValueError: bad",
    ]


def test_events_show_json_has_resources_and_attempts(db: str) -> None:
    shown = json.loads(invoke("events", "show", "evt_s", "--db", db, "--json").stdout)
    assert shown["resources"] == {"customer": "cus_1", "subscription": "sub_1"}
    assert [(a["handler"], a["attempt"], a["outcome"], a["owner"], a["duration_ms"]) for a in shown["attempts"]] == [
        ("billing.grant", 1, "failed", "w1", 1000.0),
        ("billing.grant", 2, "timeout", "w1", 1000.0),
        ("billing.grant", 3, "succeeded", "w2", 250.0),
        ("crm.sync", 1, "succeeded", "w1", 500.0),
    ]
    assert shown["attempts"][1]["error"] == "HandlerTimeout: 30 s"


# -- nothing matched --------------------------------------------------------------------------


def test_retry_and_replay_that_match_nothing_exit_1_naming_the_filter(db: str) -> None:
    plain = invoke("retry", "--db", db, "--status", "dead")  # no selection to name: nothing to do is fine
    assert (plain.exit_code, plain.stdout) == (
        0,
        "Re-queued 0 run(s); a running receiver picks them up within a second.\n",
    )
    retried = invoke("retry", "--db", db, "--id", "evt_NOPE")
    assert (retried.exit_code, retried.stdout) == (1, "")
    assert retried.stderr.startswith("No failed or dead runs match --id evt_NOPE in ")
    replayed = invoke(
        "replay", "--db", db, "--id", "msg_NOPE", "--to", "http://127.0.0.1:9/webhooks", "--secret", SECRET
    )
    assert replayed.exit_code == 1, replayed.output
    assert replayed.stderr.startswith("--id msg_NOPE matched no stored event in ")


# -- rejections -------------------------------------------------------------------------------


@pytest.fixture
def refused(store_url: str) -> str:
    """A real receiver app with two secrets refuses three requests: wrong secret, old timestamp, missing header."""
    app = create_app(db=store_url, secrets=[SECRET, OTHER], tolerance=300)
    body = envelope("customer.created", {"id": "cus_1"})
    with TestClient(app) as client:
        assert signed_post("/webhooks", body, generate_secret(), "msg_1", client=client).status_code == 401
        old = {
            "content-type": "application/json",
            **sign(body, secret=SECRET, msg_id="msg_2", timestamp=int(time.time()) - 412),
        }
        assert client.post("/webhooks", content=body, headers=old).status_code == 401
        headers = sign(body, secret=SECRET, msg_id="msg_3")
        del headers["webhook-timestamp"]
        missing = {"content-type": "application/json", "authorization": "Bearer x", **headers}
        assert client.post("/webhooks", content=body, headers=missing).status_code == 400
    return store_url


def test_rejections_list_explains_each_refusal_in_words(refused: str) -> None:
    result = invoke("rejections", "list", "--db", refused)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    old = json.loads(
        invoke("rejections", "list", "--db", refused, "--reason", "timestamp_out_of_tolerance", "--json").stdout
    )
    # 412 s before the request, in whole seconds: the stored time decides whether it was 412.x or 413.x.
    skew = int(datetime.fromisoformat(old["received_at"]).timestamp() - int(old["headers"]["webhook-timestamp"]))
    assert skew in (412, 413)
    assert header.split() == ["ID", "RECEIVED", "REMOTE", "REASON", "WHY"]
    # PostgreSQL records refusals in background tasks: their ids follow the order the writes finished.
    assert sorted((row.split()[3], row.split("  ")[-1].strip()) for row in rows) == [
        ("invalid_signature", "signed with none of the 2 configured secrets (1 signature given)"),
        ("missing_headers", "header webhook-timestamp missing"),
        ("timestamp_out_of_tolerance", f"timestamp {skew} s old, tolerance 300 s"),
    ]
    as_json = [json.loads(line) for line in invoke("rejections", "list", "--db", refused, "--json").stdout.splitlines()]
    assert sorted(r["id"] for r in as_json) == [1, 2, 3]
    assert [r["id"] for r in as_json] == sorted((r["id"] for r in as_json), reverse=True)  # newest first
    by_reason = {r["reason"]: r for r in as_json}
    assert by_reason["missing_headers"]["headers"]["authorization"] == "[redacted]"
    assert by_reason["invalid_signature"]["message"] == "no webhook-signature matches a configured secret"


def test_rejections_list_filters_and_matching_nothing(refused: str) -> None:
    only = invoke("rejections", "list", "--db", refused, "--reason", "invalid_signature", "--since", "1h", "--json")
    assert [json.loads(line)["reason"] for line in only.stdout.splitlines()] == ["invalid_signature"]
    none = invoke("rejections", "list", "--db", refused, "--reason", "bad_timestamp")
    assert (none.exit_code, none.stdout) == (1, "")
    assert none.stderr.startswith("No rejected requests match --reason bad_timestamp in ")


def test_rejections_show_has_why_headers_and_body(refused: str) -> None:
    listed = invoke("rejections", "list", "--db", refused, "--reason", "invalid_signature", "--json")
    number = str(json.loads(listed.stdout)["id"])
    result = invoke("rejections", "show", number, "--db", refused)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"rejection {number}: invalid_signature  from testclient"
    assert lines[2] == "why: signed with none of the 2 configured secrets (1 signature given)"
    assert lines[3] == "answered: no webhook-signature matches a configured secret"
    assert "  webhook-id: msg_1" in lines
    assert lines[-2:] == ["body (53 bytes kept):", '{"type": "customer.created", "data": {"id": "cus_1"}}']
    assert SECRET not in result.stdout and OTHER not in result.stdout
    unknown = invoke("rejections", "show", "99", "--db", refused)
    assert unknown.exit_code == 2
    assert "No rejection 99 in " in unknown.output


@pytest.mark.parametrize(
    ("reason", "headers", "detail", "expected"),
    [
        ("invalid_signature", {"webhook-signature": "v1,a v1,b"}, {"secrets": 1}, "not signed with the one configured"),
        ("invalid_signature", {}, None, "signed with none of the configured secrets (0 signatures given)"),
        ("timestamp_out_of_tolerance", {"webhook-timestamp": "1000"}, None, "timestamp 1000 s in the future"),
        ("missing_headers", {"svix-id": "m", "svix-timestamp": "1"}, None, "header webhook-signature missing"),
        ("bad_timestamp", {"webhook-timestamp": "soon"}, None, "webhook-timestamp 'soon' is not Unix seconds"),
        ("body_too_large", {}, None, "body too large"),
    ],
)
def test_explain_from_a_row_alone(reason: str, headers: dict[str, str], detail: Any, expected: str) -> None:
    """Rows stored before the counts were kept are still explained, with less precision."""
    at = datetime.fromtimestamp(0, UTC)
    assert explain(Rejection(1, at, reason, None, headers, b"", None, detail)).startswith(expected)


# -- events tail ------------------------------------------------------------------------------


def _lines(stream: IO[str], readers: list[threading.Thread]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    readers.append(reader)
    return found


def _next(lines: queue.Queue[str]) -> str:
    try:
        return lines.get(timeout=20)
    except queue.Empty:
        raise AssertionError("events tail printed nothing within 20 s") from None


@pytest.fixture
def tail_process(store_url: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], queue.Queue[str]]]:
    asyncio.run(_empty_store(store_url))
    command = [sys.executable, "-m", "replay", "events", "tail", "--db", store_url, "--json", "--interval", "0.05"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    readers: list[threading.Thread] = []
    assert process.stdout is not None and process.stderr is not None
    try:
        yield process, _lines(process.stdout, readers), _lines(process.stderr, readers)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for reader in readers:  # they end at the pipes' EOF, once the process is gone
            reader.join(timeout=10)
        process.stdout.close()
        process.stderr.close()


async def _empty_store(url: str) -> None:
    store = open_store(url)
    await store.close()


def test_events_tail_follows_new_events_and_their_tries_until_ctrl_c(
    store_url: str, tail_process: tuple[subprocess.Popen[str], queue.Queue[str], queue.Queue[str]]
) -> None:
    process, out, err = tail_process
    assert _next(err).startswith("Watching ")

    async def work() -> None:
        store = open_store(store_url)
        try:
            await fill(store)
        finally:
            await store.close()

    asyncio.run(work())
    records: list[dict[str, Any]] = []
    while len([r for r in records if r["record"] != "status"]) < 8:  # 3 events, 5 tries
        records.append(json.loads(_next(out)))
    events = [(r["id"], r["type"]) for r in records if r["record"] == "event"]
    assert events == [("evt_c", "customer.created"), ("evt_s", "subscription.upgraded"), ("evt_o", "customer.created")]
    tries = [(r["event_id"], r["handler"], r["attempt"], r["outcome"]) for r in records if r["record"] == "attempt"]
    assert sorted(tries) == [
        ("evt_c", "crm.sync", 1, "succeeded"),
        ("evt_s", "billing.grant", 1, "failed"),
        ("evt_s", "billing.grant", 2, "timeout"),
        ("evt_s", "billing.grant", 3, "succeeded"),
        ("evt_s", "crm.sync", 1, "succeeded"),
    ]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 0
    assert _next(err) == "Stopped.\n"


def test_reading_a_store_of_the_first_schema_shows_no_history_and_says_how_to_upgrade(tmp_path: Path) -> None:
    """Reading commands never migrate: an older store still shows its events; what it cannot hold, it says."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(sqlite_schema._MIGRATIONS[0] + "PRAGMA user_version = 1;")
        conn.execute(
            "INSERT INTO events (id, type, received_at, headers, body) VALUES ('evt_1', 'a.b', ?, '{}', x'7b7d')",
            (datetime.fromtimestamp(T0, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),),
        )
    conn.close()
    shown = invoke("events", "show", "evt_1", "--db", str(path), "--json")
    assert shown.exit_code == 0, shown.output
    assert (json.loads(shown.stdout)["attempts"], json.loads(shown.stdout)["resources"]) == ([], {})
    by_ref = invoke("events", "list", "--ref", "cus_1", "--db", str(path))
    assert by_ref.exit_code == 2
    assert f"The event store at {path} was written by an older montra-webhooks (no such table: event_refs)" in (
        by_ref.output.replace("\n", " ")
    )
    assert query(path, "PRAGMA user_version") == [(1,)]  # still as it was
