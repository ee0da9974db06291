"""Group commit for ingest on PostgreSQL: events that arrive while a batch commits wait, then go in together.

One statement and one commit per batch instead of per event. A batch the server refuses (a value it
cannot store) is split, so one bad event fails alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg

from ...errors import StoreUnavailable
from ..protocol import Incoming, IngestResult

__all__ = ["Batches"]

log = logging.getLogger("montra.store")


class Batches:
    """Group commit for ingest: events that arrive while a batch commits wait, then go in together."""

    def __init__(
        self, commit: Callable[[Sequence[Incoming]], Awaitable[list[IngestResult]]], *, on_committed: Callable[[], None]
    ) -> None:
        self._commit_batch = commit
        self._on_committed = on_committed
        self._pending: list[tuple[Incoming, asyncio.Future[IngestResult]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.observe: Callable[[int], None] | None = None
        """Called with each committed batch's size (`Store.observe_batches`)."""

    async def ingest(self, incoming: Incoming) -> IngestResult:
        if self._closed:
            raise StoreUnavailable("The store is closed: the receiver is shutting down.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        self._pending.append((incoming, future))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name="montra-ingest-batches")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Incoming, asyncio.Future[IngestResult]]]) -> None:
        try:
            results = await self._commit_batch([item for item, _ in batch])
        except Exception as e:
            if len(batch) > 1 and _refused(e):
                # The server refused the data (say, a NUL in a text field): one event must not fail its
                # neighbours, so each goes alone and only the bad one fails.
                for one in batch:
                    await self._commit([one])
                return
            log.error("store write failed, batch of %d rolled back: %s", len(batch), e)
            error = e if isinstance(e, StoreUnavailable) else StoreUnavailable(f"The event store failed: {e}.")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
        self._on_committed()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None and self._task.get_loop() is asyncio.get_running_loop():
            await self._task


def _refused(error: BaseException) -> bool:
    """The server answered and refused this data, as opposed to being unreachable, busy or deadlocked."""
    cause = error.__cause__ if isinstance(error, StoreUnavailable) else error
    return isinstance(cause, psycopg.DatabaseError) and not isinstance(cause, psycopg.OperationalError)
