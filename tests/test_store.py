"""The SQLite store on its own: schema, durability pragmas, seq, derived status, group commit, indexes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support.db import query

from receiver.errors import ConfigurationError, StoreUnavailable
from receiver.stores.protocol import EventFilter, Incoming
from receiver.stores.sqlite.schema import SCHEMA_VERSION
from receiver.stores.sqlite.store import SQLiteStore

T = TypeVar("T")


def incoming(
    event_id: str, *, type: str = "customer.created", handlers: Sequence[str] = (), at: float | None = None
) -> Incoming:
    body = b'{"type": "%s", "id": "%s"}' % (type.encode(), event_id.encode())
    return Incoming(
        id=event_id,
        type=type,
        occurred_at="2026-11-25T17:00:00Z",
        received_at=time.time() if at is None else at,
        headers={"Webhook-Id": event_id, "Authorization": "Bearer x"},
        body=body,
        handlers=handlers,
    )


def run(db: Path, work: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    """Open a store on `db`, run `work` on one event loop, close the store."""

    async def main() -> T:
        store = SQLiteStore(db)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


def test_schema_version_and_durability_pragmas(db: Path) -> None:
    async def pragmas(store: SQLiteStore) -> tuple[Any, ...]:
        writer = store._writer
        return tuple(
            writer.execute(f"PRAGMA {name}").fetchone()[0] for name in ("user_version", "journal_mode", "synchronous")
        )

    assert run(db, pragmas) == (SCHEMA_VERSION, "wal", 2)  # synchronous=2 is FULL
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert {name for (name,) in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")} >= {
        "events",
        "handler_runs",
        "rejections",
    }


def test_a_newer_schema_is_refused(db: Path) -> None:
    run(db, lambda store: asyncio.sleep(0))
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigurationError, match="newer than this montra-webhooks"):
        SQLiteStore(db)


def test_ingest_stores_exact_bytes_and_redacted_lower_cased_headers(db: Path) -> None:
    event = incoming("msg_1")
    result = run(db, lambda store: store.ingest(event))
    assert (result.status, result.seq) == ("stored", 1)
    stored = run(db, lambda store: store.get_event("msg_1"))
    assert stored is not None
    assert (stored.id, stored.type, stored.body, stored.status) == (
        "msg_1",
        "customer.created",
        event.body,
        "unhandled",
    )
    assert stored.headers == {"webhook-id": "msg_1", "authorization": "[redacted]"}
    assert run(db, lambda store: store.ingest(event)).status == "duplicate"


def test_seq_is_never_reused_after_prune(db: Path) -> None:
    async def work(store: SQLiteStore) -> list[int | None]:
        seqs = [(await store.ingest(incoming(f"msg_{n}"))).seq for n in range(3)]
        assert await store.prune(before=time.time() + 60) == {"events": 3, "handler_runs": 0, "rejections": 0}
        assert await store.seq_bounds() == (4, 3)  # empty, and the next seq is past the pruned ones
        seqs.append((await store.ingest(incoming("msg_after"))).seq)
        return seqs

    assert run(db, work) == [1, 2, 3, 4]
    assert query(db, "SELECT seq, id FROM events") == [(4, "msg_after")]


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ((), "unhandled"),
        (("pending",), "pending"),
        (("running",), "pending"),
        (("succeeded",), "handled"),
        (("succeeded", "succeeded"), "handled"),
        (("succeeded", "pending"), "pending"),
        (("succeeded", "running"), "pending"),
        (("failed", "pending"), "failed"),
        (("failed", "succeeded"), "failed"),
        (("dead", "failed"), "dead"),
        (("dead", "succeeded"), "dead"),
        (("dead", "failed", "running", "succeeded"), "dead"),
        (("running", "failed"), "failed"),
    ],
)
def test_event_status_derived_from_runs(db: Path, runs: tuple[str, ...], expected: str) -> None:
    handlers = [f"h{n}" for n in range(len(runs))]
    run(db, lambda store: store.ingest(incoming("msg_1", handlers=handlers)))
    initial = query(db, "SELECT status FROM events")
    assert initial == [("pending" if runs else "unhandled",)]
    # A user's own UPDATE (or `retry`) keeps the status true too: it is derived inside the database.
    with sqlite3.connect(db) as conn:
        for handler, status in zip(handlers, runs, strict=True):
            conn.execute("UPDATE handler_runs SET status = ? WHERE handler = ?", (status, handler))
    conn.close()
    assert query(db, "SELECT status FROM events") == [(expected,)]
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM handler_runs")
    conn.close()
    assert query(db, "SELECT status FROM events") == [("unhandled",)]


def test_status_follows_claim_and_finish(db: Path) -> None:
    async def work(store: SQLiteStore) -> list[str]:
        seen = []

        async def status() -> str:
            event = await store.get_event("msg_1")
            assert event is not None
            return event.status

        await store.ingest(incoming("msg_1", handlers=["a", "b"]))
        seen.append(await status())
        now = time.time()
        claimed = await store.claim(owner="w1", handlers=["a", "b"], now=now, lease=30, limit=10)
        assert sorted(r.handler for r in claimed) == ["a", "b"]
        assert await store.finish(
            owner="w1",
            event_id="msg_1",
            handler="a",
            status="succeeded",
            error=None,
            next_attempt_at=None,
            finished_at=now,
            duration_ms=1.0,
        )
        seen.append(await status())
        assert await store.finish(
            owner="w1",
            event_id="msg_1",
            handler="b",
            status="dead",
            error="boom",
            next_attempt_at=None,
            finished_at=now,
            duration_ms=1.0,
        )
        seen.append(await status())
        assert await store.requeue(status=["dead"]) == 1
        seen.append(await status())
        return seen

    assert run(db, work) == ["pending", "pending", "dead", "pending"]


def test_group_commit_many_writes_few_commits(db: Path) -> None:
    statements: list[str] = []

    async def work(store: SQLiteStore) -> list[str]:
        store._writer.set_trace_callback(statements.append)
        results = await asyncio.gather(*(store.ingest(incoming(f"msg_{n}")) for n in range(200)))
        return [r.status for r in results]

    assert run(db, work) == ["stored"] * 200
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert 1 <= len(commits) < 200
    assert query(db, "SELECT count(*), count(DISTINCT seq) FROM events") == [(200, 200)]


def test_one_id_twice_in_one_batch_is_stored_once(db: Path) -> None:
    statements: list[str] = []

    async def work(store: SQLiteStore) -> list[str]:
        store._writer.set_trace_callback(statements.append)
        results = await asyncio.gather(store.ingest(incoming("msg_1")), store.ingest(incoming("msg_1")))
        return [r.status for r in results]

    assert run(db, work) == ["stored", "duplicate"]
    assert [s for s in statements if s.strip().upper() == "COMMIT"] == ["COMMIT"]  # one batch, one commit
    assert query(db, "SELECT id FROM events") == [("msg_1",)]


def test_a_failed_batch_fails_every_caller_and_stores_none(db: Path) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async def work(store: SQLiteStore) -> list[BaseException | Any]:
        # One bad operation in the batch rolls back the good ones around it.
        return await asyncio.gather(
            store.ingest(incoming("msg_1")),
            store._commits.run(broken),
            store.ingest(incoming("msg_2")),
            return_exceptions=True,
        )

    results = run(db, work)
    assert [type(r) for r in results] == [StoreUnavailable] * 3
    assert query(db, "SELECT count(*) FROM events") == [(0,)]
    # The writer goes on: the next batch commits.
    assert run(db, lambda store: store.ingest(incoming("msg_1"))).status == "stored"


def test_a_store_that_cannot_write_answers_store_unavailable(db: Path) -> None:
    async def work(store: SQLiteStore) -> tuple[list[Any], bool, bool, str]:
        store._writer.execute("PRAGMA query_only = ON")
        failed = await asyncio.gather(*(store.ingest(incoming(f"msg_{n}")) for n in range(5)), return_exceptions=True)
        writable_while_down = await store.check_writable()
        store._writer.execute("PRAGMA query_only = OFF")
        return failed, writable_while_down, await store.check_writable(), (await store.ingest(incoming("msg_0"))).status

    failed, down, up, status = run(db, work)
    assert [type(r) for r in failed] == [StoreUnavailable] * 5
    assert (down, up, status) == (False, True, "stored")
    assert query(db, "SELECT id FROM events") == [("msg_0",)]


def test_rejections_are_written_without_waiting(db: Path) -> None:
    async def work(store: SQLiteStore) -> None:
        store.reject(reason="invalid_signature", remote="127.0.0.1", headers={"Cookie": "c", "X-A": "b"}, body=b"x")

    run(db, work)  # close() commits what is queued
    assert query(db, "SELECT reason, remote, headers, body FROM rejections") == [
        ("invalid_signature", "127.0.0.1", '{"cookie": "[redacted]", "x-a": "b"}', b"x")
    ]


@pytest.mark.parametrize(
    ("table", "columns"),
    [
        ("events", ["type", "seq"]),
        ("events", ["status", "seq"]),
        ("events", ["received_at"]),
        ("events", ["id"]),
        ("handler_runs", ["status", "next_attempt_at"]),
    ],
)
def test_indexes_for_the_listing_filters(db: Path, table: str, columns: list[str]) -> None:
    run(db, lambda store: asyncio.sleep(0))
    indexes = [name for _, name, *_ in query(db, f"PRAGMA index_list({table})")]
    assert columns in [[c for _, _, c in query(db, f"PRAGMA index_info({name})")] for name in indexes]


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("type = 'a.b'", "events_type"),
        ("status = 'dead'", "events_status"),
        ("received_at >= '2026'", "events_received_at"),
    ],
)
def test_listing_filters_use_their_index(db: Path, where: str, index: str) -> None:
    run(db, lambda store: asyncio.sleep(0))
    plan = " ".join(row[-1] for row in query(db, f"EXPLAIN QUERY PLAN SELECT seq FROM events WHERE {where}"))
    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan


def test_listing_filters(db: Path) -> None:
    now = time.time()

    async def work(store: SQLiteStore) -> dict[str, list[str]]:
        await store.ingest(incoming("old", type="customer.created", at=now - 7200))
        await store.ingest(incoming("sub1", type="subscription.upgraded", handlers=["h"]))
        await store.ingest(incoming("sub2", type="subscription.scheduled_change.created"))
        await store.ingest(incoming("pay", type="payment_succeeded"))  # `_` must not act as a LIKE wildcard

        async def ids(**kwargs: Any) -> list[str]:
            return [e.id for e in await store.list_events(EventFilter(**kwargs))]

        since = datetime.fromtimestamp(now - 60, UTC)
        return {
            "prefix": await ids(types=["subscription.*"]),
            "exact": await ids(types=["subscription.upgraded"]),
            "all": await ids(types=["*"], newest_first=True, limit=2),
            "status": await ids(status=["pending"]),
            "since": await ids(since=since),
            "underscore": await ids(types=["payment.succeeded", "payment.*"]),
        }

    assert run(db, work) == {
        "prefix": ["sub1", "sub2"],
        "exact": ["sub1"],
        "all": ["pay", "sub2"],
        "status": ["sub1"],
        "since": ["sub1", "sub2", "pay"],
        "underscore": [],
    }


@pytest.mark.parametrize("t", [0.0, 1.5, 1795631216.503667, 1795631216.9999996, 1795631216.0000004, 1_000_000_000.25])
def test_iso_matches_datetime_formatting(t: float) -> None:
    from datetime import UTC, datetime

    from receiver.stores.protocol import iso

    assert iso(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_write_lock_held_elsewhere_is_waited_for_off_the_event_loop(db: Path) -> None:
    """Another process (a second worker, `montra-hooks retry`) holding the write lock: the loop keeps serving."""

    async def work(store: SQLiteStore) -> list[str]:
        # The writer's BEGIN runs on the loop: SQLite's busy handler would put the whole loop to sleep.
        assert store._writer.execute("PRAGMA busy_timeout").fetchone() == (0,)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        order: list[str] = []

        async def ingest() -> None:
            result = await store.ingest(incoming("msg_locked"))
            order.append(f"ingest {result.status}")

        task = asyncio.create_task(ingest())
        await asyncio.sleep(0.2)  # the loop runs this coroutine while the ingest waits for the lock
        order.append("lock released")
        other.execute("COMMIT")
        other.close()
        await task
        return order

    assert run(db, work) == ["lock released", "ingest stored"]
    assert query(db, "SELECT id FROM events") == [("msg_locked",)]
