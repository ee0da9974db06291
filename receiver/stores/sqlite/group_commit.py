"""Group commit: many writes, one transaction and one fsync.

Requests that arrive while a COMMIT is in flight wait in memory; when it returns, they
form the next batch. The batch's statements run on the event loop (they only touch
SQLite's page cache and take microseconds); only the COMMIT, where the fsync happens,
runs in a thread, with the few operations whose work is larger than microseconds (a prune
batch, refreshing statistics: `run(op, off_loop=True)`). A batch that fails anywhere is
rolled back whole, and every caller in it gets `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ...errors import StoreUnavailable

__all__ = ["BUSY_TIMEOUT_MS", "GroupCommit", "Op"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], T]

log = logging.getLogger("montra.store")

# With several processes on one file (gunicorn workers) another may hold the write lock;
# the loop must not sleep in SQLite's busy handler, so a busy BEGIN is retried in the thread.
BUSY_TIMEOUT_MS = 10_000
BUSY_POLL_MIN = 0.0001
BUSY_POLL_MAX = 0.002
"""Seconds between tries of a busy BEGIN (doubling from the first to the second)."""


class GroupCommit:
    """Runs write operations against `conn` in batches, each batch committed (and fsynced) once."""

    def __init__(self, conn: sqlite3.Connection, *, before_commit: Callable[[], None] | None = None) -> None:
        self._conn = conn
        # Called in the commit thread before each COMMIT (the store checks its file is still its own there):
        # raising rolls the batch back, and every caller in it gets StoreUnavailable.
        self._before_commit = before_commit
        self._pending: list[tuple[Op[Any], asyncio.Future[Any] | None, bool]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="montra-commit")
        self._closed = False
        self.observe: Callable[[int], None] | None = None
        """Called with each committed batch's size (`Store.observe_batches`)."""

    async def run(self, op: Op[T], *, off_loop: bool = False) -> T:
        """Run `op(conn)` in the next batch; return its result once the batch is durably committed.

        `off_loop=True` runs it in the writer's thread: for work that is not bounded to microseconds.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(op, future, off_loop)
        return await future

    def submit(self, op: Op[Any]) -> None:
        """Run `op` in the next batch without waiting for it (a failure is logged, not raised)."""
        self._enqueue(op, None, False)

    def _enqueue(self, op: Op[Any], future: asyncio.Future[Any] | None, off_loop: bool) -> None:
        if self._closed:
            raise StoreUnavailable("The store is closed: the receiver is shutting down.")
        self._pending.append((op, future, off_loop))
        loop = asyncio.get_running_loop()
        # A store outlives an event loop in tests (one TestClient after another): start afresh on a new one.
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._drain(), name="montra-group-commit")
        assert self._wakeup is not None
        self._wakeup.set()

    async def _drain(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)
            if self._closed:
                return

    async def _commit(self, batch: list[tuple[Op[Any], asyncio.Future[Any] | None, bool]]) -> None:
        conn = self._conn
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                await asyncio.get_running_loop().run_in_executor(self._thread, self._begin_waiting)
            loop = asyncio.get_running_loop()
            results = [
                await loop.run_in_executor(self._thread, op, conn) if off_loop else op(conn)
                for op, _, off_loop in batch
            ]
            await loop.run_in_executor(self._thread, self._commit_now)
        except Exception as e:  # every caller in the batch is told, then the writer goes on
            self._rollback()
            log.error("store write failed, batch of %d rolled back: %s", len(batch), e)
            for _, future, _ in batch:
                if future is not None and not future.done():
                    error = StoreUnavailable(f"The event store could not write: {e}.")
                    error.__cause__ = e
                    future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(len(batch))
        for (_, future, _), result in zip(batch, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    def _commit_now(self) -> None:
        if self._before_commit is not None:
            self._before_commit()
        self._conn.execute("COMMIT")

    def _begin_waiting(self) -> None:
        # Polled here rather than by SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25... ms
        # between tries: with two workers on one file each hand-off of the lock cost the waiter
        # milliseconds after the other had committed. Short sleeps, growing to BUSY_POLL_MAX.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = BUSY_POLL_MIN
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                busy = "locked" in str(e) or "busy" in str(e)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, BUSY_POLL_MAX)

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.error("rollback failed: %s", e)

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        self._closed = True
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
        self._thread.shutdown(wait=True)
