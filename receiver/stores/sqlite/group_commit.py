"""Group commit: many writes, one transaction and one fsync.

Requests that arrive while a COMMIT is in flight wait in memory; when it returns, they
form the next batch. The batch's statements run on the event loop (they only touch
SQLite's page cache and take microseconds); only the COMMIT, where the fsync happens,
runs in a thread. A batch that fails anywhere is rolled back whole, and every caller in
it gets `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
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


class GroupCommit:
    """Runs write operations against `conn` in batches, each batch committed (and fsynced) once."""

    def __init__(self, conn: sqlite3.Connection, *, before_commit: Callable[[], None] | None = None) -> None:
        self._conn = conn
        # Called in the commit thread before each COMMIT (the store checks its file is still its own there):
        # raising rolls the batch back, and every caller in it gets StoreUnavailable.
        self._before_commit = before_commit
        self._pending: list[tuple[Op[Any], asyncio.Future[Any] | None]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="montra-commit")
        self._closed = False

    async def run(self, op: Op[T]) -> T:
        """Run `op(conn)` in the next batch; return its result once the batch is durably committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(op, future)
        return await future

    def submit(self, op: Op[Any]) -> None:
        """Run `op` in the next batch without waiting for it (a failure is logged, not raised)."""
        self._enqueue(op, None)

    def _enqueue(self, op: Op[Any], future: asyncio.Future[Any] | None) -> None:
        if self._closed:
            raise StoreUnavailable("The store is closed: the receiver is shutting down.")
        self._pending.append((op, future))
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

    async def _commit(self, batch: list[tuple[Op[Any], asyncio.Future[Any] | None]]) -> None:
        conn = self._conn
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                await asyncio.get_running_loop().run_in_executor(self._thread, self._begin_waiting)
            results = [op(conn) for op, _ in batch]
            await asyncio.get_running_loop().run_in_executor(self._thread, self._commit_now)
        except Exception as e:  # every caller in the batch is told, then the writer goes on
            self._rollback()
            log.error("store write failed, batch of %d rolled back: %s", len(batch), e)
            for _, future in batch:
                if future is not None and not future.done():
                    error = StoreUnavailable(f"The event store could not write: {e}.")
                    error.__cause__ = e
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    def _commit_now(self) -> None:
        if self._before_commit is not None:
            self._before_commit()
        self._conn.execute("COMMIT")

    def _begin_waiting(self) -> None:
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

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
