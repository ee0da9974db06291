"""What only the PostgreSQL store has: the stream horizon, concurrent status updates, its schema, its URL, its server.

The Store contract both backends share is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import pytest
from click.testing import CliRunner
from support.postgres import pg_query, postgres_base_url
from support.wait import wait_until_async
from test_store_contract import bounds_reaching, finish, incoming, run

from receiver.errors import ConfigurationError, StoreUnavailable
from receiver.event import RunStatus
from receiver.stores.open import open_store
from receiver.stores.postgres.schema import SCHEMA_VERSION
from receiver.stores.postgres.store import MAX_PENDING_REJECTIONS
from receiver.stores.protocol import EventFilter, Store
from replay.cli import cli

T = TypeVar("T")


@pytest.fixture
def raw(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own, not autocommit (a transaction opens at its first statement), closed at teardown."""
    with psycopg.connect(postgres_url) as conn:
        yield conn


# -- the stream horizon ----------------------------------------------------------------------


def stall_a_batch(raw: psycopg.Connection[Any], event_id: str) -> int:
    """What a batch does before its COMMIT: mark itself in flight, insert (taking a seq). No commit."""
    raw.execute("SELECT montra_begin_batch()")
    row = raw.execute(
        "INSERT INTO events (id, type, received_at, headers, body) VALUES (%s, 'a.b', now(), '{}', '\\x7b7d') "
        "RETURNING seq",
        (event_id,),
    ).fetchone()
    assert row is not None
    seq: int = row[0]
    return seq


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_stalled_writer_holds_the_horizon_until_it_ends(
    postgres_url: str, raw: psycopg.Connection[Any], outcome: str
) -> None:
    """A stream serves seqs up to seq_bounds()[1]: it must not pass a seq whose transaction may still commit."""

    async def work(store: Store) -> dict[str, Any]:
        seen: dict[str, Any] = {"first": (await store.ingest(incoming("evt_first", at=time.time()))).seq}
        seen["stalled"] = stall_a_batch(raw, "evt_stalled")
        seen["later"] = (await store.ingest(incoming("evt_later", at=time.time()))).seq  # committed above the hole
        seen["open"] = await bounds_reaching(store, 1)  # it cannot pass the stalled seq 2 to reach 3
        seen["served_open"] = [e.seq for e in await store.list_events(EventFilter(max_seq=seen["open"][1]))]
        if outcome == "commit":
            raw.commit()
        else:
            raw.rollback()
        seen["ended"] = await bounds_reaching(store, 3)
        seen["served"] = [(e.seq, e.id) for e in await store.list_events(EventFilter(max_seq=seen["ended"][1]))]
        return seen

    seen = run(postgres_url, work)
    assert (seen["first"], seen["stalled"], seen["later"]) == (1, 2, 3)
    assert seen["open"] == (1, 1)  # below the stalled seq 2, though seq 3 is committed
    assert seen["served_open"] == [1]
    assert seen["ended"] == (1, 3)  # after a rollback the hole at 2 is passed at once
    if outcome == "commit":
        assert seen["served"] == [(1, "evt_first"), (2, "evt_stalled"), (3, "evt_later")]
    else:
        assert seen["served"] == [(1, "evt_first"), (3, "evt_later")]


def test_the_stores_own_batch_holds_the_horizon_until_it_commits(
    postgres_url: str, raw: psycopg.Connection[Any]
) -> None:
    """The real batch statement, held after it has taken its seq: another instance's later seq must wait for it."""
    run(postgres_url, lambda store: store.check_writable())  # creates the schema
    # A trigger parks the INSERT of `evt_slow` (its seq already taken) on a lock this test holds.
    pg_query(
        postgres_url,
        "CREATE FUNCTION park() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.id = 'evt_slow' THEN "
        "PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); END IF; RETURN NEW; END $$; "
        "CREATE TRIGGER park BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION park()",
    )
    raw.execute("SELECT pg_advisory_lock(4242)")

    async def work(store: Store) -> dict[str, Any]:
        other = open_store(postgres_url)  # another instance
        try:
            slow = asyncio.ensure_future(store.ingest(incoming("evt_slow", at=time.time())))
            parked = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            await wait_until_async(  # until the batch waits in the trigger, its seq taken
                lambda: pg_query(postgres_url, parked) != [(0,)], timeout=10.0, what="the batch to wait in the trigger"
            )
            seen: dict[str, Any] = {"fast": (await other.ingest(incoming("evt_fast", at=time.time()))).seq}
            seen["parked"] = await other.seq_bounds()
            raw.execute("SELECT pg_advisory_unlock(4242)")
            seen["slow"] = (await slow).seq
            seen["after"] = await bounds_reaching(other, 2)
            seen["served"] = [(e.seq, e.id) for e in await other.list_events(EventFilter(max_seq=2))]
            return seen
        finally:
            await other.close()

    seen = run(postgres_url, work)
    assert (seen["slow"], seen["fast"]) == (1, 2)
    assert seen["parked"] == (1, 0)  # seq 2 is committed, but seq 1 may still appear: nothing is served yet
    assert seen["after"] == (1, 2)
    assert seen["served"] == [(1, "evt_slow"), (2, "evt_fast")]


def test_a_reader_following_the_horizon_misses_nothing_while_writers_commit_out_of_order(postgres_url: str) -> None:
    """Six writers commit batches after random pauses (so seqs commit out of order, and some roll back) while a
    reader moves its cursor to each horizon it is given, as /stream does: it must get every committed seq once."""
    rng = random.Random(7)
    plans = [[(rng.random() * 0.02, rng.random() < 0.2) for _ in range(25)] for _ in range(6)]

    def write(writer: int) -> list[int]:
        kept: list[int] = []
        with psycopg.connect(postgres_url) as conn:
            for batch, (pause, roll_back) in enumerate(plans[writer]):
                conn.execute("SELECT montra_begin_batch()")
                seqs = [
                    row[0]
                    for row in conn.execute(
                        "INSERT INTO events (id, type, received_at, headers, body) "
                        "SELECT 'w' || %s || '_' || %s || '_' || n, 'a.b', now(), '{}', '' "
                        "FROM generate_series(1, 3) AS n RETURNING seq",
                        (writer, batch),
                    ).fetchall()
                ]
                time.sleep(pause)  # another writer's later seqs may commit meanwhile
                if roll_back:
                    conn.rollback()
                else:
                    conn.commit()
                    kept.extend(seqs)
        return kept

    async def follow(store: Store, writing: asyncio.Future[list[list[int]]]) -> list[int]:
        served: list[int] = []
        cursor = 0
        while True:
            done = writing.done()
            _, newest = await store.seq_bounds()
            rows = await store.list_events(EventFilter(after_seq=cursor, max_seq=newest))
            served.extend(row.seq for row in rows)
            cursor = max(cursor, newest)
            if done:
                return served

    async def work(store: Store) -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(len(plans)) as pool:
            writing = asyncio.gather(*(loop.run_in_executor(pool, write, n) for n in range(len(plans))))
            served = await follow(store, writing)
        committed = sorted(seq for kept in writing.result() for seq in kept)
        return served, committed

    served, committed = run(postgres_url, work)
    assert len(committed) > 300  # most of the 450 events; the rest were rolled back
    assert served == committed  # each once, in seq order, none skipped


def test_an_unrelated_open_transaction_does_not_hold_the_horizon(postgres_url: str) -> None:
    base = postgres_base_url()
    assert base is not None

    async def work(store: Store) -> tuple[int | None, tuple[int, int]]:
        with psycopg.connect(base) as other:
            other.execute("SELECT pg_current_xact_id()")  # a transaction that has an xid and touches no montra table
            stored = await store.ingest(incoming("evt_1", at=time.time()))
            bounds = await store.seq_bounds()
            other.rollback()
        return stored.seq, bounds

    assert run(postgres_url, work) == (1, (1, 1))


# -- concurrency -----------------------------------------------------------------------------


def test_two_stores_finishing_two_runs_of_one_event_keep_its_status_right(postgres_url: str) -> None:
    """Each finish re-derives the event's status in its own transaction: neither may miss the other's change."""
    t = time.time()
    events = [f"evt_{n}" for n in range(60)]

    async def work(store: Store) -> dict[str, list[str]]:
        other = open_store(postgres_url)
        try:
            await asyncio.gather(*(store.ingest(incoming(e, at=t, handlers=["a", "b"])) for e in events))
            assert len(await store.claim(owner="p1", handlers=["a"], now=t, lease=60, limit=100)) == 60
            assert len(await other.claim(owner="p2", handlers=["b"], now=t, lease=60, limit=100)) == 60
            # Even events: both succeed (handled); odd ones: b waits to retry (failed).
            finishes = []
            for n, e in enumerate(events):
                b_status: RunStatus = "succeeded" if n % 2 == 0 else "failed"
                retry = None if n % 2 == 0 else t + 600
                finishes.append(finish(store, e, "a", "succeeded", owner="p1", at=t + 1))
                finishes.append(finish(other, e, "b", b_status, owner="p2", at=t + 1, next_attempt_at=retry))
            assert await asyncio.gather(*finishes) == [True] * 120
        finally:
            await other.close()
        by_status: dict[str, list[str]] = {}
        for event in await store.list_events(EventFilter()):
            by_status.setdefault(event.status, []).append(event.id)
        return by_status

    assert run(postgres_url, work) == {"handled": events[0::2], "failed": events[1::2]}
    assert pg_query(postgres_url, "SELECT status, count(*) FROM events GROUP BY status ORDER BY status") == [
        ("failed", 30),
        ("handled", 30),
    ]


def test_an_event_the_server_refuses_fails_alone_in_its_batch(postgres_url: str) -> None:
    """PostgreSQL text cannot hold NUL (the app answers such a type 400 first): only that event fails."""
    t = time.time()

    async def work(store: Store) -> list[Any]:
        results = await asyncio.gather(
            store.ingest(incoming("evt_before", at=t, handlers=["a"])),
            store.ingest(incoming("evt_nul", at=t, type="a\x00b", handlers=["a"])),
            store.ingest(incoming("evt_after", at=t, handlers=["a"])),
            return_exceptions=True,
        )
        return [type(r).__name__ if isinstance(r, BaseException) else r.status for r in results]

    assert run(postgres_url, work) == ["stored", "StoreUnavailable", "stored"]
    assert pg_query(postgres_url, "SELECT id, status FROM events ORDER BY seq") == [
        ("evt_before", "pending"),
        ("evt_after", "pending"),
    ]
    assert pg_query(postgres_url, "SELECT event_id FROM handler_runs ORDER BY event_id") == [
        ("evt_after",),
        ("evt_before",),
    ]


def test_a_claim_skips_runs_another_transaction_has_locked(postgres_url: str, raw: psycopg.Connection[Any]) -> None:
    """Instances never wait on each other's runs: a locked run is skipped (a wait would hang this test)."""
    t = time.time()

    async def work(store: Store) -> tuple[list[str], list[str]]:
        for n in range(4):
            await store.ingest(incoming(f"evt_{n}", at=t + n, handlers=["a"]))
        raw.execute("SELECT 1 FROM handler_runs WHERE event_id IN ('evt_0', 'evt_2') FOR UPDATE")
        while_locked = await store.claim(owner="w1", handlers=["a"], now=t + 10, lease=60, limit=10)
        raw.rollback()
        after = await store.claim(owner="w2", handlers=["a"], now=t + 10, lease=60, limit=10)
        return [r.event_id for r in while_locked], [r.event_id for r in after]

    assert run(postgres_url, work) == (["evt_1", "evt_3"], ["evt_0", "evt_2"])


def test_a_flood_of_rejections_writes_at_most_the_pending_cap(postgres_url: str) -> None:
    async def work(store: Store) -> None:
        for _ in range(MAX_PENDING_REJECTIONS * 3):
            store.reject(reason="invalid_signature", remote="127.0.0.1", headers={}, body=b"")

    run(postgres_url, work)  # every call answered at once; close() waits for the rows being written
    assert pg_query(postgres_url, "SELECT count(*) FROM rejections") == [(MAX_PENDING_REJECTIONS,)]


# -- schema and URL --------------------------------------------------------------------------


def test_the_schema_is_versioned_and_migrated_once(postgres_url: str) -> None:
    run(postgres_url, lambda store: store.ingest(incoming("evt_1", at=time.time())))
    # A restart finds the schema current: nothing is created again, nothing stored is lost.
    run(postgres_url, lambda store: store.check_writable())
    run(postgres_url, lambda store: store.check_writable())
    assert pg_query(postgres_url, "SELECT version FROM montra_schema") == [(SCHEMA_VERSION,)]
    assert pg_query(postgres_url, "SELECT id FROM events") == [("evt_1",)]
    tables = pg_query(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1")
    assert sorted(tables) == [
        ("event_refs",),
        ("events",),
        ("handler_attempts",),
        ("handler_runs",),
        ("montra_schema",),
        ("rejections",),
    ]


def test_a_fresh_database_migrates_once_when_instances_start_together(postgres_url: str) -> None:
    """The first to take the migration lock creates the schema; the others wait for it and find it done."""
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(postgres_url), range(4)))
    for store in stores:
        asyncio.run(store.close())
    assert pg_query(postgres_url, "SELECT version FROM montra_schema") == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    run(postgres_url, lambda store: store.check_writable())
    pg_query(postgres_url, "UPDATE montra_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigurationError) as caught:
        open_store(postgres_url)
    assert str(caught.value) == (
        f"The database has schema version {SCHEMA_VERSION + 1}, newer than this montra-webhooks understands "
        f"({SCHEMA_VERSION}): upgrade montra-webhooks or use another --db."
    )
    assert pg_query(postgres_url, "SELECT version FROM montra_schema") == [(SCHEMA_VERSION + 1,)]  # left as it was


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:hunter2@127.0.0.1:1/x", "postgresql://u@127.0.0.1:1/x"),
        ("postgres://u:hunter2@127.0.0.1:1/x?connect_timeout=3", "postgres://u@127.0.0.1:1/x?connect_timeout=3"),
        (
            "postgresql://u@127.0.0.1:1/x?password=hunter2&sslmode=disable",
            "postgresql://u@127.0.0.1:1/x?sslmode=disable",
        ),
    ],
    ids=["user-info", "postgres-scheme", "parameter"],
)
def test_a_database_that_does_not_answer_is_a_one_line_configuration_error(url: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "hunter2" not in message
    assert "\n" not in message
    assert message.startswith(f"Cannot open the event store at {shown}: ")
    assert message.endswith(" Check --db.")


@pytest.mark.parametrize(
    "add_password",
    [
        lambda url, user: url.replace("postgresql://", f"postgresql://{user}:hunter2@", 1),
        lambda url, user: f"{url}&password=hunter2",
    ],
    ids=["user-info", "parameter"],
)
def test_store_path_shows_no_password(postgres_url: str, add_password: Callable[[str, str], str]) -> None:
    if "@" in postgres_url.split("?")[0]:
        pytest.skip("the test server's URL has user info of its own")
    [(user,)] = pg_query(postgres_url, "SELECT current_user")
    url = add_password(postgres_url, user)
    assert "hunter2" in url
    try:
        store = open_store(url)
    except ConfigurationError:
        pytest.skip("the test server checks passwords")  # a local socket with peer or trust auth ignores it
    path = store.path
    asyncio.run(store.close())
    assert "hunter2" not in path
    assert path.startswith("postgresql://")


# -- the server going away -------------------------------------------------------------------


def test_connections_cut_by_the_server_are_store_unavailable(postgres_url: str) -> None:
    """An operation on a connection the server ended raises StoreUnavailable, not a psycopg error; the pool recovers."""
    name = f"montra_cut_{secrets.token_hex(4)}"
    url = f"{postgres_url}&application_name={name}"
    t = time.time()

    def cut() -> int:
        [(count,)] = pg_query(
            postgres_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        return int(count)

    operations: list[tuple[str, Callable[[Store], Awaitable[Any]]]] = [
        ("ingest", lambda store: store.ingest(incoming("evt_2", at=t, handlers=["a"]))),
        ("get_event", lambda store: store.get_event("evt_1")),
        ("list_events", lambda store: store.list_events(EventFilter())),
        ("claim", lambda store: store.claim(owner="w1", handlers=["a"], now=t, lease=60, limit=10)),
        ("seq_bounds", lambda store: store.seq_bounds()),
        ("requeue", lambda store: store.requeue()),
    ]

    async def work(store: Store) -> list[str]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        outcomes = []
        for label, operation in operations:
            await until_writable(store)  # an idle, live connection in the pool: the one the server is about to end
            assert cut() >= 1
            try:
                await operation(store)
                outcomes.append(f"{label}: done")
            except StoreUnavailable as e:
                assert isinstance(e.__cause__, psycopg.Error), repr(e.__cause__)
                outcomes.append(f"{label}: StoreUnavailable")
        await until_writable(store)
        assert cut() >= 1
        outcomes.append(f"check_writable: {await store.check_writable()}")
        await until_writable(store)
        outcomes.append(f"after: {(await store.ingest(incoming('evt_3', at=t))).status}")
        return outcomes

    assert run(url, work) == [
        "ingest: StoreUnavailable",
        "get_event: StoreUnavailable",
        "list_events: StoreUnavailable",
        "claim: StoreUnavailable",
        "seq_bounds: StoreUnavailable",
        "requeue: StoreUnavailable",
        "check_writable: False",
        "after: stored",
    ]
    assert pg_query(postgres_url, "SELECT id FROM events ORDER BY seq") == [("evt_1",), ("evt_3",)]


async def until_writable(store: Store) -> None:
    """Use the pool until a connection works again: each broken one is discarded as it fails."""
    for _ in range(20):
        if await store.check_writable():
            return
    raise AssertionError("the store did not recover from its connections being cut")


def test_without_psycopg_a_postgres_url_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "receiver.stores.postgres.store", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    result = CliRunner().invoke(cli, ["events", "list", "--db", "postgresql://db.internal/billing"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: --db names a PostgreSQL database, but psycopg is not installed: "
        "pip install 'montra-webhooks[postgres]'."
    )
