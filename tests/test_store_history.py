"""Attempt history and resource references, on every backend (`store_url`: [sqlite] and [postgres]).

`handler_attempts` keeps one row per try, written with the run's update; `event_refs` holds the resources
an event is about, written with the event. Both go when `prune` deletes their events.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient
from support.db import query
from support.dispatch import SECRET, envelope, settled
from support.postgres import pg_query
from support.signing import signed_post
from test_store_contract import finish, incoming, moment, now, run, table

from receiver import Event, Hooks, create_app
from receiver.event import resource_refs
from receiver.stores.open import is_postgres_url, open_store
from receiver.stores.postgres import schema as pg_schema
from receiver.stores.protocol import (
    PROCESS_DIED,
    Attempt,
    EventFilter,
    Incoming,
    Store,
    count_events_sql,
    iso,
    select_events_sql,
)
from receiver.stores.sqlite import schema as sqlite_schema


def attempts_of(rows: list[Attempt]) -> list[tuple[Any, ...]]:
    return [
        (a.handler, a.attempt, a.owner, a.started_at, a.finished_at, a.duration_ms, a.outcome, a.error) for a in rows
    ]


def about(event_id: str, *, at: float, type: str, data: dict[str, Any], handlers: tuple[str, ...] = ()) -> Incoming:
    base = incoming(event_id, at=at, type=type, handlers=handlers)
    return Incoming(
        id=base.id,
        type=base.type,
        occurred_at=base.occurred_at,
        received_at=at,
        headers=base.headers,
        body=envelope(type, **data),
        handlers=handlers,
        refs=resource_refs(type, data),
    )


# -- handler_attempts -------------------------------------------------------------------------


def test_every_try_is_kept_with_its_outcome(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond

    async def work(store: Store) -> tuple[list[Attempt], list[Attempt], str]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b"]))
        await store.claim(owner="w1", handlers=["a", "b"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "failed", at=t + 1, next_attempt_at=t + 1)
        assert await finish(store, "evt_1", "b", "succeeded", at=t + 1)
        await store.claim(owner="w1", handlers=["a"], now=t + 2, lease=30, limit=10)
        assert await store.finish(
            owner="w1",
            event_id="evt_1",
            handler="a",
            status="failed",
            error="timed out",
            next_attempt_at=t + 3,
            finished_at=t + 2.5,
            duration_ms=500.0,
            outcome="timeout",
        )
        await store.claim(owner="w2", handlers=["a"], now=t + 4, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "dead", owner="w2", at=t + 5)
        return await store.get_attempts("evt_1"), await store.get_attempts("evt_nope"), store.path

    rows, none, _ = run(store_url, work)
    assert attempts_of(rows) == [
        ("a", 1, "w1", moment(t), moment(t + 1), 1.5, "failed", "a failed"),
        ("a", 2, "w1", moment(t + 2), moment(t + 2.5), 500.0, "timeout", "timed out"),
        ("a", 3, "w2", moment(t + 4), moment(t + 5), 1.5, "dead", "a failed"),
        ("b", 1, "w1", moment(t), moment(t + 1), 1.5, "succeeded", None),
    ]
    assert {a.event_id for a in rows} == {"evt_1"}
    assert none == []


def test_a_try_whose_process_died_is_recorded_crashed_when_taken_over(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond

    async def work(store: Store) -> tuple[bool, list[Attempt]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        assert await store.claim(owner="w2", handlers=["a"], now=t + 29, lease=30, limit=10) == []
        await store.claim(owner="w2", handlers=["a"], now=t + 31, lease=30, limit=10)
        stale = await finish(store, "evt_1", "a", "succeeded", owner="w1", at=t + 32)
        assert await finish(store, "evt_1", "a", "succeeded", owner="w2", at=t + 33)
        return stale, await store.get_attempts("evt_1")

    stale, rows = run(store_url, work)
    assert stale is False  # the fenced owner's outcome is not a try of record
    assert attempts_of(rows) == [
        ("a", 1, "w1", moment(t), None, None, "crashed", f"{PROCESS_DIED} (try 1, process w1)."),
        ("a", 2, "w2", moment(t + 31), moment(t + 33), 1.5, "succeeded", None),
    ]


def test_a_takeover_that_gives_up_records_no_try_of_its_own(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond

    async def work(store: Store) -> list[Attempt]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        await store.claim(owner="w2", handlers=["a"], now=t + 31, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "dead", owner="w2", at=t + 32, attempts=1)
        return await store.get_attempts("evt_1")

    assert [(a.attempt, a.owner, a.outcome) for a in run(store_url, work)] == [(1, "w1", "crashed")]


# -- event_refs -------------------------------------------------------------------------------


def test_resource_refs_follow_the_type_prefix_and_kind_id_fields() -> None:
    data = {"id": "sub_1", "customer_id": "cus_9", "pricing_model_id": "pm_2", "amount_id": 5, "x_id": ""}
    assert resource_refs("subscription.upgraded", data) == [
        ("subscription", "sub_1"),
        ("customer", "cus_9"),
        ("pricing_model", "pm_2"),
    ]
    assert resource_refs("ping", {"id": "p_1", "customer_id": "cus_9"}) == [("customer", "cus_9")]
    assert resource_refs("customer.created", {"id": "cus_1", "customer_id": "cus_2"}) == [("customer", "cus_1")]
    assert resource_refs("customer.created", ["not", "an", "object"]) == []
    assert resource_refs("customer.created", {"id": "x" * 257, "subscription_id": "sub\x00"}) == []
    event = Event(id="msg_1", type="subscription.upgraded", data=data, body=b"{}")
    assert event.refs == {"subscription": "sub_1", "customer": "cus_9", "pricing_model": "pm_2"}


def test_refs_are_stored_with_their_event_and_filter_the_listing(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond

    async def work(store: Store) -> dict[str, Any]:
        await store.ingest(about("evt_1", at=t, type="customer.created", data={"id": "cus_1"}))
        await store.ingest(
            about("evt_2", at=t + 1, type="subscription.created", data={"id": "sub_1", "customer_id": "cus_1"})
        )
        await store.ingest(about("evt_3", at=t + 2, type="customer.created", data={"id": "cus_2"}, handlers=("h",)))
        # A duplicate adds no references.
        await store.ingest(about("evt_3", at=t + 3, type="customer.created", data={"id": "cus_3"}))

        async def ids(selection: EventFilter) -> list[str]:
            return [e.id for e in await store.list_events(selection)]

        return {
            "refs": await store.get_refs("evt_2"),
            "cus_1": await ids(EventFilter(ref="cus_1")),
            "cus_1 newest": await ids(EventFilter(ref="cus_1", newest_first=True, limit=1)),
            "cus_3": await ids(EventFilter(ref="cus_3")),
            "handler h": await ids(EventFilter(handler="h")),
            "handler nope": await ids(EventFilter(handler="nope")),
            "both": await ids(EventFilter(ref="cus_1", types=["customer.*"])),
            "count": await store.count_events(EventFilter(limit=1), cap=100),
            "capped": await store.count_events(EventFilter(), cap=2),
            "count cus_1": await store.count_events(EventFilter(ref="cus_1"), cap=100),
        }

    assert run(store_url, work) == {
        "refs": [("customer", "cus_1"), ("subscription", "sub_1")],
        "cus_1": ["evt_1", "evt_2"],
        "cus_1 newest": ["evt_2"],
        "cus_3": [],
        "handler h": ["evt_3"],
        "handler nope": [],
        "both": ["evt_1"],
        "count": 3,
        "capped": 2,
        "count cus_1": 2,
    }
    assert sorted(table(store_url, "SELECT kind, ref FROM event_refs")) == [
        ("customer", "cus_1"),
        ("customer", "cus_1"),
        ("customer", "cus_2"),
        ("subscription", "sub_1"),
    ]


@pytest.mark.parametrize("count", [1, 16, 17, 400], ids=["one", "one-insert", "past-it", "many"])
def test_an_event_keeps_every_reference_however_many(store_url: str, count: int) -> None:
    t = float(int(now()))
    data = {f"k{n:03d}_id": f"r_{n}" for n in range(count)}

    async def work(store: Store) -> tuple[list[tuple[str, str]], list[str]]:
        await store.ingest(about("evt_many", at=t, type="ping", data=data))
        return await store.get_refs("evt_many"), [e.id for e in await store.list_events(EventFilter(ref="r_0"))]

    assert run(store_url, work) == ([(f"k{n:03d}", f"r_{n}") for n in range(count)], ["evt_many"])


def test_prune_takes_attempts_and_refs_with_their_events(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond

    async def work(store: Store) -> dict[str, int]:
        await store.ingest(
            about("evt_old", at=t - 3600, type="customer.created", data={"id": "cus_1"}, handlers=("a",))
        )
        await store.ingest(about("evt_new", at=t, type="customer.created", data={"id": "cus_2"}, handlers=("a",)))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_old", "a", "succeeded", at=t)
        assert await finish(store, "evt_new", "a", "succeeded", at=t)
        return await store.prune(before=t - 60)

    assert run(store_url, work) == {"events": 1, "handler_runs": 1, "rejections": 0}
    assert table(store_url, "SELECT event_id FROM handler_attempts") == [("evt_new",)]
    assert table(store_url, "SELECT ref FROM event_refs") == [("cus_2",)]


def test_the_migration_keeps_a_first_schema_stores_rows(store_url: str) -> None:
    """A store made by the first schema gains the new tables; its events and runs stay as they were."""
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond
    event = ("evt_1", "customer.created", "2026-01-01T00:00:00.000000Z", '{"webhook-id": "evt_1"}', b"{}")
    if is_postgres_url(store_url):
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(pg_schema._MIGRATIONS[0].replace("BATCH_MARK", str(pg_schema.BATCH_MARK)).encode())
            conn.execute("CREATE TABLE montra_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO montra_schema VALUES (1)")
            conn.execute("INSERT INTO events (id, type, received_at, headers, body) VALUES (%s, %s, %s, %s, %s)", event)
            conn.execute(
                "INSERT INTO handler_runs (event_id, handler, next_attempt_at) "
                "VALUES ('evt_1', 'a', '2026-01-01T00:00:00Z')"
            )
    else:
        with sqlite3.connect(store_url) as conn:
            conn.executescript(sqlite_schema._MIGRATIONS[0] + "PRAGMA user_version = 1;")
            conn.execute("INSERT INTO events (id, type, received_at, headers, body) VALUES (?, ?, ?, ?, ?)", event)
            conn.execute(
                "INSERT INTO handler_runs (event_id, handler, next_attempt_at) "
                "VALUES ('evt_1', 'a', '2026-01-01T00:00:00Z')"
            )
        conn.close()

    async def work(store: Store) -> tuple[list[str], list[tuple[str, str]], list[Attempt]]:
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "succeeded", at=t + 1)
        events = [e.id for e in await store.list_events(EventFilter())]
        return events, await store.get_refs("evt_1"), await store.get_attempts("evt_1")

    events, refs, attempts = run(store_url, work)
    assert (events, refs) == (["evt_1"], [])
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "succeeded")]
    assert table(store_url, "SELECT status FROM events") == [("handled",)]


def test_a_store_migrated_past_the_seq_index_keeps_its_references(tmp_path: Path) -> None:
    """SQLite step 4 drops `event_refs`' seq index: rows written under it are found, listed and pruned by key."""
    db = str(tmp_path / "events.db")
    t = float(int(now()))
    body = envelope("subscription.created", id="sub_1", customer_id="cus_1")
    with sqlite3.connect(db) as conn:
        conn.executescript("".join(sqlite_schema._MIGRATIONS[:3]) + "PRAGMA user_version = 3;")
        conn.execute(
            "INSERT INTO events (id, type, received_at, headers, body) VALUES (?, ?, ?, ?, ?)",
            ("evt_1", "subscription.created", iso(t - 3600), "{}", body),
        )
        conn.executemany(
            "INSERT INTO event_refs (seq, kind, ref) VALUES (1, ?, ?)",
            [("subscription", "sub_1"), ("customer", "cus_1")],
        )
    conn.close()

    async def work(store: Store) -> tuple[list[tuple[str, str]], list[str], dict[str, int]]:
        refs = await store.get_refs("evt_1")
        about = [e.id for e in await store.list_events(EventFilter(ref="cus_1"))]
        return refs, about, await store.prune(before=t)

    refs, about, pruned = run(db, work)
    assert refs == [("customer", "cus_1"), ("subscription", "sub_1")]
    assert about == ["evt_1"]
    assert pruned == {"events": 1, "handler_runs": 0, "rejections": 0}
    assert table(db, "SELECT count(*) FROM event_refs") == [(0,)]
    # The key is the table itself (WITHOUT ROWID): no index is left beside it.
    assert table(db, "SELECT name FROM sqlite_master WHERE tbl_name = 'event_refs' AND type = 'index'") == []


def test_a_readonly_store_reads_history(store_url: str) -> None:
    t = float(int(now()))  # whole seconds: both backends round a fraction alike only to the microsecond
    run(store_url, lambda store: store.ingest(incoming("evt_1", at=t, handlers=["a"])))

    async def read() -> tuple[list[Attempt], int]:
        store = open_store(store_url, readonly=True)
        try:
            return await store.get_attempts("evt_1"), await store.count_events(EventFilter(handler="a"), cap=5)
        finally:
            await store.close()

    assert asyncio.run(read()) == ([], 1)


@pytest.mark.parametrize(
    "selection",
    [
        EventFilter(ref="cus_1", newest_first=True, limit=20),
        EventFilter(handler="billing.on_paid", newest_first=True, limit=20),
        EventFilter(ref="cus_1", types=["customer.*"], status=["dead"], limit=20),
    ],
    ids=["ref", "handler", "ref-type-status"],
)
def test_history_queries_search_an_index_and_scan_no_table(tmp_path: Path, selection: EventFilter) -> None:
    db = tmp_path / "events.db"
    run(str(db), lambda store: asyncio.sleep(0))
    listing = select_events_sql(selection, columns="seq", mark="?", time=iso)
    counting = count_events_sql(selection, cap=1000, mark="?", time=iso)
    reads = [
        ("SELECT * FROM handler_attempts WHERE event_id = ? ORDER BY handler, id", ["evt_1"]),
        ("SELECT seq, type, body FROM events WHERE id = ?", ["evt_1"]),
        ("SELECT 1 FROM event_refs WHERE ref = ? AND kind = ? AND seq = ?", ["cus_1", "customer", 1]),
        ("DELETE FROM event_refs WHERE ref = ? AND kind = ? AND seq = ?", ["cus_1", "customer", 1]),
    ]
    for sql, params in [listing, counting, *reads]:
        plan = [row[-1] for row in query(db, "EXPLAIN QUERY PLAN " + sql, tuple(params))]
        tables = [step for step in plan if step.startswith("SCAN") and step != "SCAN matching"]
        assert tables == [], (sql, plan)
        assert any(step.startswith("SEARCH") for step in plan), plan


def test_a_count_by_time_alone_searches_the_received_at_index(tmp_path: Path) -> None:
    """`ORDER BY seq` in the count walked the whole table in seq order when the window held fewer than the cap."""
    db = tmp_path / "events.db"
    run(str(db), lambda store: asyncio.sleep(0))
    since = datetime(2026, 12, 4, tzinfo=UTC)
    sql, params = count_events_sql(EventFilter(since=since), cap=1000, mark="?", time=iso)
    plan = [row[-1] for row in query(db, "EXPLAIN QUERY PLAN " + sql, tuple(params))]
    assert [step for step in plan if step.startswith(("SCAN", "SEARCH")) and step != "SCAN matching"] == [
        "SEARCH events USING COVERING INDEX events_received_at (received_at>?)"
    ]


# -- through the dispatcher -------------------------------------------------------------------


def test_the_dispatcher_records_each_try_timeouts_included(store_url: str) -> None:
    """A real app and dispatcher: a try past its timeout is `timeout`, a later failure `failed`, the last `dead`."""
    hooks = Hooks()

    @hooks.on("*", name="flaky", timeout=0.05, max_attempts=3)
    async def flaky(event: Event) -> None:
        if event.attempt == 1:
            await asyncio.sleep(5)
        raise RuntimeError(f"try {event.attempt} broke")

    app = create_app(hooks, db=store_url, secrets=[SECRET], backoff=0.01)
    with TestClient(app) as client:
        assert signed_post("/webhooks", envelope("customer.created"), SECRET, "msg_f", client=client).status_code == 200
        settled(store_url, 1)

    async def read(store: Store) -> list[Attempt]:
        return await store.get_attempts("msg_f")

    rows = run(store_url, read)
    assert [(a.handler, a.attempt, a.outcome) for a in rows] == [
        ("flaky", 1, "timeout"),
        ("flaky", 2, "failed"),
        ("flaky", 3, "dead"),
    ]
    assert [(a.error or "").rstrip().splitlines()[-1] for a in rows] == [
        "receiver.hooks.HandlerTimeout: flaky took longer than its timeout of 0.05 s.",
        "RuntimeError: try 2 broke",
        "RuntimeError: try 3 broke",
    ]
    assert all(a.finished_at is not None and a.started_at is not None for a in rows)
    assert all(a.started_at <= a.finished_at for a in rows if a.started_at and a.finished_at)


def test_both_ref_filters_select_the_same_events(store_url: str) -> None:
    """A resource's events are read by its seqs (few references) or by walking events (COMMON_REF_ROWS or more).

    The store picks one by counting the references; both statements must answer alike, an event that names the
    resource under two kinds included (once).
    """
    t = float(int(now()))

    def data(n: int) -> dict[str, Any]:
        if n % 4 == 0:  # the resource under two kinds
            return {"id": "cus_1", "parent_id": "cus_1"}
        return {"id": f"cus_{n}", "owner_id": "cus_1" if n % 2 else "cus_2"}

    async def work(store: Store) -> None:
        for n in range(12):
            await store.ingest(about(f"evt_{n}", at=t + n, type="customer.updated", data=data(n)))

    run(store_url, work)
    postgres = is_postgres_url(store_url)
    mark, time = ("%s", (lambda moment: moment)) if postgres else ("?", iso)

    def read(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return pg_query(store_url, sql, params) if postgres else query(Path(store_url), sql, tuple(params))

    answers: dict[bool, list[list[tuple[Any, ...]]]] = {}
    for common in (False, True):
        kinds = ["customer", "owner", "parent"] if common else []
        answers[common] = [
            read(*select_events_sql(selection, columns="id", mark=mark, time=time, common_ref_kinds=kinds))
            for selection in (
                EventFilter(ref="cus_1", newest_first=True, limit=3),
                EventFilter(ref="cus_1", after_seq=2, max_seq=9),
            )
        ] + [read(*count_events_sql(EventFilter(ref="cus_1"), cap=100, mark=mark, time=time, common_ref_kinds=kinds))]
    assert (
        answers[False]
        == answers[True]
        == [
            [("evt_11",), ("evt_9",), ("evt_8",)],
            [("evt_3",), ("evt_4",), ("evt_5",), ("evt_7",), ("evt_8",)],
            [(9,)],
        ]
    )


def test_both_handler_filters_select_the_same_events(store_url: str) -> None:
    """A handler's events are read through its runs (few runs) or by walking events (COMMON_HANDLER_RUNS or more).

    The store picks one by counting the handler's runs; both statements must answer alike.
    """
    t = float(int(now()))
    incomings = [incoming(f"evt_{n}", at=t + n, handlers=["h"] if n % 3 else ["h", "g"]) for n in range(12)]

    async def work(store: Store) -> None:
        for one in incomings:
            await store.ingest(one)

    run(store_url, work)
    postgres = is_postgres_url(store_url)
    mark, time = ("%s", (lambda moment: moment)) if postgres else ("?", iso)

    def read(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return pg_query(store_url, sql, params) if postgres else query(Path(store_url), sql, tuple(params))

    answers: dict[bool, list[list[tuple[Any, ...]]]] = {}
    for common in (False, True):
        answers[common] = [
            read(*select_events_sql(selection, columns="id", mark=mark, time=time, common_handler=common))
            for selection in (
                EventFilter(handler="g", newest_first=True, limit=3),
                EventFilter(handler="g", status=["pending"]),
                EventFilter(handler="h", after_seq=2, max_seq=6),
            )
        ] + [read(*count_events_sql(EventFilter(handler="h"), cap=5, mark=mark, time=time, common_handler=common))]
    assert (
        answers[False]
        == answers[True]
        == [
            [("evt_9",), ("evt_6",), ("evt_3",)],
            [("evt_0",), ("evt_3",), ("evt_6",), ("evt_9",)],
            [("evt_2",), ("evt_3",), ("evt_4",), ("evt_5",)],
            [(5,)],
        ]
    )
