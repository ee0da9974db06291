"""Pruning in batches: `prune(limit=)`, `count_prunable`, the background `Retention` and `create_app(retain=)`."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from starlette.testclient import TestClient
from support.db import query

from receiver import create_app
from receiver.retention import Retention
from receiver.stores.open import open_store
from receiver.stores.protocol import EventFilter, Incoming, Store

DAY = 86400.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def fill(store: Store, *, old: int, new: int) -> None:
    """`old` events received two days ago (one run each), then `new` received now (no runs)."""
    now = time.time()
    for n in range(old + new):
        at, handlers = (now - 2 * DAY, ["h.audit"]) if n < old else (now, [])
        await store.ingest(Incoming(f"evt_{n:04d}", "invoice.paid", None, at, {}, b"{}", handlers))


def test_prune_with_a_limit_takes_the_oldest_first(store_url: str) -> None:
    async def work() -> tuple[dict[str, int], dict[str, int], dict[str, int], list[str]]:
        store = open_store(store_url)
        try:
            await fill(store, old=7, new=2)
            cutoff = time.time() - DAY
            counted = await store.count_prunable(before=cutoff)
            first = await store.prune(before=cutoff, limit=5)
            rest = await store.prune(before=cutoff, limit=5)
            left = [event.id async for event in store.iter_events(EventFilter())]
            return counted, first, rest, left
        finally:
            await store.close()

    counted, first, rest, left = asyncio.run(work())
    assert counted == {"events": 7, "handler_runs": 7, "rejections": 0}
    assert first == {"events": 5, "handler_runs": 5, "rejections": 0}
    assert rest == {"events": 2, "handler_runs": 2, "rejections": 0}
    assert left == ["evt_0007", "evt_0008"]


def test_retention_prunes_a_pass_in_batches(store_url: str) -> None:
    async def work() -> tuple[dict[str, int], dict[str, int], int]:
        store = open_store(store_url)
        try:
            await fill(store, old=23, new=3)
            retention = Retention(store, keep=DAY, batch=5, pause=0)
            first, second = await retention.prune_once(), await retention.prune_once()
            return first, second, len([event async for event in store.iter_events(EventFilter())])
        finally:
            await store.close()

    first, second, left = asyncio.run(work())
    assert first == {"events": 23, "handler_runs": 23, "rejections": 0}
    assert second == {"events": 0, "handler_runs": 0, "rejections": 0}
    assert left == 3


def test_create_app_retain_prunes_in_the_background(tmp_path: Path) -> None:
    db = tmp_path / "events.db"

    async def prepare() -> None:
        store = open_store(db)
        await fill(store, old=12, new=1)
        await store.close()

    asyncio.run(prepare())
    app = create_app(db=db, secrets=[SECRET], retain=timedelta(days=1))
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while query(db, "SELECT count(*) FROM events") != [(1,)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
    assert query(db, "SELECT id FROM events") == [("evt_0012",)]
    assert query(db, "SELECT count(*) FROM handler_runs") == [(0,)]
