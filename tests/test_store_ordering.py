"""Per-resource ordering in the Store contract, on every backend (`store_url`: [sqlite] and [postgres]).

An ordered run (`Incoming.ordering`) is claimed only when no earlier run of its handler and resource is
unfinished and none of them runs now; a held run is parked, and a finish that succeeds or dies lets the
next go at once. These tests drive `claim` and `finish` by hand, with times they choose.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from test_store_contract import finish, now, run, table

from receiver.stores.open import is_postgres_url, open_store
from receiver.stores.postgres import schema as pg_schema
from receiver.stores.protocol import HOLD_RECHECK, Incoming, Run, Store, Waiting
from receiver.stores.sqlite import schema as sqlite_schema

LEASE = 30.0


def about(
    event_id: str,
    key: str | None,
    *,
    at: float,
    occurred: float | None,
    handlers: Sequence[str] = ("h",),
    hold: bool = False,
    ordered: Sequence[str] = ("h",),
) -> Incoming:
    """An event about resource `key` (None: no reference), received at `at`, that occurred at `occurred`."""
    return Incoming(
        id=event_id,
        type="subscription.updated",
        occurred_at=None,
        received_at=at,
        headers={"webhook-id": event_id},
        body=b'{"type": "subscription.updated"}',
        handlers=handlers,
        ordering={} if key is None else {name: (key, hold) for name in ordered},
        order_at=occurred,
    )


async def claim(store: Store, at: float, *, owner: str = "w1", handlers: Sequence[str] = ("h",)) -> list[str]:
    runs = await store.claim(owner=owner, handlers=handlers, now=at, lease=LEASE, limit=10, ordered=True)
    return sorted(f"{r.event_id}/{r.handler}" if len(handlers) > 1 else r.event_id for r in runs)


async def runs_by_id(store: Store, *ids: str) -> dict[str, tuple[str, int]]:
    return {r.event_id: (r.status, r.attempts) for event_id in ids for r in await store.get_runs(event_id)}


def test_one_run_per_resource_at_a_time_earliest_occurred_first_then_seq(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        # Received in one order, occurred in another; b and c occurred at the same instant: seq decides.
        await store.ingest(about("evt_late", "sub_1", at=t, occurred=t - 10))
        await store.ingest(about("evt_b", "sub_1", at=t, occurred=t - 50))
        await store.ingest(about("evt_c", "sub_1", at=t, occurred=t - 50))
        await store.ingest(about("evt_other", "sub_2", at=t, occurred=t - 5))
        await store.ingest(about("evt_none", None, at=t, occurred=t - 99))
        steps: list[Any] = [await claim(store, t + 1)]
        steps.append(await claim(store, t + 1))  # b still runs: nothing of sub_1 may start
        assert await finish(store, "evt_b", "h", "succeeded", at=t + 2)
        steps.append(await claim(store, t + 2))
        assert await finish(store, "evt_c", "h", "succeeded", at=t + 3)
        steps.append(await claim(store, t + 3))
        assert await finish(store, "evt_late", "h", "succeeded", at=t + 4)
        steps.append(await claim(store, t + 4))
        return steps

    assert run(store_url, work) == [["evt_b", "evt_none", "evt_other"], [], ["evt_c"], ["evt_late"], []]


def test_a_failed_run_holds_its_successors_until_it_succeeds(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        await store.ingest(about("evt_1", "sub_1", at=t, occurred=t - 3))
        await store.ingest(about("evt_2", "sub_1", at=t, occurred=t - 2))
        await store.ingest(about("evt_3", "sub_1", at=t, occurred=t - 1))
        steps: list[Any] = [await claim(store, t + 1)]
        assert await finish(store, "evt_1", "h", "failed", at=t + 2, next_attempt_at=t + 5)
        steps.append(await claim(store, t + 3))  # the retry is not due; its successors are held
        steps.append(await store.waiting_for("evt_3", "h"))
        steps.append(await store.waiting_for("evt_1", "h"))
        steps.append(await runs_by_id(store, "evt_1", "evt_2", "evt_3"))
        steps.append(await store.next_due(["h"]))
        steps.append(await claim(store, t + 5))  # the retry
        assert await finish(store, "evt_1", "h", "succeeded", at=t + 6)
        steps.append(await claim(store, t + 6))  # released at once, not at its recheck
        return steps

    first, held, waiting, head, states, due, retry, next_one = run(store_url, work)
    assert (first, held, retry, next_one) == (["evt_1"], [], ["evt_1"], ["evt_2"])
    assert isinstance(waiting, Waiting)
    assert (waiting.event_id, waiting.status, waiting.attempts) == ("evt_1", "failed", 1)
    assert head is None
    assert states == {"evt_1": ("failed", 1), "evt_2": ("pending", 0), "evt_3": ("pending", 0)}
    assert due is not None and due.timestamp() == pytest.approx(t + 5)  # parked runs are not due: no spin


def test_a_dead_run_lets_the_next_go_unless_it_holds_on_dead(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        for hold, key in ((False, "sub_free"), (True, "sub_held")):
            await store.ingest(about(f"evt_{key}_1", key, at=t, occurred=t - 2, hold=hold))
            await store.ingest(about(f"evt_{key}_2", key, at=t, occurred=t - 1, hold=hold))
        steps: list[Any] = [await claim(store, t + 1)]
        for key in ("sub_free", "sub_held"):
            assert await finish(store, f"evt_{key}_1", "h", "dead", at=t + 2)
        steps.append(await claim(store, t + 3))
        steps.append(await store.waiting_for("evt_sub_held_2", "h"))
        steps.append(await store.requeue(ids=["evt_sub_held_1"]))
        steps.append(await claim(store, t + 4))  # the retried dead run goes first
        assert await finish(store, "evt_sub_held_1", "h", "succeeded", at=t + 5)
        steps.append(await claim(store, t + 5))
        return steps

    first, after_dead, waiting, requeued, retried, last = run(store_url, work)
    assert first == ["evt_sub_free_1", "evt_sub_held_1"]
    assert after_dead == ["evt_sub_free_2"]
    assert isinstance(waiting, Waiting)
    assert (waiting.event_id, waiting.status) == ("evt_sub_held_1", "dead")
    assert (requeued, retried, last) == (1, ["evt_sub_held_1"], ["evt_sub_held_2"])


def test_a_late_older_event_waits_for_the_newer_one_running_and_is_superseded(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        await store.ingest(about("evt_new", "sub_1", at=t, occurred=t - 1))
        steps: list[Any] = [await claim(store, t + 1)]
        await store.ingest(about("evt_old", "sub_1", at=t + 2, occurred=t - 60))  # arrives while evt_new runs
        steps.append(await claim(store, t + 2))
        steps.append(await store.waiting_for("evt_old", "h"))
        assert await finish(store, "evt_new", "h", "succeeded", at=t + 3)
        runs = await store.claim(owner="w1", handlers=["h"], now=t + 3, lease=LEASE, limit=10, ordered=True)
        steps.append([(r.event_id, r.superseded) for r in runs])
        return steps

    first, during, waiting, late = run(store_url, work)
    assert (first, during) == (["evt_new"], [])
    assert isinstance(waiting, Waiting)
    assert (waiting.event_id, waiting.status) == ("evt_new", "running")
    assert late == [("evt_old", True)]


def test_superseded_only_for_a_newer_success_and_per_handler(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[tuple[str, str, bool]]:
        both = ("h", "g")
        await store.ingest(about("evt_2", "sub_1", at=t, occurred=t - 1, handlers=both, ordered=both))
        await store.claim(owner="w1", handlers=["h"], now=t + 1, lease=LEASE, limit=10, ordered=True)
        assert await finish(store, "evt_2", "h", "succeeded", at=t + 2)
        await store.ingest(about("evt_1", "sub_1", at=t + 3, occurred=t - 9, handlers=both, ordered=both))
        await store.ingest(about("evt_3", "sub_1", at=t + 3, occurred=t - 0.5, handlers=both, ordered=both))
        taken: list[Run] = []
        for moment in (t + 4, t + 5, t + 6):
            runs = await store.claim(owner="w1", handlers=both, now=moment, lease=LEASE, limit=10, ordered=True)
            for r in runs:
                assert await finish(store, r.event_id, r.handler, "succeeded", at=moment + 0.5)
            taken.extend(runs)
        return sorted((r.event_id, r.handler, r.superseded) for r in taken)

    # g never finished evt_2 before evt_1 ran; h had; nothing newer than evt_3 had succeeded for either.
    assert run(store_url, work) == [
        ("evt_1", "g", False),
        ("evt_1", "h", True),
        ("evt_2", "g", False),
        ("evt_3", "g", False),
        ("evt_3", "h", False),
    ]


def test_unordered_claims_and_handlers_are_unaffected(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[list[str]]:
        await store.ingest(about("evt_1", "sub_1", at=t, occurred=t - 2, handlers=("h", "free"), ordered=("h",)))
        await store.ingest(about("evt_2", "sub_1", at=t, occurred=t - 1, handlers=("h", "free"), ordered=("h",)))
        both = ("h", "free")
        ordered = await claim(store, t + 1, handlers=both)
        # A claim that is told no handler is ordered takes what is due, as before ordering existed (evt_2/h was
        # parked by the ordered claim: due again after HOLD_RECHECK).
        later = t + 2 + HOLD_RECHECK
        plain = await store.claim(owner="w2", handlers=["h"], now=later, lease=LEASE, limit=10)
        return [ordered, sorted(r.event_id for r in plain)]

    assert run(store_url, work) == [["evt_1/free", "evt_1/h", "evt_2/free"], ["evt_2"]]


def test_an_inline_claim_leaves_a_held_run_as_it_is(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        await store.ingest(about("evt_1", "sub_1", at=t, occurred=t - 2))
        await store.ingest(about("evt_2", "sub_1", at=t, occurred=t - 1))
        inline = await store.claim(
            owner="w1", handlers=["h"], now=t + 1, lease=LEASE, limit=10, event_id="evt_2", ordered=True
        )
        return [inline, [(r.status, r.next_attempt_at) for r in await store.get_runs("evt_2")]]

    inline, runs = run(store_url, work)
    assert inline == []
    assert runs[0][0] == "pending" and runs[0][1].timestamp() == pytest.approx(t, abs=1e-3)  # not parked


def test_a_held_run_whose_process_died_is_recorded_crashed_and_parked_pending(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[Any]:
        await store.ingest(about("evt_new", "sub_1", at=t, occurred=t - 1))
        await claim(store, t + 1, owner="dies")  # its process dies: the lease lapses at t + 31
        await store.ingest(about("evt_old", "sub_1", at=t + 2, occurred=t - 60))
        taken = await claim(store, t + 40)  # the older event goes first; the crashed try waits behind it
        states = await runs_by_id(store, "evt_new", "evt_old")
        attempts = [(a.attempt, a.outcome) for a in await store.get_attempts("evt_new")]
        return [taken, states, attempts]

    taken, states, attempts = run(store_url, work)
    assert taken == ["evt_old"]
    assert states == {"evt_new": ("pending", 1), "evt_old": ("running", 1)}
    assert attempts == [(1, "crashed")]


def test_held_runs_do_not_fill_a_claim(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[str]:
        for n in range(20):  # twenty runs of one resource, held behind the first, all due before the free one
            await store.ingest(about(f"evt_{n:02}", "sub_1", at=t + n / 100, occurred=t + n))
        await store.ingest(about("evt_free", "sub_2", at=t + 1, occurred=t))
        runs = await store.claim(owner="w1", handlers=["h"], now=t + 2, lease=LEASE, limit=2, ordered=True)
        return sorted(r.event_id for r in runs)

    assert run(store_url, work) == ["evt_00", "evt_free"]


def test_two_claimers_never_run_one_resource_at_once_and_keep_its_order(store_url: str) -> None:
    """Two store objects (two connections, as two processes) claim and finish concurrently."""
    keys = [f"sub_{k}" for k in range(4)]
    t = now()

    async def main() -> tuple[list[tuple[str, str, float, float]], dict[str, list[str]]]:
        stores = [open_store(store_url), open_store(store_url)]
        order: dict[str, list[str]] = {key: [] for key in keys}
        try:
            for n in range(40):  # occurred in reverse of arrival within each resource
                key = keys[n % len(keys)]
                await stores[0].ingest(about(f"evt_{n:02}", key, at=t, occurred=t - n))
                order[key].insert(0, f"evt_{n:02}")
            log: list[tuple[str, str, float, float]] = []
            await asyncio.gather(*(_worker(store, f"w{i}", log) for i, store in enumerate(stores)))
            return log, order
        finally:
            for store in stores:
                await store.close()

    log, order = asyncio.run(main())
    assert sorted(event for _, event, _, _ in log) == sorted(e for events in order.values() for e in events)
    for key in keys:
        spans = sorted((start, end, event) for k, event, start, end in log if k == key)
        assert [event for _, _, event in spans] == order[key]
        for (_, end, _), (start, _, _) in itertools.pairwise(spans):
            assert end <= start, f"two runs of {key} overlapped"


async def _worker(store: Store, owner: str, log: list[tuple[str, str, float, float]]) -> None:
    idle = 0
    loop = asyncio.get_running_loop()
    while idle < 20:
        runs = await store.claim(owner=owner, handlers=["h"], now=now(), lease=LEASE, limit=3, ordered=True)
        if not runs:
            idle += 1
            await asyncio.sleep(0.01)
            continue
        idle = 0
        for r in runs:
            start = loop.time()
            await asyncio.sleep(0.002)
            key = (await store.get_event(r.event_id), r.event_id)
            end = loop.time()
            assert key[0] is not None
            log.append((_key_of(r.event_id), r.event_id, start, end))
            assert await finish(store, r.event_id, "h", "succeeded", owner=owner, at=now())


def _key_of(event_id: str) -> str:
    return f"sub_{int(event_id[4:]) % 4}"


def test_the_migration_keeps_runs_and_leaves_them_unordered(store_url: str) -> None:
    """A store of the previous schema gains the ordering columns; its runs stay, with no resource."""
    if is_postgres_url(store_url):
        with psycopg.connect(store_url, autocommit=True) as conn:
            for step in pg_schema._MIGRATIONS[:4]:
                conn.execute(step.replace("BATCH_MARK", str(pg_schema.BATCH_MARK)).encode())
            conn.execute("CREATE TABLE montra_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO montra_schema VALUES (4)")
            conn.execute(
                "INSERT INTO events (id, type, received_at, headers, body) VALUES ('evt_1', 'a.b', now(), '{}', '')"
            )
            conn.execute("INSERT INTO handler_runs (event_id, handler, next_attempt_at) VALUES ('evt_1', 'h', now())")
    else:
        with sqlite3.connect(store_url) as conn:
            conn.executescript(sqlite_schema._MIGRATIONS[0] + sqlite_schema._MIGRATIONS[1] + "PRAGMA user_version = 2;")
            conn.execute(
                "INSERT INTO events (id, type, received_at, headers, body) "
                "VALUES ('evt_1', 'a.b', '2026-01-01T00:00:00.000000Z', '{}', x'')"
            )
            conn.execute(
                "INSERT INTO handler_runs (event_id, handler, next_attempt_at) "
                "VALUES ('evt_1', 'h', '2026-01-01T00:00:00.000000Z')"
            )
        conn.close()

    async def work(store: Store) -> list[str]:
        return await claim(store, now())

    assert run(store_url, work) == ["evt_1"]
    assert table(store_url, "SELECT event_id, order_key, order_at, order_seq FROM handler_runs") == [
        ("evt_1", None, None, None)
    ]


def test_recheck_is_short_enough_for_a_run_whose_predecessor_vanished() -> None:
    # A parked run is looked at again after HOLD_RECHECK even if nothing releases it (its predecessor pruned).
    assert 0 < HOLD_RECHECK <= 30
