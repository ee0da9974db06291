"""The shared store: several receiver instances on one PostgreSQL database (psycopg 3, a connection pool).

Same semantics as SQLite: an event is acknowledged only after its transaction commits; duplicates
are refused by the unique `events.id`, not by a read; runs are claimed with a lease and only the
lease holder records an outcome. Claims take rows with `FOR UPDATE SKIP LOCKED`, so instances
never wait on each other's runs.

The stream's cursor is `seq`. With concurrent writers, seqs can become visible out of order (seq 11
committed while seq 10's transaction still runs) and a rolled-back batch leaves seqs that never
appear. So a batch first marks itself in flight (`montra_begin_batch()`: a transaction-scoped advisory
lock keyed by the newest seq handed out before any of its own), and a reader serves only seqs up to
the horizon (`montra_stream_horizon()`): the newest seq handed out, or the oldest in-flight mark. No
seq at or below it can still appear, holes below it are final, and only our own batches, which take
milliseconds, hold it back: writers never wait for each other, and other transactions on the server
never hold up the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg_pool

from ...errors import ConfigurationError, StoreUnavailable
from ...event import AttemptOutcome, RunStatus
from ..open import redact_url
from ..protocol import (
    ATTEMPT_COLUMNS,
    ATTEMPT_OUTCOME,
    COMMON_HANDLER_RUNS,
    COMMON_REF_ROWS,
    HOLD_RECHECK,
    MAX_REJECTIONS,
    REJECTED_BODY_BYTES,
    REJECTION_COLUMNS,
    Attempt,
    Backlog,
    EventFilter,
    Incoming,
    IngestResult,
    Rejection,
    Run,
    StoredEvent,
    Waiting,
    backlog_from,
    count_events_sql,
    distinct_types_sql,
    handler_runs_sql,
    iter_pages,
    next_ref_kind_sql,
    redacted_json,
    ref_rows_sql,
    select_events_sql,
    stored_types_sql,
    type_ranges,
    with_exact_types,
)
from .batches import Batches
from .schema import check_schema, migrate
from .sql import (
    CLAIM_ORDERED,
    EVENT_COLUMNS,
    FINISH,
    INGEST,
    PRUNE,
    RELEASE,
    RELEASE_LOCK,
    RUN_COLUMNS,
    candidates_sql,
    claim_sql,
)

__all__ = ["POOL_SIZE", "PRUNE_BATCH", "PostgresStore"]

log = logging.getLogger("montra.store")

POOL_SIZE = 10
"""Connections each instance keeps at most."""
PRUNE_BATCH = 500
"""Events one prune transaction deletes at most: the rows it locks are few and briefly held."""
POOL_TIMEOUT = 10.0
"""Seconds a request waits for a connection before it is answered 503."""
HORIZON_WAIT = 0.2
"""Seconds `seq_bounds` waits for batches in flight below already committed rows to commit."""
MAX_PENDING_REJECTIONS = 100
"""Rejections being written at once; more are answered but not recorded."""

_HELD_SLACK = 32
"""Held runs an ordered claim passes over (and parks) at most, looking for free ones: a bound on one claim's work."""
_RUN_ORDER = (
    "SELECT handler, order_key, order_at, order_seq, hold_on_dead FROM handler_runs "
    "WHERE event_id = %s AND handler = %s"
)
_EARLIER_UNFINISHED = (
    "SELECT event_id, status, attempts, next_attempt_at FROM handler_runs WHERE handler = %s AND order_key = %s "
    "AND status = ANY (%s) AND (order_at, order_seq) < (%s, %s) ORDER BY order_at, order_seq LIMIT 1"
)
_RUNNING_NOW = (
    "SELECT event_id, status, attempts, next_attempt_at FROM handler_runs WHERE handler = %s AND order_key = %s "
    "AND status = 'running' AND lease_until >= %s AND event_id <> %s LIMIT 1"
)

_CHANNEL = "montra_events"
"""What instances LISTEN on: a batch was committed (no payload; readers read the store)."""


# One scalar subquery per part, each with its own index condition: a count per status is an index-only range
# of handler_runs_backlog; each min() is the first entry of a partial index (waiting runs, leased runs).
_BACKLOG = (
    "SELECT (SELECT count(*) FROM handler_runs WHERE status = 'pending'), "
    "(SELECT count(*) FROM handler_runs WHERE status = 'running'), "
    "(SELECT count(*) FROM handler_runs WHERE status = 'failed'), "
    "(SELECT count(*) FROM handler_runs WHERE status = 'dead'), "
    "(SELECT min(next_attempt_at) FROM handler_runs WHERE status IN ('pending', 'failed')), "
    "(SELECT min(lease_until) FROM handler_runs WHERE status = 'running')"
)


class PostgresStore:
    """The `Store` on a PostgreSQL database. The schema is created or migrated when it is made."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, readonly: bool = False) -> None:
        """`readonly=True`: an existing store, read only (ConfigurationError when there is none); nothing migrates."""
        self.path = redact_url(url)
        self.readonly = readonly
        self._url = url
        self._pool_size = pool_size
        try:
            with psycopg.connect(url, connect_timeout=10) as conn:
                if readonly:
                    check_schema(conn, name=self.path)
                else:
                    migrate(conn)
        except psycopg.Error as e:
            reason = " ".join(str(e).split()).rstrip(".")  # libpq's message spans lines, with tabs
            raise ConfigurationError(f"Cannot open the event store at {self.path}: {reason}. Check --db.") from e
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._batches = Batches(self._ingest_batch, on_committed=self._announce)
        self._rejecting: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._announcing = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.path!r})"

    # -- writing ---------------------------------------------------------------------------

    async def ingest(self, incoming: Incoming) -> IngestResult:
        return await self._batches.ingest(incoming)

    async def _ingest_batch(self, batch: Sequence[Incoming]) -> list[IngestResult]:
        received = [_time(item.received_at) for item in batch]
        # Runs of an id's first delivery in the batch only: a later one is a duplicate of it.
        firsts = {item.id: (item, at) for item, at in reversed(list(zip(batch, received, strict=True)))}
        params = {
            "ids": [item.id for item in batch],
            "types": [item.type for item in batch],
            "occurred": [item.occurred_at for item in batch],
            "received": received,
            "headers": [redacted_json(item.headers) for item in batch],
            "bodies": [item.body for item in batch],
            "statuses": ["pending" if item.handlers else "unhandled" for item in batch],
            "run_ids": [item.id for item, _ in firsts.values() for _ in item.handlers],
            "run_handlers": [name for item, _ in firsts.values() for name in item.handlers],
            "run_due": [at for item, at in firsts.values() for _ in item.handlers],
            # Ordered runs carry their resource, their event's time (the envelope's, else received_at) and
            # hold_on_dead; the others NULL, NULL, false.
            "run_keys": [_order_key(item, name) for item, _ in firsts.values() for name in item.handlers],
            "run_order_at": [_order_at(item, at, name) for item, at in firsts.values() for name in item.handlers],
            "run_holds": [_order_hold(item, name) for item, _ in firsts.values() for name in item.handlers],
            "ref_ids": [item.id for item, _ in firsts.values() for _ in item.refs],
            "ref_kinds": [kind for item, _ in firsts.values() for kind, _ in item.refs],
            "ref_values": [ref for item, _ in firsts.values() for _, ref in item.refs],
            "now": _time(time.time()),
        }
        async with self._connection() as conn:  # autocommit: the statement commits before it answers
            rows = await (await conn.execute(INGEST, params)).fetchall()
        stored = {event_id: seq for event_id, seq in rows if seq is not None}
        requeued: dict[str, int] = {}
        for event_id, seq in rows:
            if seq is None:
                requeued[event_id] = requeued.get(event_id, 0) + 1
        results: list[IngestResult] = []
        for item in batch:
            seq = stored.pop(item.id, None)  # the first of an id in the batch is the one stored
            if seq is not None:
                results.append(IngestResult("stored", seq=seq))
            else:
                results.append(IngestResult("duplicate", requeued=requeued.pop(item.id, 0)))
        return results

    def reject(
        self,
        *,
        reason: str,
        remote: str | None,
        headers: Mapping[str, str],
        body: bytes,
        message: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        if len(self._rejecting) >= MAX_PENDING_REJECTIONS:
            return  # a flood of bad requests: their answers matter, not a row for each
        row = (
            _time(time.time()),
            reason,
            remote,
            redacted_json(headers),
            body[:REJECTED_BODY_BYTES],
            message,
            None if detail is None else json.dumps(dict(detail)),
        )
        task = asyncio.get_running_loop().create_task(self._reject(row))
        self._rejecting.add(task)
        task.add_done_callback(self._rejecting.discard)

    async def _reject(self, row: tuple[Any, ...]) -> None:
        sql = (
            "INSERT INTO rejections (received_at, reason, remote, headers, body, message, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        prune = "DELETE FROM rejections WHERE id <= currval(pg_get_serial_sequence('rejections', 'id')) - %s"
        try:
            async with self._connection() as conn, conn.transaction():
                await conn.execute(sql, row)
                await conn.execute(prune, (MAX_REJECTIONS,))
        except (psycopg.Error, StoreUnavailable) as e:
            log.error("could not record a rejected request: %s", e)

    async def check_writable(self) -> bool:
        """Write and commit for real: only a write proves the database takes writes."""
        try:
            await self._execute("UPDATE montra_schema SET version = version", {})
        except StoreUnavailable:
            return False
        return True

    def free_space(self) -> int | None:
        """The database server's disk is not ours to see: the write in `check_writable` is the probe."""
        return None

    async def claim(
        self,
        *,
        owner: str,
        handlers: Sequence[str],
        now: float,
        lease: float,
        limit: int,
        event_id: str | None = None,
        ordered: bool = False,
    ) -> list[Run]:
        """Take up to `limit` due runs; with `event_id`, every unfinished run of it. Locked rows are skipped."""
        if not handlers or limit <= 0:
            return []
        if ordered:
            return await self._claim_ordered(owner, handlers, now, lease, limit, event_id)
        params = {
            "owner": owner,
            "handlers": list(handlers),
            "now": _time(now),
            "until": _time(now + lease),
            "limit": limit,
            "event_id": event_id,
        }
        return [_run(row) for row in await self._fetch(claim_sql(event=event_id is not None), params)]

    async def _claim_ordered(
        self, owner: str, handlers: Sequence[str], now: float, lease: float, limit: int, event_id: str | None
    ) -> list[Run]:
        """Two statements in one transaction, so that instances never run one resource's runs at once.

        The first row-locks the candidates and takes a transaction-scoped advisory lock per (handler,
        resource), skipping resources another claim holds; the second judges them in a snapshot taken
        after those locks were granted, so it sees whatever the claim that held one before committed. A
        single statement could not: its snapshot predates the locks it waits for. (`FOR UPDATE SKIP LOCKED`
        alone locks the candidate rows, not the earlier runs the probe reads, nor a late event's new row.)
        """
        select = candidates_sql(event=event_id is not None).encode()
        taken: list[Run] = []
        passed = 0
        async with self._connection() as conn, conn.transaction():
            # As many due runs as are wanted; the held ones among them are parked (off the due range) and as many
            # more read, until enough are free or _HELD_SLACK held ones were passed over. An inline claim (one
            # event) parks nothing and reads once: the sender's retry asks again.
            while len(taken) < limit:
                need = limit - len(taken)
                first = {"handlers": list(handlers), "now": _time(now), "scan": need, "event_id": event_id}
                candidates = await (await conn.execute(select, first)).fetchall()
                if not candidates:
                    break
                second = {
                    "ids": [event for event, _ in candidates],
                    "names": [name for _, name in candidates],
                    "now": _time(now),
                    "limit": need,
                    "park": event_id is None,
                    "recheck": _time(now + HOLD_RECHECK),
                    "owner": owner,
                    "until": _time(now + lease),
                }
                rows = await (await conn.execute(CLAIM_ORDERED.encode(), second)).fetchall()
                taken.extend(dataclasses.replace(_run(row[:-1]), superseded=bool(row[-1])) for row in rows)
                passed += len(candidates) - len(rows)
                if event_id is not None or len(rows) == len(candidates) or passed >= _HELD_SLACK:
                    break
        return taken

    async def waiting_for(self, event_id: str, handler: str) -> Waiting | None:
        rows = await self._fetch_unless_older(_RUN_ORDER, (event_id, handler))
        if not rows or rows[0][1] is None:
            return None
        name, key, order_at, order_seq, hold = rows[0]
        statuses = ["pending", "running", "failed", *(["dead"] if hold else [])]
        found = await self._fetch(_EARLIER_UNFINISHED, (name, key, statuses, order_at, order_seq))
        if not found:
            found = await self._fetch(_RUNNING_NOW, (name, key, _time(time.time()), event_id))
        return Waiting(*found[0]) if found else None

    async def renew(self, *, owner: str, until: float) -> int:
        sql = "UPDATE handler_runs SET lease_until = %s WHERE lease_owner = %s AND status = 'running'"
        return await self._execute(sql, (_time(until), owner))

    async def finish(
        self,
        *,
        owner: str,
        event_id: str,
        handler: str,
        status: RunStatus,
        error: str | None,
        next_attempt_at: float | None,
        finished_at: float,
        duration_ms: float,
        attempts: int | None = None,
        outcome: AttemptOutcome | None = None,
    ) -> bool:
        params = {
            "status": status,
            "error": error,
            "due": _time(next_attempt_at) if next_attempt_at is not None else None,
            "finished": _time(finished_at),
            "duration": duration_ms,
            "attempts": attempts,
            "event_id": event_id,
            "handler": handler,
            "owner": owner,
            "outcome": outcome or ATTEMPT_OUTCOME.get(status, "failed"),
            "record": attempts is None,
        }
        [(count, key)] = await self._fetch(FINISH, params)
        if count == 1 and key is not None and status in ("succeeded", "dead"):
            release = {"handler": handler, "key": key, "now": _time(finished_at)}
            async with self._connection() as conn, conn.transaction():
                await conn.execute(RELEASE_LOCK.encode(), release)
                await conn.execute(RELEASE.encode(), release)
        return bool(count == 1)

    async def release(self, *, owner: str) -> int:
        sql = (
            "UPDATE handler_runs SET status = 'pending', attempts = greatest(attempts - 1, 0), lease_owner = NULL, "
            "lease_until = NULL, next_attempt_at = %s WHERE lease_owner = %s AND status = 'running'"
        )
        return await self._execute(sql, (_time(time.time()), owner))

    async def requeue(
        self, *, ids: Sequence[str] = (), handler: str | None = None, status: Sequence[str] = ("failed", "dead")
    ) -> int:
        where = ["status = ANY (%(status)s)"]
        if ids:
            where.append("event_id = ANY (%(ids)s)")
        if handler is not None:
            where.append("handler = %(handler)s")
        sql = (
            "UPDATE handler_runs SET attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END, "
            "status = 'pending', next_attempt_at = %(now)s, lease_owner = NULL, lease_until = NULL "
            f"WHERE {' AND '.join(where)}"
        )
        params = {"status": list(status), "ids": list(ids), "handler": handler, "now": _time(time.time())}
        return await self._execute(sql, params)

    async def prune(self, *, before: float, limit: int | None = None) -> dict[str, int]:
        """Delete events received before `before`, oldest first, PRUNE_BATCH a transaction; at most `limit`."""
        cutoff = _time(before)
        counts = {"events": 0, "handler_runs": 0, "rejections": 0}
        while limit is None or counts["events"] < limit:
            size = PRUNE_BATCH if limit is None else min(PRUNE_BATCH, limit - counts["events"])
            async with self._connection() as conn, conn.transaction():
                [(horizon,)] = await (await conn.execute("SELECT montra_stream_horizon()")).fetchall()
                params = {"cutoff": cutoff, "horizon": horizon, "limit": size}
                events, runs = await (await conn.execute(PRUNE, params)).fetchone() or (0, 0)
                rejections = await conn.execute("DELETE FROM rejections WHERE received_at < %s", (cutoff,))
            counts["events"] += events
            counts["handler_runs"] += runs
            counts["rejections"] += rejections.rowcount
            if events < size:
                break
        if limit is None and counts["events"]:
            await self.optimize()
        return counts

    async def count_prunable(self, *, before: float) -> dict[str, int]:
        """What `prune(before=...)` would delete, by table; nothing is deleted."""
        sql = (
            "SELECT (SELECT count(*) FROM events WHERE received_at < %(cutoff)s), "
            "(SELECT count(*) FROM handler_runs WHERE event_id IN "
            "(SELECT id FROM events WHERE received_at < %(cutoff)s)), "
            "(SELECT count(*) FROM rejections WHERE received_at < %(cutoff)s)"
        )
        [(events, runs, rejections)] = await self._fetch(sql, {"cutoff": _time(before)})
        return {"events": events, "handler_runs": runs, "rejections": rejections}

    async def optimize(self) -> None:
        """ANALYZE the tables that grow: autovacuum does it too, but only after a fifth of a table changed."""
        await self._execute("ANALYZE events, handler_runs", ())

    # -- reading ---------------------------------------------------------------------------

    async def get_event(self, event_id: str) -> StoredEvent | None:
        rows = await self.list_events(EventFilter(ids=[event_id]))
        return rows[0] if rows else None

    async def get_runs(self, event_id: str) -> list[Run]:
        sql = f'SELECT {RUN_COLUMNS} FROM handler_runs WHERE event_id = %s ORDER BY handler COLLATE "C"'
        return [_run(row) for row in await self._fetch(sql, (event_id,))]

    async def get_attempts(self, event_id: str) -> list[Attempt]:
        sql = f'SELECT {ATTEMPT_COLUMNS} FROM handler_attempts WHERE event_id = %s ORDER BY handler COLLATE "C", id'
        return [Attempt(*row) for row in await self._fetch_unless_older(sql, (event_id,))]

    async def get_refs(self, event_id: str) -> list[tuple[str, str]]:
        sql = (
            "SELECT kind, ref FROM event_refs WHERE seq = (SELECT seq FROM events WHERE id = %s) "
            'ORDER BY kind COLLATE "C", ref COLLATE "C"'
        )
        return [(kind, ref) for kind, ref in await self._fetch_unless_older(sql, (event_id,))]

    async def list_events(self, selection: EventFilter) -> list[StoredEvent]:
        ranges = [] if "*" in selection.types else type_ranges(selection.types)
        if ranges:
            sql = distinct_types_sql("%s")
            stored = [name for low, high in ranges for (name,) in await self._fetch(sql, (low, high, high))]
            selection = with_exact_types(selection, stored)
            if not selection.types:
                return []
        sql, params = select_events_sql(
            selection,
            columns=EVENT_COLUMNS,
            mark="%s",
            time=lambda moment: moment,
            common_handler=await self._common_handler(selection),
            common_ref_kinds=await self._common_ref_kinds(selection),
            ref_array=True,
        )
        return [_event(row) for row in await self._fetch(sql, params)]

    async def _common_handler(self, selection: EventFilter) -> bool:
        """Whether the selection's handler has COMMON_HANDLER_RUNS runs or more (False without a handler filter)."""
        if selection.handler is None:
            return False
        [(runs,)] = await self._fetch(handler_runs_sql("%s"), (selection.handler,))
        return bool(runs >= COMMON_HANDLER_RUNS)

    async def _common_ref_kinds(self, selection: EventFilter) -> list[str]:
        """The kinds of the selection's resource when it has COMMON_REF_ROWS references or more; else none."""
        if selection.ref is None:
            return []
        [(rows,)] = await self._fetch(ref_rows_sql("%s"), (selection.ref,))
        kinds: list[str] = []
        while rows >= COMMON_REF_ROWS:
            [(kind,)] = await self._fetch(next_ref_kind_sql("%s"), (selection.ref, kinds[-1] if kinds else ""))
            if kind is None:
                break
            kinds.append(kind)
        return kinds

    async def event_types(self, patterns: Sequence[str] = ()) -> list[str]:
        found = {
            name for sql, params in stored_types_sql(patterns, mark="%s") for (name,) in await self._fetch(sql, params)
        }
        return sorted(found)

    async def list_rejections(
        self, *, reasons: Sequence[str] = (), since: datetime | None = None, limit: int = 50
    ) -> list[Rejection]:
        sql = (
            f"SELECT {REJECTION_COLUMNS} FROM rejections WHERE (cardinality(%(reasons)s::text[]) = 0 "
            "OR reason = ANY (%(reasons)s)) AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s) "
            "ORDER BY id DESC LIMIT %(limit)s"
        )
        params = {"reasons": list(reasons), "since": since, "limit": limit}
        return [_rejection(row) for row in await self._fetch(sql, params)]

    async def get_rejection(self, rejection_id: int) -> Rejection | None:
        rows = await self._fetch(f"SELECT {REJECTION_COLUMNS} FROM rejections WHERE id = %s", (rejection_id,))
        return _rejection(rows[0]) if rows else None

    async def count_events(self, selection: EventFilter, *, cap: int) -> int:
        sql, params = count_events_sql(
            selection,
            cap=cap,
            mark="%s",
            time=lambda moment: moment,
            common_handler=await self._common_handler(selection),
            common_ref_kinds=await self._common_ref_kinds(selection),
            ref_array=True,
        )
        [(count,)] = await self._fetch(sql, params)
        return int(count)

    def iter_events(self, selection: EventFilter, *, page: int = 500) -> AsyncIterator[StoredEvent]:
        return iter_pages(self, selection, page=page)

    async def seq_bounds(self) -> tuple[int, int]:
        """(oldest seq still stored or the next one, newest seq a reader may serve); (1, 0) for a new store.

        "Newest" is the stream horizon, not the newest row: no seq at or below it can still appear.
        Rows already committed above it wait only for batches in flight, which take milliseconds:
        this waits for those (up to HORIZON_WAIT), so a stream serves them now, not a poll later.
        """
        sql = "SELECT montra_stream_horizon(), max(seq), min(seq) FROM events"
        deadline = time.monotonic() + HORIZON_WAIT
        committed: int | None = None  # the newest row committed when we first looked: wait for that one only
        while True:
            newest, visible, oldest = (await self._fetch(sql, ()))[0]
            newest = newest or 0
            committed = visible if committed is None else committed
            if committed is None or newest >= committed or time.monotonic() >= deadline:
                return (oldest if oldest is not None and oldest <= newest else newest + 1, newest)
            await asyncio.sleep(0.005)

    def watch(self, on_stored: Callable[[], None]) -> None:
        """LISTEN on `montra_events`: every batch committed by any instance calls `on_stored`."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(on_stored), name="montra-listen")

    async def _listen(self, on_stored: Callable[[], None]) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=10)
                async with conn:
                    await conn.execute(f"LISTEN {_CHANNEL}")
                    on_stored()  # whatever was stored while nobody listened
                    async for _ in conn.notifies():
                        on_stored()
            except psycopg.Error as e:
                log.warning("not listening for other instances' events (the stream polls meanwhile): %s", e)
                await asyncio.sleep(1.0)

    def _announce(self) -> None:
        """NOTIFY after a batch commits, outside its transaction: a NOTIFY inside would serialize commits."""
        if self._announcing:
            return  # one in flight already: it wakes listeners for this batch too
        self._announcing = True
        task = asyncio.get_running_loop().create_task(self._notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify(self) -> None:
        try:
            self._announcing = False
            await self._execute(f"NOTIFY {_CHANNEL}", ())
        except StoreUnavailable as e:
            log.warning("could not notify other instances (their streams poll): %s", e)

    def observe_batches(self, observe: Callable[[int], None] | None) -> None:
        self._batches.observe = observe

    async def backlog(self, *, now: float) -> Backlog:
        pending, running, failed, dead, waiting, leased = (await self._fetch(_BACKLOG, ()))[0]
        counts = {"pending": pending, "running": running, "failed": failed, "dead": dead}
        return backlog_from(counts, waiting=(waiting,), leased=leased, now=now)

    async def orphaned_runs(self, handlers: Sequence[str]) -> dict[str, int]:
        sql = (
            "SELECT handler, count(*) FROM handler_runs WHERE status IN ('pending', 'running', 'failed') "
            'AND handler <> ALL (%s) GROUP BY handler ORDER BY handler COLLATE "C"'
        )
        return {name: count for name, count in await self._fetch(sql, (list(handlers),))}

    async def next_due(self, handlers: Sequence[str]) -> datetime | None:
        """When the earliest waiting run of these handlers is due (or a lease expires), or None."""
        sql = (
            "SELECT min(CASE WHEN status = 'running' THEN lease_until ELSE next_attempt_at END) FROM handler_runs "
            "WHERE handler = ANY (%s) AND status IN ('pending', 'failed', 'running')"
        )
        due: datetime | None = (await self._fetch(sql, (list(handlers),)))[0][0]
        return due

    # -- connections -----------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            return await (await conn.execute(sql.encode(), params)).fetchall()

    async def _fetch_unless_older(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        """`_fetch`, or no rows from a store too old to hold them (a read-only store is never migrated)."""
        try:
            return await self._fetch(sql, params)
        except StoreUnavailable as e:
            if isinstance(e.__cause__, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
                return []
            raise

    async def _execute(self, sql: str, params: Any) -> int:
        async with self._connection() as conn:
            return (await conn.execute(sql.encode(), params)).rowcount

    def _connection(self) -> _Connection:
        return _Connection(self)

    def _current_pool(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        # A store outlives an event loop in tests (one TestClient after another): a new loop gets a new pool.
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool = psycopg_pool.AsyncConnectionPool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                open=False,
                timeout=POOL_TIMEOUT,
                kwargs={"autocommit": True},
                configure=_read_only if self.readonly else None,
                name="montra",
            )
            self._pool_loop = loop
        return self._pool

    async def close(self) -> None:
        await self._batches.close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._rejecting or self._background:
            await asyncio.gather(*self._rejecting, *self._background, return_exceptions=True)
        if self._pool is not None and self._pool_loop is asyncio.get_running_loop():
            await self._pool.close()
        self._pool = None


class _Connection:
    """`async with store._connection() as conn`: a pooled connection; every database error is StoreUnavailable."""

    def __init__(self, store: PostgresStore) -> None:
        self._pool = store._current_pool()
        self._context: Any = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        if self._pool.closed:
            await self._pool.open(wait=False)
        self._context = self._pool.connection()
        try:
            conn: psycopg.AsyncConnection[Any] = await self._context.__aenter__()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StoreUnavailable(f"The event store is unreachable: {e}.") from e
        return conn

    async def __aexit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        await self._context.__aexit__(kind, error, tb)
        if isinstance(error, psycopg.Error):  # callers know the Store interface, not psycopg
            raise StoreUnavailable(f"The event store failed: {error}.") from error


async def _read_only(conn: psycopg.AsyncConnection[Any]) -> None:
    # The server refuses every write on these connections: a read-only store cannot change the database.
    await conn.execute("SET default_transaction_read_only = on")


def _time(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _event(row: tuple[Any, ...]) -> StoredEvent:
    seq, id, type, occurred_at, received_at, headers, body, status = row
    return StoredEvent(seq, id, type, occurred_at, received_at, headers, bytes(body), status)


def _run(row: tuple[Any, ...]) -> Run:
    return Run(*row)


def _order_key(item: Incoming, handler: str) -> str | None:
    order = item.ordering.get(handler)
    return None if order is None else order[0]


def _order_at(item: Incoming, received: datetime, handler: str) -> datetime | None:
    if handler not in item.ordering:
        return None
    return received if item.order_at is None else _time(item.order_at)


def _order_hold(item: Incoming, handler: str) -> bool:
    order = item.ordering.get(handler)
    return order is not None and order[1]


def _rejection(row: tuple[Any, ...]) -> Rejection:
    id, received_at, reason, remote, headers, body, message, detail = row
    return Rejection(id, received_at, reason, remote, headers, bytes(body or b""), message, detail)
