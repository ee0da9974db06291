"""The Store contract, run against every backend (`store_url`: [sqlite] and [postgres]).

These tests use only the `Store` interface (and read `rejections` directly, which the interface only writes), so
both backends must give the same rows, statuses, counts and times for the same calls. One allowance: PostgreSQL's
seq_bounds() serves a committed seq only once every older transaction on the server has ended, so a test waits for
it (`bounds_reaching`) before asserting the exact bounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from support.db import query
from support.postgres import pg_query
from support.wait import wait_until_async

from receiver.errors import ConfigurationError, StoreUnavailable
from receiver.event import RunStatus
from receiver.stores.open import is_postgres_url, open_store
from receiver.stores.protocol import EventFilter, Incoming, Store, is_takeover, iso, parse_iso

T = TypeVar("T")

LEASE = 60.0
SETTLE = 10.0
"""Seconds `bounds_reaching` waits for PostgreSQL's stream horizon to pass a committed seq."""


def moment(t: float) -> datetime:
    """Unix seconds as the store hands a time back: an aware UTC datetime, to the microsecond."""
    stamp = parse_iso(iso(t))
    assert stamp is not None
    return stamp


def incoming(
    event_id: str,
    *,
    at: float,
    type: str = "customer.created",
    handlers: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Incoming:
    return Incoming(
        id=event_id,
        type=type,
        occurred_at="2026-11-25T17:00:00Z",
        received_at=at,
        headers={"Webhook-Id": event_id} if headers is None else headers,
        body=b'{"type": "%s"}' % type.encode() if body is None else body,
        handlers=handlers,
    )


def run(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open a store on `url`, run `work` on one event loop, always close the store."""

    async def main() -> T:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def table(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows read on a connection of our own, as a user would read the backend's tables."""
    return pg_query(url, sql) if is_postgres_url(url) else query(Path(url), sql)


def now() -> float:
    """Times near the real clock: release() and requeue() stamp runs due at the real time."""
    return time.time()


async def finish(
    store: Store,
    event_id: str,
    handler: str,
    status: RunStatus,
    *,
    owner: str = "w1",
    at: float,
    next_attempt_at: float | None = None,
    attempts: int | None = None,
) -> bool:
    return await store.finish(
        owner=owner,
        event_id=event_id,
        handler=handler,
        status=status,
        error=None if status == "succeeded" else f"{handler} failed",
        next_attempt_at=next_attempt_at,
        finished_at=at,
        duration_ms=1.5,
        attempts=attempts,
    )


async def status_of(store: Store, event_id: str) -> str:
    event = await store.get_event(event_id)
    assert event is not None
    return event.status


def summary(runs: Sequence[Any]) -> list[tuple[str, str, str, int, str | None]]:
    return [(r.event_id, r.handler, r.status, r.attempts, r.lease_owner) for r in runs]


# -- ingest ----------------------------------------------------------------------------------


def test_ingest_stores_exact_bytes_redacted_headers_in_seq_order(store_url: str) -> None:
    t = now()
    body = b'\xff\xfe{"type": "a.b"}\x00\x80 not utf-8'
    headers = {"Authorization": "Bearer s3cret", "Cookie": "sid=1", "Proxy-Authorization": "Basic x", "X-Trace": "Ab"}

    async def work(store: Store) -> tuple[list[Any], Any]:
        results = [await store.ingest(incoming(f"evt_{n}", at=t + n)) for n in range(3)]
        results.append(await store.ingest(incoming("evt_raw", at=t, headers=headers, body=body, type="a.b")))
        return results, await store.get_event("evt_raw")

    results, raw = run(store_url, work)
    assert [(r.status, r.seq, r.requeued) for r in results] == [
        ("stored", 1, 0),
        ("stored", 2, 0),
        ("stored", 3, 0),
        ("stored", 4, 0),
    ]
    assert (raw.seq, raw.id, raw.type, raw.occurred_at, raw.received_at, raw.status) == (
        4,
        "evt_raw",
        "a.b",
        "2026-11-25T17:00:00Z",
        moment(t),
        "unhandled",
    )
    assert raw.body == body
    assert raw.headers == {
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "proxy-authorization": "[redacted]",
        "x-trace": "Ab",
    }


def test_a_duplicate_id_is_refused_and_changes_nothing(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
        first = await store.ingest(incoming("evt_1", at=t, handlers=["h"], body=b'{"type": "first"}'))
        again = await store.ingest(incoming("evt_1", at=t + 5, handlers=["h", "other"], body=b'{"type": "second"}'))
        events = await store.list_events(EventFilter())
        return [first, again], [(e.seq, e.id, e.body, e.received_at) for e in events], await store.get_runs("evt_1")

    results, events, runs = run(store_url, work)
    assert [(r.status, r.seq, r.requeued) for r in results] == [("stored", 1, 0), ("duplicate", None, 0)]
    assert events == [(1, "evt_1", b'{"type": "first"}', moment(t))]
    assert summary(runs) == [("evt_1", "h", "pending", 0, None)]


def test_fifty_concurrent_ingests_of_one_id_store_it_once(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[Any], int, list[Any]]:
        results = await asyncio.gather(*(store.ingest(incoming("evt_1", at=t, handlers=["a", "b"])) for _ in range(50)))
        return list(results), len(await store.list_events(EventFilter())), await store.get_runs("evt_1")

    results, count, runs = run(store_url, work)
    assert sorted(r.status for r in results) == ["duplicate"] * 49 + ["stored"]
    assert [r.seq for r in results if r.status == "stored"] == [1]
    assert count == 1
    assert summary(runs) == [("evt_1", "a", "pending", 0, None), ("evt_1", "b", "pending", 0, None)]


def test_handlers_create_pending_runs_due_at_arrival(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[Any], str, list[Any]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["mod.audit", "mod.grant"]))
        await store.ingest(incoming("evt_none", at=t))
        return await store.get_runs("evt_1"), await status_of(store, "evt_1"), await store.get_runs("evt_none")

    runs, status, none = run(store_url, work)
    assert [(r.handler, r.status, r.attempts, r.next_attempt_at, r.lease_owner, r.lease_until) for r in runs] == [
        ("mod.audit", "pending", 0, moment(t), None, None),
        ("mod.grant", "pending", 0, moment(t), None, None),
    ]
    assert [(r.last_error, r.started_at, r.finished_at, r.duration_ms) for r in runs] == [(None, None, None, None)] * 2
    assert (status, none) == ("pending", [])


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ((), "unhandled"),
        (("pending",), "pending"),
        (("running",), "pending"),
        (("succeeded",), "handled"),
        (("succeeded", "succeeded"), "handled"),
        (("succeeded", "running"), "pending"),
        (("succeeded", "pending"), "pending"),
        (("failed", "succeeded"), "failed"),
        (("failed", "running"), "failed"),
        (("dead", "succeeded"), "dead"),
        (("dead", "failed", "running", "succeeded"), "dead"),
    ],
)
def test_event_status_is_derived_from_its_runs(store_url: str, targets: tuple[str, ...], expected: str) -> None:
    """Precedence: dead, failed (waiting to retry), pending (pending or running), handled, unhandled."""
    t = now()
    handlers = [f"h{n}" for n in range(len(targets))]

    async def work(store: Store) -> tuple[str, list[str]]:
        await store.ingest(incoming("evt_1", at=t, handlers=handlers))
        claimed = [h for h, target in zip(handlers, targets, strict=True) if target != "pending"]
        assert len(await store.claim(owner="w1", handlers=claimed, now=t, lease=LEASE, limit=10)) == len(claimed)
        for handler, target in zip(handlers, targets, strict=True):
            if target in ("succeeded", "failed", "dead"):
                retry = t + 300 if target == "failed" else None
                status = cast(RunStatus, target)
                assert await finish(store, "evt_1", handler, status, at=t + 1, next_attempt_at=retry)
        return await status_of(store, "evt_1"), [r.status for r in await store.get_runs("evt_1")]

    assert run(store_url, work) == (expected, list(targets))


def test_event_status_follows_a_claim_and_finish_sequence(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[str]:
        seen = []
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b"]))
        seen.append(await status_of(store, "evt_1"))
        await store.claim(owner="w1", handlers=["a", "b"], now=t, lease=LEASE, limit=10)
        seen.append(await status_of(store, "evt_1"))
        assert await finish(store, "evt_1", "a", "succeeded", at=t + 1)
        seen.append(await status_of(store, "evt_1"))
        assert await finish(store, "evt_1", "b", "failed", at=t + 1, next_attempt_at=t + 5)
        seen.append(await status_of(store, "evt_1"))
        assert [r.handler for r in await store.claim(owner="w1", handlers=["b"], now=t + 5, lease=LEASE, limit=10)] == [
            "b"
        ]
        seen.append(await status_of(store, "evt_1"))
        assert await finish(store, "evt_1", "b", "dead", at=t + 6)
        seen.append(await status_of(store, "evt_1"))
        assert await store.requeue(status=["dead"]) == 1
        seen.append(await status_of(store, "evt_1"))
        assert len(await store.claim(owner="w2", handlers=["b"], now=now() + 1, lease=LEASE, limit=10)) == 1
        assert await finish(store, "evt_1", "b", "succeeded", owner="w2", at=now() + 2)
        seen.append(await status_of(store, "evt_1"))
        return seen

    assert run(store_url, work) == ["pending", "pending", "pending", "failed", "pending", "dead", "pending", "handled"]


def test_a_duplicate_requeues_only_dead_runs(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[Any, Any, list[Any], str]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b", "c"]))
        await store.claim(owner="w1", handlers=["a", "b", "c"], now=t, lease=LEASE, limit=10)
        assert await finish(store, "evt_1", "a", "dead", at=t + 1)
        assert await finish(store, "evt_1", "b", "failed", at=t + 1, next_attempt_at=t + 3600)
        assert await finish(store, "evt_1", "c", "succeeded", at=t + 1)
        assert await status_of(store, "evt_1") == "dead"
        first = await store.ingest(incoming("evt_1", at=t + 2, handlers=["a", "b", "c"]))
        second = await store.ingest(incoming("evt_1", at=t + 3, handlers=["a", "b", "c"]))
        return first, second, await store.get_runs("evt_1"), await status_of(store, "evt_1")

    first, second, runs, status = run(store_url, work)
    assert (first.status, first.seq, first.requeued) == ("duplicate", None, 1)
    assert (second.status, second.requeued) == ("duplicate", 0)  # nothing dead left to re-queue
    assert [(r.handler, r.status, r.attempts, r.lease_owner, r.lease_until) for r in runs] == [
        ("a", "pending", 0, None, None),
        ("b", "failed", 1, None, None),
        ("c", "succeeded", 1, None, None),
    ]
    assert runs[1].next_attempt_at == moment(t + 3600)  # the failed run keeps its retry time
    assert status == "failed"


# -- claims, leases, fencing -------------------------------------------------------------------


def test_claim_takes_due_runs_only_and_leases_them(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        await store.ingest(incoming("evt_due", at=t, handlers=["a", "b"]))
        await store.ingest(incoming("evt_later", at=t + 100, handlers=["a"]))
        claimed = await store.claim(owner="w1", handlers=["a"], now=t + 10, lease=30, limit=10)
        rival = await store.claim(owner="w2", handlers=["a"], now=t + 10, lease=30, limit=10)
        return claimed, rival, await store.get_runs("evt_due"), await store.get_runs("evt_later")

    claimed, rival, due_runs, later_runs = run(store_url, work)
    assert [(r.event_id, r.handler, r.status, r.attempts, r.lease_owner) for r in claimed] == [
        ("evt_due", "a", "running", 1, "w1")
    ]
    assert (claimed[0].lease_until, claimed[0].started_at, claimed[0].finished_at) == (
        moment(t + 40),
        moment(t + 10),
        None,
    )
    assert rival == []
    assert due_runs == [claimed[0], due_runs[1]]  # the claim returned the stored row
    assert summary(due_runs[1:]) == [("evt_due", "b", "pending", 0, None)]  # another handler's run is not taken
    assert summary(later_runs) == [("evt_later", "a", "pending", 0, None)]


def test_claim_respects_limit_and_handlers(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[list[str]]:
        for n in range(5):
            await store.ingest(incoming(f"evt_{n}", at=t + n, handlers=["a", "b"]))
        first = await store.claim(owner="w1", handlers=["a"], now=t + 10, lease=30, limit=2)
        none = await store.claim(owner="w1", handlers=[], now=t + 10, lease=30, limit=2)
        zero = await store.claim(owner="w1", handlers=["a"], now=t + 10, lease=30, limit=0)
        rest = await store.claim(owner="w1", handlers=["a"], now=t + 10, lease=30, limit=10)
        return [[f"{r.event_id}/{r.handler}" for r in runs] for runs in (first, none, zero, rest)]

    first, none, zero, rest = run(store_url, work)
    assert first == ["evt_0/a", "evt_1/a"]  # the earliest due first
    assert (none, zero) == ([], [])
    assert sorted(rest) == ["evt_2/a", "evt_3/a", "evt_4/a"]


def test_an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[Any], list[Any], bool, list[Any], bool, bool, list[Any]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        early = await store.claim(owner="w2", handlers=["a"], now=t + 29, lease=30, limit=10)
        taken = await store.claim(owner="w2", handlers=["a"], now=t + 31, lease=30, limit=10)
        stale = await finish(store, "evt_1", "a", "succeeded", owner="w1", at=t + 32)
        after_stale = await store.get_runs("evt_1")
        stale_renew = await store.renew(owner="w1", until=t + 500) == 0
        done = await finish(store, "evt_1", "a", "succeeded", owner="w2", at=t + 33)
        return early, taken, stale, after_stale, stale_renew, done, await store.get_runs("evt_1")

    early, taken, stale, after_stale, stale_renew, done, final = run(store_url, work)
    assert early == []
    assert [(r.status, r.attempts, r.lease_owner, r.lease_until, r.started_at) for r in taken] == [
        ("running", 2, "w2", moment(t + 61), moment(t + 31))
    ]
    assert (stale, stale_renew) == (False, True)
    assert after_stale == taken  # the old owner's finish changed nothing
    assert done is True
    r = final[0]
    assert (r.status, r.attempts, r.lease_owner, r.lease_until, r.finished_at, r.duration_ms, r.last_error) == (
        "succeeded",
        2,
        None,
        None,
        moment(t + 33),
        1.5,
        None,
    )


def test_finish_records_the_error_and_can_correct_the_attempts(store_url: str) -> None:
    """A takeover that gives up before trying records the tries really made (`attempts=`)."""
    t = now()

    async def work(store: Store) -> list[tuple[str, str, int, str | None, str | None, float | None]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b"]))
        await store.claim(owner="w1", handlers=["a", "b"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "failed", at=t + 1, next_attempt_at=t + 9)
        assert await finish(store, "evt_1", "b", "failed", at=t + 1, next_attempt_at=t + 9, attempts=0)
        return [
            (r.handler, r.status, r.attempts, r.last_error, r.next_attempt_at, r.duration_ms)
            for r in await store.get_runs("evt_1")
        ]

    assert run(store_url, work) == [
        ("a", "failed", 1, "a failed", moment(t + 9), 1.5),
        ("b", "failed", 0, "b failed", moment(t + 9), 1.5),
    ]


def test_renew_extends_only_the_owners_running_runs(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[int, int, int, list[tuple[str, str, str | None, str | None]]]:
        for n in range(3):
            await store.ingest(incoming(f"evt_{n}", at=t, handlers=["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=2)  # evt_0, evt_1
        await store.claim(owner="w2", handlers=["a"], now=t, lease=30, limit=1)  # evt_2
        assert await finish(store, "evt_1", "a", "failed", owner="w1", at=t + 1, next_attempt_at=t + 90)
        renewed = await store.renew(owner="w1", until=t + 120)
        nobody = await store.renew(owner="w3", until=t + 120)
        again = await store.renew(owner="w1", until=t + 150)
        runs = [r for n in range(3) for r in await store.get_runs(f"evt_{n}")]
        return renewed, nobody, again, [(r.event_id, r.status, r.lease_owner, r.lease_until) for r in runs]

    renewed, nobody, again, runs = run(store_url, work)
    assert (renewed, nobody, again) == (1, 0, 1)
    assert runs == [
        ("evt_0", "running", "w1", moment(t + 150)),
        ("evt_1", "failed", None, None),
        ("evt_2", "running", "w2", moment(t + 30)),
    ]


def test_release_returns_the_owners_runs_to_pending(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[int, int, list[Any], list[str]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        await store.claim(owner="w2", handlers=["b"], now=t, lease=30, limit=10)
        released = await store.release(owner="w1")
        nothing = await store.release(owner="w1")
        runs = await store.get_runs("evt_1")
        again = await store.claim(owner="w3", handlers=["a", "b"], now=now() + 1, lease=30, limit=10)
        return released, nothing, runs, [f"{r.handler}:{r.attempts}" for r in again]

    released, nothing, runs, again = run(store_url, work)
    assert (released, nothing) == (1, 0)
    assert summary(runs) == [("evt_1", "a", "pending", 0, None), ("evt_1", "b", "running", 1, "w2")]
    assert (runs[0].lease_until, isinstance(runs[0].next_attempt_at, datetime)) == (None, True)
    assert again == ["a:1"]  # due at once; w2's unexpired lease is left alone


def test_claim_for_one_event_takes_its_unfinished_runs_including_dead(store_url: str) -> None:
    """Inline mode: every run of the event not yet succeeded, whenever it is due, but not another owner's live lease."""
    t = now()

    async def work(store: Store) -> tuple[list[str], list[Any], list[Any]]:
        handlers = ["dead", "failed", "done", "leased", "pending"]
        await store.ingest(incoming("evt_1", at=t, handlers=handlers))
        await store.ingest(incoming("evt_other", at=t, handlers=handlers))
        await store.claim(owner="w1", handlers=["dead", "failed", "done"], now=t, lease=30, limit=10)
        for event_id in ("evt_1", "evt_other"):
            assert await finish(store, event_id, "dead", "dead", at=t + 1)
            assert await finish(store, event_id, "failed", "failed", at=t + 1, next_attempt_at=t + 3600)
            assert await finish(store, event_id, "done", "succeeded", at=t + 1)
        await store.claim(owner="w2", handlers=["leased"], now=t, lease=300, limit=10)
        inline = await store.claim(owner="inline", handlers=handlers, now=t + 2, lease=30, limit=10, event_id="evt_1")
        runs = await store.get_runs("evt_1")
        return sorted(f"{r.handler}:{r.status}:{r.attempts}" for r in inline), runs, await store.get_runs("evt_other")

    inline, runs, other = run(store_url, work)
    assert inline == ["dead:running:2", "failed:running:2", "pending:running:1"]
    assert [(r.handler, r.status, r.lease_owner) for r in runs] == [
        ("dead", "running", "inline"),
        ("done", "succeeded", None),
        ("failed", "running", "inline"),
        ("leased", "running", "w2"),
        ("pending", "running", "inline"),
    ]
    assert [(r.handler, r.status, r.lease_owner) for r in other] == [
        ("dead", "dead", None),
        ("done", "succeeded", None),
        ("failed", "failed", None),
        ("leased", "running", "w2"),
        ("pending", "pending", None),
    ]


def test_next_due_is_the_earliest_retry_or_lease_expiry(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[str | None]:
        seen = [await store.next_due(["a"])]
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        await store.ingest(incoming("evt_2", at=t + 100, handlers=["a"]))
        seen.append(await store.next_due(["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=1)
        seen.append(await store.next_due(["a"]))
        assert await finish(store, "evt_1", "a", "failed", at=t + 1, next_attempt_at=t + 50)
        seen.append(await store.next_due(["a"]))
        await store.claim(owner="w1", handlers=["a"], now=t + 50, lease=30, limit=1)
        assert await finish(store, "evt_1", "a", "succeeded", at=t + 51)
        seen.append(await store.next_due(["a"]))
        seen.append(await store.next_due(["b"]))
        return seen

    assert run(store_url, work) == [None, moment(t), moment(t + 30), moment(t + 50), moment(t + 100), None]


def test_orphaned_runs_count_unfinished_runs_of_unknown_handlers(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[dict[str, int]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "gone"]))
        await store.ingest(incoming("evt_2", at=t, handlers=["gone", "other"]))
        await store.ingest(incoming("evt_3", at=t, handlers=["gone"]))
        seen = [await store.orphaned_runs(["a"]), await store.orphaned_runs(["a", "gone", "other"])]
        await store.claim(owner="w1", handlers=["gone"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_1", "gone", "dead", at=t + 1)
        assert await finish(store, "evt_2", "gone", "succeeded", at=t + 1)
        seen.append(await store.orphaned_runs(["a"]))  # evt_3's run is running: still unfinished
        return seen

    assert run(store_url, work) == [{"gone": 3, "other": 1}, {}, {"gone": 1, "other": 1}]


def test_requeue_by_ids_handler_and_status(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[list[int], list[tuple[str, str, str, int, str | None]]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a", "b"]))
        await store.ingest(incoming("evt_2", at=t, handlers=["a", "b"]))
        await store.claim(owner="w1", handlers=["a", "b"], now=t, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "failed", at=t + 1, next_attempt_at=t + 3600)
        assert await finish(store, "evt_1", "b", "dead", at=t + 1)
        assert await finish(store, "evt_2", "a", "dead", at=t + 1)
        assert await finish(store, "evt_2", "b", "succeeded", at=t + 1)
        counts = [
            await store.requeue(ids=["evt_1"], status=["dead"]),
            await store.requeue(ids=["evt_missing"]),
            await store.requeue(handler="a"),
            await store.requeue(),
        ]
        runs = await store.get_runs("evt_1") + await store.get_runs("evt_2")
        return counts, summary(runs)

    counts, runs = run(store_url, work)
    assert counts == [1, 0, 2, 0]
    assert runs == [
        ("evt_1", "a", "pending", 1, None),  # a failed run keeps its tries; a dead one starts a fresh cycle
        ("evt_1", "b", "pending", 0, None),
        ("evt_2", "a", "pending", 0, None),
        ("evt_2", "b", "succeeded", 1, None),
    ]


def test_two_stores_claiming_concurrently_never_share_a_run(store_url: str) -> None:
    """Two processes on one database (two stores on one URL), two claims each at a time: each run goes to one."""
    t = now()

    async def work(store: Store) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[tuple[str, str], str]]:
        await asyncio.gather(*(store.ingest(incoming(f"evt_{n}", at=t, handlers=["a", "b"])) for n in range(100)))
        other = open_store(store_url)
        claimed: dict[str, list[tuple[str, str]]] = {"p1": [], "p2": []}
        try:
            # In rounds, so the two stores' claims really overlap (SQLite would otherwise let one loop take all).
            while True:
                rounds = await asyncio.gather(
                    *(
                        claimer.claim(owner=owner, handlers=["a", "b"], now=t + 1, lease=600, limit=7)
                        for claimer, owner in ((store, "p1"), (other, "p2"), (store, "p1"), (other, "p2"))
                    )
                )
                if not any(rounds):
                    break
                for owner, runs in zip(("p1", "p2", "p1", "p2"), rounds, strict=True):
                    claimed[owner].extend((r.event_id, r.handler) for r in runs)
        finally:
            await other.close()
        owners = {}
        for n in range(100):
            for r in await store.get_runs(f"evt_{n}"):
                owners[(r.event_id, r.handler)] = f"{r.status}:{r.lease_owner}"
        return claimed["p1"], claimed["p2"], owners

    mine, theirs, owners = run(store_url, work)
    assert len(mine) + len(theirs) == 200
    assert set(mine) | set(theirs) == set(owners)
    assert not set(mine) & set(theirs)
    assert len(set(mine)) == len(mine) and len(set(theirs)) == len(theirs)
    assert owners == {key: "running:p1" for key in mine} | {key: "running:p2" for key in theirs}


# -- reading ---------------------------------------------------------------------------------

LISTED = [  # (id, type, seconds after t, handlers): seqs 1 to 6
    ("old", "customer.created", -7200, ()),
    ("sub1", "subscription.upgraded", 0, ("h",)),
    ("sub2", "subscription.scheduled_change.created", 1, ()),
    ("pay", "payment_succeeded", 2, ()),  # `_` must not act as a LIKE wildcard
    ("bare", "subscription", 3, ()),
    ("subx", "subscriptionx.created", 4, ()),
]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({}, ["old", "sub1", "sub2", "pay", "bare", "subx"]),
        ({"ids": ["sub2", "old", "missing"]}, ["old", "sub2"]),
        ({"types": ["subscription.upgraded"]}, ["sub1"]),
        ({"types": ["subscription.*"]}, ["sub1", "sub2"]),
        ({"types": ["subscription.scheduled_change.*"]}, ["sub2"]),
        ({"types": ["*"]}, ["old", "sub1", "sub2", "pay", "bare", "subx"]),
        ({"types": ["payment.*", "payment.succeeded", "customer.created"]}, ["old"]),
        ({"types": ["subscription", "pay.*"]}, ["bare"]),
        ({"status": ["pending"]}, ["sub1"]),
        ({"status": ["unhandled", "dead"]}, ["old", "sub2", "pay", "bare", "subx"]),
        ({"since": 0}, ["sub1", "sub2", "pay", "bare", "subx"]),
        ({"until": 1}, ["old", "sub1"]),  # until is exclusive, since inclusive
        ({"since": 1, "until": 3}, ["sub2", "pay"]),
        ({"after_seq": 2}, ["sub2", "pay", "bare", "subx"]),
        ({"max_seq": 3}, ["old", "sub1", "sub2"]),
        ({"after_seq": 2, "max_seq": 4}, ["sub2", "pay"]),
        ({"limit": 2}, ["old", "sub1"]),
        ({"limit": 2, "newest_first": True}, ["subx", "bare"]),
        ({"types": ["subscription.*"], "newest_first": True}, ["sub2", "sub1"]),
        ({"types": ["subscription.*", "customer.*"], "status": ["unhandled"], "since": -7200}, ["old", "sub2"]),
        ({"ids": ["nothing"]}, []),
    ],
)
def test_list_events_filters(store_url: str, selection: dict[str, Any], expected: list[str]) -> None:
    t = now()
    for key in ("since", "until"):
        if key in selection:
            selection = {**selection, key: moment(t + selection[key])}

    async def work(store: Store) -> list[tuple[int, str]]:
        for event_id, type, offset, handlers in LISTED:
            await store.ingest(incoming(event_id, at=t + offset, type=type, handlers=handlers))
        return [(e.seq, e.id) for e in await store.list_events(EventFilter(**selection))]

    seqs = {event_id: n for n, (event_id, *_) in enumerate(LISTED, 1)}
    assert run(store_url, work) == [(seqs[event_id], event_id) for event_id in expected]


def test_iter_events_pages_through_in_seq_order(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[list[int]]:
        empty = [e.seq async for e in store.iter_events(EventFilter(), page=3)]
        for n in range(10):
            await store.ingest(incoming(f"evt_{n}", at=t + n, type="a.odd" if n % 2 else "a.even"))
        every = [e.seq async for e in store.iter_events(EventFilter(), page=3)]
        exact_pages = [e.seq async for e in store.iter_events(EventFilter(), page=5)]
        odd = [e.seq async for e in store.iter_events(EventFilter(types=["a.odd"], limit=4), page=3)]
        after = [e.seq async for e in store.iter_events(EventFilter(after_seq=4, max_seq=9, newest_first=True), page=2)]
        return [empty, every, exact_pages, odd, after]

    assert run(store_url, work) == [
        [],
        list(range(1, 11)),
        list(range(1, 11)),
        [2, 4, 6, 8],
        [5, 6, 7, 8, 9],  # always seq order, whatever newest_first says
    ]


def test_get_event_and_get_runs(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> tuple[Any, ...]:
        await store.ingest(incoming("evt_1", at=t, handlers=["b.second", "a.first"], body=b'{"type": "x"}'))
        return (
            await store.get_event("evt_1"),
            [r.handler for r in await store.get_runs("evt_1")],
            await store.get_event("evt_missing"),
            await store.get_runs("evt_missing"),
        )

    event, handlers, missing, no_runs = run(store_url, work)
    assert (event.seq, event.id, event.body, event.status) == (1, "evt_1", b'{"type": "x"}', "pending")
    assert handlers == ["a.first", "b.second"]
    assert (missing, no_runs) == (None, [])


async def bounds_reaching(store: Store, newest: int) -> tuple[int, int]:
    """seq_bounds() once its newest has reached `newest` (the test then asserts the exact bounds).

    On PostgreSQL the newest seq served waits for every transaction older than the commit, in the whole cluster, to
    end: another process's (another test run's) transaction may hold it back for a while.
    """
    return await wait_until_async(
        store.seq_bounds, until=lambda bounds: bounds[1] >= newest, timeout=SETTLE, what=f"the newest seq {newest}"
    )


def test_seq_bounds_follow_ingest_and_prune(store_url: str) -> None:
    t = now()

    async def work(store: Store) -> list[tuple[int, int]]:
        seen = [await store.seq_bounds()]
        for n in range(3):
            await store.ingest(incoming(f"evt_{n}", at=t + n))
        seen.append(await bounds_reaching(store, 3))
        await store.prune(before=t + 1.5)  # the two oldest
        seen.append(await bounds_reaching(store, 3))
        await store.ingest(incoming("evt_3", at=t + 3))
        seen.append(await bounds_reaching(store, 4))
        return seen

    assert run(store_url, work) == [(1, 0), (1, 3), (3, 3), (3, 4)]


def test_seq_bounds_after_everything_is_pruned(store_url: str) -> None:
    """An empty store that once held seq 3: the newest stays 3, so a cursor of 3 is not 'ahead' of the store."""
    t = now()

    async def work(store: Store) -> list[Any]:
        for n in range(3):
            await store.ingest(incoming(f"evt_{n}", at=t + n))
        before = await bounds_reaching(store, 3)
        counts = await store.prune(before=t + 60)
        after = await store.seq_bounds()  # nothing committed since: no transaction to wait for
        stored = await store.ingest(incoming("evt_after", at=t + 61))
        return [before, counts["events"], after, stored.seq, await bounds_reaching(store, 4)]

    assert run(store_url, work) == [(1, 3), 3, (4, 3), 4, (4, 4)]


# -- writing: prune, rejections, health --------------------------------------------------------


def rejections(url: str) -> list[tuple[int, str, str | None, dict[str, str], int]]:
    rows = table(url, "SELECT id, reason, remote, headers, length(body) FROM rejections ORDER BY id")
    return [
        (i, reason, remote, h if isinstance(h, dict) else json.loads(h), size) for i, reason, remote, h, size in rows
    ]


def test_prune_deletes_old_events_their_runs_and_rejections(store_url: str) -> None:
    t = now()

    async def setup(store: Store) -> None:
        for n in range(3):
            await store.ingest(incoming(f"evt_old{n}", at=t - 7200 + n, handlers=["a", "b"]))
        await store.ingest(incoming("evt_new", at=t, handlers=["a"]))
        for reason in ("invalid_signature", "bad_timestamp"):
            store.reject(reason=reason, remote="127.0.0.1", headers={}, body=b"")

    async def prune(store: Store) -> tuple[list[dict[str, int]], list[str], int]:
        await bounds_reaching(store, 4)  # PostgreSQL prunes only rows no older transaction could still precede
        counts = [await store.prune(before=t - 3600)]
        left = [e.id for e in await store.list_events(EventFilter())]
        runs = len(await store.get_runs("evt_new"))
        counts.append(await store.prune(before=now() + 60))
        counts.append(await store.prune(before=now() + 60))
        return counts, left, runs

    run(store_url, setup)  # close() waits for the rejections (fire-and-forget on PostgreSQL)
    assert len(rejections(store_url)) == 2
    counts, left, runs = run(store_url, prune)
    assert counts == [
        {"events": 3, "handler_runs": 6, "rejections": 0},
        {"events": 1, "handler_runs": 1, "rejections": 2},
        {"events": 0, "handler_runs": 0, "rejections": 0},
    ]
    assert (left, runs) == (["evt_new"], 1)
    assert table(store_url, "SELECT count(*) FROM handler_runs") == [(0,)]


def test_rejections_are_redacted_truncated_and_bounded(store_url: str) -> None:
    headers = {"Authorization": "Bearer s3cret", "Cookie": "c", "Proxy-Authorization": "p", "Content-Type": "text/x"}

    async def one(store: Store) -> None:
        store.reject(reason="unsupported_media_type", remote="10.0.0.1", headers=headers, body=b"x" * 5000)

    async def fifty(store: Store) -> None:
        # Fifty at a time: PostgreSQL writes rejections in the background and drops them beyond a flood's worth.
        for _ in range(50):
            store.reject(reason="invalid_signature", remote=None, headers={}, body=b"{}")

    async def one_more(store: Store) -> None:
        store.reject(reason="bad_timestamp", remote="127.0.0.1", headers={}, body=b"")

    run(store_url, one)
    assert rejections(store_url) == [
        (
            1,
            "unsupported_media_type",
            "10.0.0.1",
            {
                "authorization": "[redacted]",
                "cookie": "[redacted]",
                "proxy-authorization": "[redacted]",
                "content-type": "text/x",
            },
            4096,
        )
    ]
    for _ in range(20):
        run(store_url, fifty)  # ids 2 to 1001: the newest 1000 are kept
    assert table(store_url, "SELECT count(*), min(id), max(id) FROM rejections") == [(1000, 2, 1001)]
    run(store_url, one_more)  # alone, after the others committed: keeps exactly the newest 1000
    assert table(store_url, "SELECT count(*), min(id), max(id) FROM rejections") == [(1000, 3, 1002)]
    assert rejections(store_url)[-1] == (1002, "bad_timestamp", "127.0.0.1", {}, 0)


def test_check_writable(store_url: str) -> None:
    assert run(store_url, lambda store: store.check_writable()) is True


# -- times --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1795631216.503667, 1795631216.0, 1795631216.9999996, 1_000_000_000.000001, 1.25e9])
def test_every_time_is_an_aware_utc_datetime_to_the_microsecond_and_the_instant_given(store_url: str, t: float) -> None:
    lease, finished, retry = 30.000001, t + 2.5, t + 7.25

    async def work(store: Store) -> dict[str, Any]:
        await store.ingest(incoming("evt_1", at=t, handlers=["h"]))
        event = await store.get_event("evt_1")
        assert event is not None
        seen: dict[str, Any] = {"received_at": event.received_at, "due": (await store.get_runs("evt_1"))[0]}
        seen["next_due"] = await store.next_due(["h"])
        seen["claimed"] = (await store.claim(owner="w1", handlers=["h"], now=t, lease=lease, limit=1))[0]
        seen["lease_due"] = await store.next_due(["h"])
        assert await finish(store, "evt_1", "h", "failed", at=finished, next_attempt_at=retry)
        seen["finished"] = (await store.get_runs("evt_1"))[0]
        seen["retry_due"] = await store.next_due(["h"])
        seen["since_exact"] = len(await store.list_events(EventFilter(since=moment(t))))
        seen["since_after"] = len(await store.list_events(EventFilter(since=_utc(t, plus_micros=1))))
        seen["until_exact"] = len(await store.list_events(EventFilter(until=moment(t))))
        return seen

    seen = run(store_url, work)
    claimed, done = seen["claimed"], seen["finished"]
    returned = {
        "received_at": seen["received_at"],
        "next_attempt_at": seen["due"].next_attempt_at,
        "next_due": seen["next_due"],
        "started_at": claimed.started_at,
        "lease_until": claimed.lease_until,
        "lease_due": seen["lease_due"],
        "finished_at": done.finished_at,
        "retry": done.next_attempt_at,
        "retry_due": seen["retry_due"],
        "started_at, kept": done.started_at,
    }
    assert all(isinstance(v, datetime) and v.utcoffset() == timedelta(0) for v in returned.values()), returned
    assert returned == {
        "received_at": _utc(t),
        "next_attempt_at": _utc(t),
        "next_due": _utc(t),
        "started_at": _utc(t),
        "lease_until": _utc(t + lease),
        "lease_due": _utc(t + lease),
        "finished_at": _utc(finished),
        "retry": _utc(retry),
        "retry_due": _utc(retry),
        "started_at, kept": _utc(t),
    }
    assert (seen["since_exact"], seen["since_after"], seen["until_exact"]) == (1, 0, 0)


def _utc(t: float, *, plus_micros: int = 0) -> datetime:
    """`t` to the microsecond, as datetime rounds it."""
    return datetime.fromtimestamp(t, UTC) + timedelta(microseconds=plus_micros)


# -- crash takeover, read-only stores, free space -----------------------------------------------


def test_a_takeover_notes_in_last_error_that_the_process_died(store_url: str) -> None:
    """Only a claim that takes a `running` run over (its process died) leaves the note; a fresh claim does not."""
    t = now()

    async def work(store: Store) -> list[tuple[str, int, str | None, bool]]:
        await store.ingest(incoming("evt_1", at=t, handlers=["a"]))
        [first] = await store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10)
        [taken] = await store.claim(owner="w2", handlers=["a"], now=t + 31, lease=30, limit=10)
        [again] = await store.claim(owner="w3", handlers=["a"], now=t + 62, lease=30, limit=10)
        assert await finish(store, "evt_1", "a", "failed", owner="w3", at=t + 63, next_attempt_at=t + 64)
        [retried] = await store.claim(owner="w4", handlers=["a"], now=t + 65, lease=30, limit=10)
        return [(r.lease_owner or "", r.attempts, r.last_error, is_takeover(r)) for r in (first, taken, again, retried)]

    assert run(store_url, work) == [
        ("w1", 1, None, False),
        ("w2", 2, "The receiver's process died while this handler ran (try 1, process w1).", True),
        ("w3", 3, "The receiver's process died while this handler ran (try 2, process w2).", True),
        ("w4", 4, "a failed", False),  # a failed try's error stays until the next outcome replaces it
    ]


def test_a_read_only_store_needs_an_existing_store_and_never_writes(store_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^No event store (at|in the database at) .*: .*--db"):
        open_store(store_url, readonly=True)
    t = now()
    run(store_url, lambda store: store.ingest(incoming("evt_1", at=t, handlers=["a"])))

    async def work(store: Store) -> tuple[list[str], list[str]]:
        listed = [event.id for event in await store.list_events(EventFilter())]
        refused = []
        for write in (
            lambda: store.ingest(incoming("evt_2", at=t)),
            lambda: store.claim(owner="w1", handlers=["a"], now=t, lease=30, limit=10),
            lambda: store.requeue(ids=["evt_1"], status=["pending"]),
            lambda: store.prune(before=t + 1),
        ):
            with pytest.raises(StoreUnavailable) as raised:
                await write()
            refused.append(type(raised.value).__name__)
        return listed, refused

    async def main() -> tuple[list[str], list[str]]:
        store = open_store(store_url, readonly=True)
        try:
            return await work(store)
        finally:
            await store.close()

    assert asyncio.run(main()) == (["evt_1"], ["StoreUnavailable"] * 4)
    assert table(store_url, "SELECT id, status FROM events") == [("evt_1", "pending")]
    assert table(store_url, "SELECT handler, status, attempts FROM handler_runs") == [("a", "pending", 0)]


def test_free_space_is_the_sqlite_disks_and_unknown_for_postgres(store_url: str) -> None:
    async def work(store: Store) -> int | None:
        return store.free_space()

    free = run(store_url, work)
    if is_postgres_url(store_url):
        assert free is None
    else:
        disk = os.statvfs(Path(store_url).parent)
        assert isinstance(free, int) and free > 0
        assert abs(free - disk.f_bavail * disk.f_frsize) < 64 * 1024 * 1024  # the same disk, give or take writes


TYPED = [
    ("e1", "sub.created"),
    ("e2", "invoice.paid"),
    ("e3", "sub.plan_changed"),
    ("e4", "sub.x.y"),
    ("e5", "sub"),
    ("e6", "subx.created"),
    ("e7", "sub.created"),
    ("e8", "sub/other"),
    ("e9", "sub.plan%changed"),
]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (EventFilter(types=["sub.*"]), ["e1", "e3", "e4", "e7", "e9"]),
        (EventFilter(types=["sub.*"], newest_first=True, limit=3), ["e9", "e7", "e4"]),
        (EventFilter(types=["sub.*"], after_seq=3, limit=2), ["e4", "e7"]),
        (EventFilter(types=["sub.*", "invoice.paid"], newest_first=True, limit=4), ["e9", "e7", "e4", "e3"]),
        (EventFilter(types=["sub.created", "invoice.paid"], newest_first=True, limit=2), ["e7", "e2"]),
        (EventFilter(types=["sub.x.*", "subx.*"], status=["unhandled"], limit=5), ["e4", "e6"]),
        (EventFilter(types=["nope.*"], newest_first=True, limit=5), []),
        (EventFilter(types=["sub.plan%changed"]), ["e9"]),
    ],
)
def test_type_filters_by_range_and_merge_keep_seq_order(
    store_url: str, selection: EventFilter, expected: list[str]
) -> None:
    """Prefixes are index ranges (`_` and `%` are plain characters), several types merge in seq order."""

    async def work(store: Store) -> list[str]:
        for event_id, event_type in TYPED:
            await store.ingest(incoming(event_id, at=now(), type=event_type))
        return [event.id for event in await store.list_events(selection)]

    assert run(store_url, work) == expected
