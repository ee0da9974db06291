"""The embedded store: one SQLite file, WAL, `synchronous=FULL`, writes grouped into batches.

One connection writes (through `GroupCommit`); reads run on a small pool of threads, each with
its own connection, so a long listing never holds up an acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from ...errors import ConfigurationError, StoreUnavailable
from ...event import AttemptOutcome, RunStatus, stored_refs
from ..protocol import (
    ATTEMPT_COLUMNS,
    ATTEMPT_OUTCOME,
    COMMON_HANDLER_RUNS,
    COMMON_REF_ROWS,
    CRASHED_ERROR,
    HELD,
    HOLD_RECHECK,
    MAX_REJECTIONS,
    REJECTED_BODY_BYTES,
    REJECTION_COLUMNS,
    SUPERSEDED,
    TAKEOVER_NOTE,
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
    iso,
    iter_pages,
    next_ref_kind_sql,
    parse_iso,
    redacted_json,
    ref_rows_sql,
    select_events_sql,
    stored_types_sql,
    type_ranges,
    with_exact_types,
)
from .group_commit import BUSY_TIMEOUT_MS, GroupCommit
from .schema import SCHEMA_VERSION, migrate

__all__ = ["PRUNE_BATCH", "SQLiteStore", "check_store_file", "connect", "select_events"]

PRUNE_BATCH = 100
"""Events one prune transaction deletes at most: about 40 us each on a loaded 2-core machine (five
indexes of events, three of runs, the status trigger), so a batch holds the write lock a few ms."""
ANALYSIS_LIMIT = 1000
_HELD_SLACK = 32
"""Held runs an ordered claim passes over (and parks) at most, looking for free ones: a bound on one claim's work."""


T = TypeVar("T")

_EVENT_COLUMNS = "seq, id, type, occurred_at, received_at, headers, body, status"
_RUN_COLUMNS = (
    "event_id, handler, status, attempts, last_error, next_attempt_at, lease_owner, lease_until, "
    "started_at, finished_at, duration_ms"
)
_INSERT_EVENT = (
    "INSERT INTO events (id, type, occurred_at, received_at, headers, body) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)


_INSERT_REF = "INSERT OR IGNORE INTO event_refs (seq, kind, ref) VALUES (?, ?, ?)"
_REFS_IN_ONE_INSERT = 16
"""An event with up to this many references writes them with one statement (one step into SQLite, its mutex
and the GIL, rather than one each); more, one statement each (a body of `x_id` fields would pass SQLite's
limit on parameters)."""


@functools.lru_cache(maxsize=_REFS_IN_ONE_INSERT)
def _insert_refs(count: int) -> str:
    return "INSERT OR IGNORE INTO event_refs (seq, kind, ref) VALUES " + ", ".join(["(?, ?, ?)"] * count)


# event_refs has one index, its key: an event's rows are found by keys made again from its body (`stored_refs`).
_REF_KEY = "ref = ? AND kind = ? AND seq = ?"
# A try's row, read from its run before `finish` updates it (owner and start are the run's lease and claim).
_RECORD_TRY = (
    f"INSERT INTO handler_attempts ({ATTEMPT_COLUMNS}) SELECT event_id, handler, attempts, lease_owner, started_at, "
    "?, ?, ?, ? FROM handler_runs WHERE event_id = ? AND handler = ? AND lease_owner = ? AND status = 'running'"
)
# The tries a claim takes over (runs still `running` past their lease): their process died mid-try.
_RECORD_CRASHED = (
    f"INSERT INTO handler_attempts ({ATTEMPT_COLUMNS}) SELECT event_id, handler, attempts, lease_owner, started_at, "
    f"NULL, NULL, 'crashed', {CRASHED_ERROR} FROM handler_runs WHERE rowid IN ({{rows}}) AND status = 'running'"
)
_INSERT_RUN = (
    "INSERT INTO handler_runs (event_id, handler, status, next_attempt_at, order_key, order_at, order_seq, "
    "hold_on_dead) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)"
)
# A resend is a request to try again: dead runs get a fresh cycle of attempts; the others are left alone.
# `+status` keeps the planner on the primary key (one event's few runs): on the status index it read
# every dead run in the store, inside the batch, on the event loop, for each duplicate.
_REQUEUE_DEAD = (
    "UPDATE handler_runs SET status = 'pending', attempts = 0, next_attempt_at = ?, lease_owner = NULL, "
    "lease_until = NULL WHERE event_id = ? AND +status = 'dead'"
)
# Due runs in two index-friendly halves, not one OR over status: with the OR, SQLite reads every run
# of the handlers (the succeeded history included) and sorts them, so each claim slowed as the store grew.
_DUE = (
    "SELECT run FROM (SELECT rowid AS run, next_attempt_at AS due FROM handler_runs WHERE handler IN ({names}) "
    "AND status IN ('pending', 'failed') AND next_attempt_at <= ? UNION ALL SELECT rowid, next_attempt_at "
    "FROM handler_runs WHERE handler IN ({names}) AND status = 'running' AND lease_until < ? ORDER BY due LIMIT ?)"
)
# Each a range of the (status, next_attempt_at) index: counting never reads the succeeded history, and a
# min() stops at the first entry. Only running runs' leases are read from the table (as many as run now).
_BACKLOG_COUNTS = (
    "SELECT status, count(*) FROM handler_runs WHERE status IN ('pending', 'running', 'failed', 'dead') GROUP BY status"
)
_BACKLOG_OLDEST = (
    "SELECT (SELECT min(next_attempt_at) FROM handler_runs WHERE status = 'pending'), "
    "(SELECT min(next_attempt_at) FROM handler_runs WHERE status = 'failed'), "
    "(SELECT min(lease_until) FROM handler_runs WHERE status = 'running')"
)
_UNFINISHED = "event_id = ? AND (status IN ('pending', 'failed', 'dead') OR (status = 'running' AND lease_until < ?))"
# Ordered claims: due runs (as `_DUE`), each with whether something holds it back and whether it is superseded;
# both are index probes of ordered runs only.
_DUE_CANDIDATES = (
    "SELECT rowid AS run, next_attempt_at AS due FROM handler_runs WHERE handler IN ({names}) "
    "AND status IN ('pending', 'failed') AND next_attempt_at <= ? UNION ALL SELECT rowid, next_attempt_at "
    "FROM handler_runs WHERE handler IN ({names}) AND status = 'running' AND lease_until < ? ORDER BY due LIMIT ?"
)
_EVENT_CANDIDATES = (
    f"SELECT rowid AS run, next_attempt_at AS due FROM handler_runs WHERE handler IN ({{names}}) AND {_UNFINISHED} "
    "ORDER BY next_attempt_at LIMIT ?"
)
_WITH_HOLDS = (
    f"SELECT d.run, r.order_key IS NOT NULL AND {HELD.format(now='?')}, r.order_key IS NOT NULL AND {SUPERSEDED}, "
    "r.status = 'running' "
    "FROM ({candidates}) AS d JOIN handler_runs r ON r.rowid = d.run ORDER BY d.due"
)
# A held run waits off the due range (claims and `next_due` skip it); one still `running` under a lapsed lease
# had its try crash (recorded as for any takeover) and goes back to pending: the try it used still counts.
_PARK = (
    "UPDATE handler_runs SET status = CASE WHEN status = 'running' THEN 'pending' ELSE status END, "
    f"lease_owner = NULL, lease_until = NULL, next_attempt_at = ?, {TAKEOVER_NOTE} WHERE rowid IN ({{rows}})"
)
# A run of an ordered handler that succeeded or died lets the next one of its resource go now, not at its recheck.
_RELEASE = (
    "UPDATE handler_runs SET next_attempt_at = ? WHERE rowid = (SELECT n.rowid FROM handler_runs f "
    "JOIN handler_runs n ON n.handler = f.handler AND n.order_key = f.order_key "
    "WHERE f.event_id = ? AND f.handler = ? AND n.status = 'pending' ORDER BY n.order_at, n.order_seq LIMIT 1) "
    "AND next_attempt_at > ?"
)
_RUN_ORDER = (
    "SELECT handler, order_key, order_at, order_seq, hold_on_dead FROM handler_runs WHERE event_id = ? AND handler = ?"
)
_EARLIER_UNFINISHED = (
    "SELECT event_id, status, attempts, next_attempt_at FROM handler_runs WHERE handler = ? AND order_key = ? "
    "AND status IN ({statuses}) AND (order_at, order_seq) < (?, ?) ORDER BY order_at, order_seq LIMIT 1"
)
_RUNNING_NOW = (
    "SELECT event_id, status, attempts, next_attempt_at FROM handler_runs WHERE handler = ? AND order_key = ? "
    "AND status = 'running' AND lease_until >= ? AND event_id <> ? LIMIT 1"
)


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the pragmas every connection needs; create and migrate it when writable.

    A read-only connection never creates the file: a missing one is a ConfigurationError.
    """
    try:
        if readonly:
            conn = sqlite3.connect(_uri(path, "ro"), uri=True, isolation_level=None, check_same_thread=False)
        else:
            _create_private(path)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        else:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise ConfigurationError(f"{path} cannot use write-ahead logging: put --db on a local disk.")
            conn.execute("PRAGMA synchronous = FULL")
            migrate(conn)
    except sqlite3.Error as e:
        raise ConfigurationError(f"Cannot open the event store at {path}: {e}. Check --db and its folder.") from e
    return conn


class SQLiteStore:
    """The `Store` on one SQLite file. Create it anywhere; it binds to the event loop that first uses it.

    `readonly=True` opens an existing store for reading only (the CLI's listing commands): it never
    creates, migrates or writes the file, and raises ConfigurationError naming it when it is missing,
    empty or not a montra-webhooks store. Its write methods raise StoreUnavailable.
    """

    def __init__(self, path: str | os.PathLike[str], *, readers: int = 4, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self._where = os.path.abspath(self.path)  # what `_check_identity` stats, whatever the cwd becomes
        self._identity: tuple[int, int] | None = None
        self._writer: sqlite3.Connection | None = None
        self._group: GroupCommit | None = None
        if readonly:
            check_store_file(self.path)
        else:
            self._writer = connect(self.path)
            self._identity = _identity(self.path)
            if _statistics_stale(self._writer):  # the planner picks indexes by them: see `optimize`
                _analyze(self._writer)
            # The writer runs BEGIN on the event loop: it must never sleep in SQLite's busy handler there.
            # A BEGIN that finds the lock taken waits in GroupCommit's thread instead.
            self._writer.execute("PRAGMA busy_timeout = 0")
            self._group = GroupCommit(self._writer, before_commit=self._check_identity)
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="montra-read")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- writing ---------------------------------------------------------------------------

    @property
    def _commits(self) -> GroupCommit:
        if self._group is None:
            raise StoreUnavailable(f"The event store at {self.path} is open read-only: nothing can be written to it.")
        return self._group

    def _check_identity(self) -> None:
        """Refuse to commit into a file that is no longer the one at `path` (deleted, moved or replaced).

        SQLite keeps writing to the file it opened, even unlinked: without this, events acknowledged
        after `rm events.db` would be lost at the next start. Runs in the commit thread, once per batch.
        """
        if self._identity is None:  # ":memory:" or a temporary database: no file to lose
            return
        try:
            found: tuple[int, int] | None = _identity(self._where)
        except FileNotFoundError:
            found = None
        if found != self._identity:
            what = "deleted or moved" if found is None else "replaced by another file"
            raise StoreUnavailable(
                f"the database file {self.path} was {what} while the receiver ran, so nothing more is written "
                "to the old one; restart the receiver to open the file now at that path"
            )

    def free_space(self) -> int | None:
        """Bytes free (for this user) on the disk holding the database file."""
        try:
            disk = os.statvfs(os.path.dirname(self._where))
        except OSError:
            return None
        return disk.f_bavail * disk.f_frsize

    async def ingest(self, incoming: Incoming) -> IngestResult:
        headers = redacted_json(incoming.headers)
        received_at = iso(incoming.received_at)

        def op(conn: sqlite3.Connection) -> IngestResult:
            cursor = conn.execute(
                _INSERT_EVENT,
                (incoming.id, incoming.type, incoming.occurred_at, received_at, headers, incoming.body),
            )
            if cursor.rowcount == 1:
                seq = cursor.lastrowid
                if incoming.handlers:
                    conn.executemany(_INSERT_RUN, _run_rows(incoming, seq, received_at))
                refs = incoming.refs
                if 0 < len(refs) <= _REFS_IN_ONE_INSERT:
                    conn.execute(_insert_refs(len(refs)), [v for kind, ref in refs for v in (seq, kind, ref)])
                elif refs:
                    conn.executemany(_INSERT_REF, [(seq, kind, ref) for kind, ref in refs])
                return IngestResult("stored", seq=seq)
            requeued = conn.execute(_REQUEUE_DEAD, (received_at, incoming.id)).rowcount
            return IngestResult("duplicate", requeued=requeued)

        return await self._commits.run(op)

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
        row = (
            iso(time.time()),
            reason,
            remote,
            redacted_json(headers),
            body[:REJECTED_BODY_BYTES],
            message,
            None if detail is None else json.dumps(dict(detail)),
        )

        def op(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "INSERT INTO rejections (received_at, reason, remote, headers, body, message, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            conn.execute("DELETE FROM rejections WHERE id <= ?", ((cursor.lastrowid or 0) - MAX_REJECTIONS,))

        self._commits.submit(op)

    async def check_writable(self) -> bool:
        """Write and fsync for real: only a write proves the disk takes writes."""

        def op(conn: sqlite3.Connection) -> None:
            # Rewriting the schema version dirties the header page: a real, harmless write.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        try:
            await self._commits.run(op)
        except Exception:  # any failure to write means "not writable"; GroupCommit logged it
            return False
        return True

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
        """Take up to `limit` due runs with one atomic UPDATE; with `event_id`, every unfinished run of it.

        The claim runs in the writer's transaction, which holds the file's write lock: the probes of
        ordered runs and the update are atomic across processes as well.
        """
        if not handlers or limit <= 0:
            return []
        if ordered:
            return await self._claim_ordered(owner, handlers, now, lease, limit, event_id)
        names = ", ".join("?" * len(handlers))
        stamp = iso(now)
        if event_id is None:
            selection = _DUE.format(names=names)
            selection_params = [*handlers, stamp, *handlers, stamp, limit]
        else:
            selection = (
                f"SELECT rowid FROM handler_runs WHERE handler IN ({names}) AND {_UNFINISHED} "
                "ORDER BY next_attempt_at LIMIT ?"
            )
            selection_params = [*handlers, event_id, stamp, limit]
        sql = (
            "UPDATE handler_runs SET status = 'running', lease_owner = ?, lease_until = ?, "
            f"attempts = attempts + 1, started_at = ?, finished_at = NULL, duration_ms = NULL, {TAKEOVER_NOTE} "
            "WHERE rowid IN ({rows}) RETURNING " + _RUN_COLUMNS
        )

        def op(conn: sqlite3.Connection) -> list[Run]:
            # Pick the rows once, then record the crashed tries among them and claim them, in one transaction.
            rows = [row for (row,) in conn.execute(selection, selection_params)]
            if not rows:
                return []
            marks = ", ".join("?" * len(rows))
            conn.execute(_RECORD_CRASHED.format(rows=marks), rows)
            return [_run(row) for row in conn.execute(sql.format(rows=marks), (owner, iso(now + lease), stamp, *rows))]

        return await self._commits.run(op)

    async def _claim_ordered(
        self, owner: str, handlers: Sequence[str], now: float, lease: float, limit: int, event_id: str | None
    ) -> list[Run]:
        names = ", ".join("?" * len(handlers))
        stamp = iso(now)
        if event_id is None:
            select = _WITH_HOLDS.format(candidates=_DUE_CANDIDATES.format(names=names))
            params: list[Any] = [stamp, *handlers, stamp, *handlers, stamp]
        else:
            select = _WITH_HOLDS.format(candidates=_EVENT_CANDIDATES.format(names=names))
            params = [stamp, *handlers, event_id, stamp]
        update = (
            "UPDATE handler_runs SET status = 'running', lease_owner = ?, lease_until = ?, "
            f"attempts = attempts + 1, started_at = ?, finished_at = NULL, duration_ms = NULL, {TAKEOVER_NOTE} "
            "WHERE rowid IN ({rows}) RETURNING rowid, " + _RUN_COLUMNS
        )

        def take(conn: sqlite3.Connection, rows: list[int], superseded: dict[int, bool]) -> list[Run]:
            marks = ", ".join("?" * len(rows))
            claimed = conn.execute(update.format(rows=marks), (owner, iso(now + lease), stamp, *rows))
            return [dataclasses.replace(_run(row[1:]), superseded=superseded[row[0]]) for row in claimed]

        def op(conn: sqlite3.Connection) -> list[Run]:
            if event_id is not None:  # inline: held runs are left as they are (the sender's retry asks again)
                found = conn.execute(select, [*params, limit]).fetchall()
                free = {row: bool(superseded) for row, held, superseded, _ in found if not held}
                if not free:
                    return []
                if any(running for row, _, _, running in found if row in free):
                    conn.execute(_RECORD_CRASHED.format(rows=", ".join("?" * len(free))), list(free))
                return take(conn, list(free), free)
            # As many due runs as are wanted, in due order; the held ones among them are parked (off the due
            # range) and as many more read, until enough are free or _HELD_SLACK held ones were passed over.
            # Runs claimed or parked here leave the due range at once, so each read starts where the last ended.
            taken: list[Run] = []
            passed = 0
            while len(taken) < limit:
                found = conn.execute(select, [*params, limit - len(taken)]).fetchall()
                free = {row: bool(superseded) for row, held, superseded, _ in found if not held}
                parked = [row for row, held, _, _ in found if held]
                crashed = [row for row, _, _, running in found if running]  # taken over: their process died
                if crashed:
                    conn.execute(_RECORD_CRASHED.format(rows=", ".join("?" * len(crashed))), crashed)
                if parked:
                    conn.execute(_PARK.format(rows=", ".join("?" * len(parked))), [iso(now + HOLD_RECHECK), *parked])
                if free:
                    taken.extend(take(conn, list(free), free))
                passed += len(parked)
                if not parked or passed >= _HELD_SLACK:
                    break  # nothing held (all taken, or nothing more is due), or enough looked at for one claim
            return taken

        return await self._commits.run(op)

    async def waiting_for(self, event_id: str, handler: str) -> Waiting | None:
        def op(conn: sqlite3.Connection) -> Waiting | None:
            run = conn.execute(_RUN_ORDER, (event_id, handler)).fetchone()
            if run is None or run[1] is None:
                return None
            name, key, order_at, order_seq, hold = run
            statuses = "'pending', 'running', 'failed'" + (", 'dead'" if hold else "")
            found = (
                conn.execute(_EARLIER_UNFINISHED.format(statuses=statuses), (name, key, order_at, order_seq)).fetchone()
                or conn.execute(_RUNNING_NOW, (name, key, iso(time.time()), event_id)).fetchone()
            )
            if found is None:
                return None
            other, status, attempts, due = found
            return Waiting(other, status, attempts, parse_iso(due))

        return await self._read(_unless_older_one, op)

    async def renew(self, *, owner: str, until: float) -> int:
        sql = "UPDATE handler_runs SET lease_until = ? WHERE lease_owner = ? AND status = 'running'"
        return await self._commits.run(lambda conn: conn.execute(sql, (iso(until), owner)).rowcount)

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
        sql = (
            "UPDATE handler_runs SET status = ?, last_error = ?, next_attempt_at = ?, lease_owner = NULL, "
            "lease_until = NULL, finished_at = ?, duration_ms = ?, attempts = coalesce(?, attempts) "
            "WHERE event_id = ? AND handler = ? AND lease_owner = ? AND status = 'running'"
        )
        due = iso(next_attempt_at) if next_attempt_at is not None else None
        params = (status, error, due, iso(finished_at), duration_ms, attempts, event_id, handler, owner)
        outcome = outcome or ATTEMPT_OUTCOME.get(status, "failed")
        tried = (iso(finished_at), duration_ms, outcome, error, event_id, handler, owner)

        def op(conn: sqlite3.Connection) -> bool:
            if attempts is None:  # a try was made (`attempts=` corrects a count when none was)
                conn.execute(_RECORD_TRY, tried)
            held = conn.execute(sql, params).rowcount == 1
            if held and status in ("succeeded", "dead"):
                stamp = iso(finished_at)
                conn.execute(_RELEASE, (stamp, event_id, handler, stamp))
            return held

        return await self._commits.run(op)

    async def release(self, *, owner: str) -> int:
        sql = (
            "UPDATE handler_runs SET status = 'pending', attempts = max(attempts - 1, 0), lease_owner = NULL, "
            "lease_until = NULL, next_attempt_at = ? WHERE lease_owner = ? AND status = 'running'"
        )
        return await self._commits.run(lambda conn: conn.execute(sql, (iso(time.time()), owner)).rowcount)

    async def requeue(
        self, *, ids: Sequence[str] = (), handler: str | None = None, status: Sequence[str] = ("failed", "dead")
    ) -> int:
        # With ids, `+status` keeps the planner on the primary key (those events' runs), off the status
        # index (every failed and dead run in the store).
        column = "+status" if ids else "status"
        where = [f"{column} IN ({', '.join('?' * len(status))})"]
        params: list[Any] = [iso(time.time()), *status]
        if ids:
            where.append(f"event_id IN ({', '.join('?' * len(ids))})")
            params.extend(ids)
        if handler is not None:
            where.append("handler = ?")
            params.append(handler)
        sql = (
            "UPDATE handler_runs SET attempts = CASE WHEN status = 'dead' THEN 0 ELSE attempts END, "
            "status = 'pending', next_attempt_at = ?, lease_owner = NULL, lease_until = NULL "
            f"WHERE {' AND '.join(where)}"
        )
        return await self._commits.run(lambda conn: conn.execute(sql, params).rowcount)

    async def prune(self, *, before: float, limit: int | None = None) -> dict[str, int]:
        """Delete events received before `before` (oldest first, at most `limit`; None: all) with their runs.

        Without a limit it still deletes PRUNE_BATCH events a transaction, so a receiver on the same file
        waits for the write lock a few milliseconds at a time, then refreshes the planner's statistics.
        """
        cutoff = iso(before)
        counts = {"events": 0, "handler_runs": 0, "rejections": 0}
        while limit is None or counts["events"] < limit:
            size = PRUNE_BATCH if limit is None else min(PRUNE_BATCH, limit - counts["events"])
            done = await self._commits.run(functools.partial(_prune_batch, cutoff=cutoff, size=size), off_loop=True)
            for table, n in done.items():
                counts[table] += n
            if done["events"] < size:
                break
        if limit is None and counts["events"]:
            await self.optimize()
        return counts

    async def count_prunable(self, *, before: float) -> dict[str, int]:
        """What `prune(before=...)` would delete, by table; nothing is deleted."""
        cutoff = iso(before)

        def op(conn: sqlite3.Connection) -> dict[str, int]:
            old = "SELECT id FROM events WHERE received_at < ?"
            return {
                "events": conn.execute("SELECT count(*) FROM events WHERE received_at < ?", (cutoff,)).fetchone()[0],
                "handler_runs": conn.execute(
                    f"SELECT count(*) FROM handler_runs WHERE event_id IN ({old})", (cutoff,)
                ).fetchone()[0],
                "rejections": conn.execute(
                    "SELECT count(*) FROM rejections WHERE received_at < ?", (cutoff,)
                ).fetchone()[0],
            }

        return await self._read(op)

    async def optimize(self) -> None:
        """Refresh the query planner's statistics (a sampled ANALYZE: milliseconds on any size)."""
        await self._commits.run(_analyze, off_loop=True)

    # -- reading ---------------------------------------------------------------------------

    async def get_event(self, event_id: str) -> StoredEvent | None:
        rows = await self._read(select_events, EventFilter(ids=[event_id]))
        return rows[0] if rows else None

    async def get_runs(self, event_id: str) -> list[Run]:
        sql = f"SELECT {_RUN_COLUMNS} FROM handler_runs WHERE event_id = ? ORDER BY handler"
        return await self._read(lambda conn: [_run(row) for row in conn.execute(sql, (event_id,))])

    async def get_attempts(self, event_id: str) -> list[Attempt]:
        sql = f"SELECT {ATTEMPT_COLUMNS} FROM handler_attempts WHERE event_id = ? ORDER BY handler, id"
        return await self._read(_unless_older, lambda conn: [_attempt(row) for row in conn.execute(sql, (event_id,))])

    async def get_refs(self, event_id: str) -> list[tuple[str, str]]:
        def op(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            found = conn.execute("SELECT seq, type, body FROM events WHERE id = ?", (event_id,)).fetchone()
            if found is None:
                return []
            seq, event_type, body = found
            # Only the keys that are there: an event stored before references were kept has none.
            probe = f"SELECT 1 FROM event_refs WHERE {_REF_KEY}"
            refs = stored_refs(event_type, body)
            return sorted((kind, ref) for kind, ref in refs if conn.execute(probe, (ref, kind, seq)).fetchone())

        return await self._read(_unless_older, op)

    async def list_events(self, selection: EventFilter) -> list[StoredEvent]:
        return await self._read(select_events, selection)

    async def event_types(self, patterns: Sequence[str] = ()) -> list[str]:
        statements = stored_types_sql(patterns, mark="?")
        return await self._read(
            lambda conn: sorted({name for sql, params in statements for (name,) in conn.execute(sql, params)})
        )

    async def list_rejections(
        self, *, reasons: Sequence[str] = (), since: datetime | None = None, limit: int = 50
    ) -> list[Rejection]:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if reasons:
            where.append(f"reason IN ({', '.join('?' * len(reasons))})")
            params.extend(reasons)
        if since is not None:
            where.append("received_at >= ?")
            params.append(iso(since))
        sql = f"SELECT {REJECTION_COLUMNS} FROM rejections WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        return await self._read(lambda conn: [_rejection(row) for row in conn.execute(sql, (*params, limit))])

    async def get_rejection(self, rejection_id: int) -> Rejection | None:
        sql = f"SELECT {REJECTION_COLUMNS} FROM rejections WHERE id = ?"
        rows = await self._read(lambda conn: conn.execute(sql, (rejection_id,)).fetchall())
        return _rejection(rows[0]) if rows else None

    async def count_events(self, selection: EventFilter, *, cap: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql, params = count_events_sql(
                selection,
                cap=cap,
                mark="?",
                time=iso,
                common_handler=_common_handler(conn, selection),
                common_ref_kinds=_common_ref_kinds(conn, selection),
            )
            return int(conn.execute(sql, params).fetchone()[0])

        return await self._read(op)

    def iter_events(self, selection: EventFilter, *, page: int = 500) -> AsyncIterator[StoredEvent]:
        return iter_pages(self, selection, page=page)

    async def seq_bounds(self) -> tuple[int, int]:
        """(oldest seq still stored or the next one, newest seq ever assigned); (1, 0) for a new store."""

        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            newest_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
            newest = newest_row[0] if newest_row else 0
            oldest = conn.execute("SELECT min(seq) FROM events").fetchone()[0]
            return (oldest if oldest is not None else newest + 1, newest)

        return await self._read(op)

    def watch(self, on_stored: Callable[[], None]) -> None:
        """SQLite has no cross-process notification: the stream's poll finds other processes' events."""

    def observe_batches(self, observe: Callable[[int], None] | None) -> None:
        self._commits.observe = observe

    async def backlog(self, *, now: float) -> Backlog:
        def op(conn: sqlite3.Connection) -> Backlog:
            counts = dict(conn.execute(_BACKLOG_COUNTS).fetchall())
            # Three values, not SQL's min(a, b, c), which is NULL when one of them is.
            pending, failed, leased = conn.execute(_BACKLOG_OLDEST).fetchone()
            waiting = (parse_iso(pending), parse_iso(failed))
            return backlog_from(counts, waiting=waiting, leased=parse_iso(leased), now=now)

        return await self._read(op)

    async def orphaned_runs(self, handlers: Sequence[str]) -> dict[str, int]:
        names = ", ".join("?" * len(handlers))
        # INDEXED BY: to skip sorting for the GROUP BY, the planner would read the whole (handler, status)
        # index, every finished run included; the unfinished runs are few.
        sql = (
            "SELECT handler, count(*) FROM handler_runs INDEXED BY handler_runs_due "
            f"WHERE status IN ('pending', 'running', 'failed') AND handler NOT IN ({names}) "
            "GROUP BY handler ORDER BY handler"
        )
        return await self._read(lambda conn: dict(conn.execute(sql, tuple(handlers)).fetchall()))

    async def next_due(self, handlers: Sequence[str]) -> datetime | None:
        """When the earliest waiting run of these handlers is due (or a lease expires), or None."""
        names = ", ".join("?" * len(handlers))
        sql = (
            f"SELECT min(CASE WHEN status = 'running' THEN lease_until ELSE next_attempt_at END) FROM handler_runs "
            f"WHERE handler IN ({names}) AND status IN ('pending', 'failed', 'running')"
        )
        return parse_iso(await self._read(lambda conn: conn.execute(sql, tuple(handlers)).fetchone()[0]))

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._with_reader, fn, args)
        except sqlite3.OperationalError as e:
            if _older_schema(e):
                raise StoreUnavailable(
                    f"The event store at {self.path} was written by an older montra-webhooks ({e}): open it once "
                    "with `montra-hooks serve` or `montra-hooks prune` to bring its schema up to date."
                ) from e
            raise StoreUnavailable(f"The event store cannot be read: {e}.") from e
        except (sqlite3.Error, ConfigurationError) as e:  # callers know the Store interface, not SQLite
            raise StoreUnavailable(f"The event store cannot be read: {e}.") from e

    def _with_reader(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, readonly=True)
            self._reader_conns.append(conn)
        return fn(conn, *args)

    async def close(self) -> None:
        if self._group is not None:
            await self._group.close()
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        if self._writer is not None:
            self._writer.close()


def _run_rows(incoming: Incoming, seq: int | None, received_at: str) -> list[tuple[Any, ...]]:
    """The `handler_runs` rows of a new event: ordered ones carry their resource, time, seq and hold_on_dead."""
    order_at = iso(incoming.order_at if incoming.order_at is not None else incoming.received_at)
    rows: list[tuple[Any, ...]] = []
    for name in incoming.handlers:
        order = incoming.ordering.get(name)
        if order is None:
            rows.append((incoming.id, name, received_at, None, None, None, 0))
        else:
            rows.append((incoming.id, name, received_at, order[0], order_at, seq, int(order[1])))
    return rows


def _unless_older_one(conn: sqlite3.Connection, read: Callable[[sqlite3.Connection], T | None]) -> T | None:
    """`read(conn)`, or None from a store too old to hold what it reads (a read-only store is never migrated)."""
    try:
        return read(conn)
    except sqlite3.OperationalError as e:
        if _older_schema(e):
            return None
        raise


def _older_schema(error: sqlite3.OperationalError) -> bool:
    """A read-only store is never migrated: an older one lacks the newer tables and columns."""
    return str(error).startswith(("no such table", "no such column"))


def _unless_older(conn: sqlite3.Connection, read: Callable[[sqlite3.Connection], list[T]]) -> list[T]:
    """`read(conn)`, or nothing from a store too old to hold it (history that was never recorded)."""
    try:
        return read(conn)
    except sqlite3.OperationalError as e:
        if _older_schema(e):
            return []
        raise


def check_store_file(path: str) -> None:
    """Raise ConfigurationError, naming `path`, unless it is an existing montra-webhooks store; change nothing."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise ConfigurationError(
            f"No event store at {path}: the file does not exist. Pass the --db that `montra-hooks serve` uses."
        ) from None
    except OSError as e:
        raise ConfigurationError(f"Cannot read the event store at {path}: {e.strerror}. Check --db.") from e
    if os.path.isdir(path):
        raise ConfigurationError(f"{path} is a folder, not an event store: pass the database file as --db.")
    if size == 0:
        raise ConfigurationError(
            f"{path} is empty (0 bytes), not an event store: pass the --db that `montra-hooks serve` uses."
        )
    not_a_store = f"{path} is not a montra-webhooks event store: pass the --db that `montra-hooks serve` uses."
    try:
        with contextlib.closing(sqlite3.connect(_uri(path, "ro"), uri=True)) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as e:  # e.g. a WAL database whose -shm this user cannot open
        raise ConfigurationError(
            f"Cannot read the event store at {path}: {e}. Check the permissions of it and its folder."
        ) from e
    except sqlite3.DatabaseError as e:
        raise ConfigurationError(f"{not_a_store[:-1]} ({e}).") from e
    if version < 1 or not {"events", "handler_runs"} <= tables:
        raise ConfigurationError(not_a_store)
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"The event store at {path} has schema version {version}, newer than this montra-webhooks "
            f"understands ({SCHEMA_VERSION}): upgrade montra-webhooks."
        )


def _create_private(path: str) -> None:
    """Create a new database file readable by its owner only; SQLite gives its -wal and -shm the same mode.

    It holds every webhook received. An existing file is left as it is: its mode is its owner's choice.
    """
    if path in ("", ":memory:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # it exists, or cannot be made: sqlite3.connect opens it or says why it cannot
        return
    try:
        os.fchmod(fd, 0o600)  # open()'s mode passes through the umask; fchmod's does not
    finally:
        os.close(fd)


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the database file; None for a database with no file."""
    if path in ("", ":memory:"):
        return None
    found = os.stat(path)
    return (found.st_dev, found.st_ino)


def _uri(path: str, mode: str) -> str:
    """A `file:` URI for `path` (any character in it quoted) that opens it in `mode` (ro, rw) and never creates it."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def _prune_batch(conn: sqlite3.Connection, *, cutoff: str, size: int) -> dict[str, int]:
    # The oldest first, through the received_at index: each batch reads only the rows it deletes.
    old = conn.execute(
        "SELECT seq, id, type, body FROM events WHERE received_at < ? ORDER BY received_at LIMIT ?", (cutoff, size)
    ).fetchall()
    runs = conn.executemany("DELETE FROM handler_runs WHERE event_id = ?", [(id,) for _, id, _, _ in old]).rowcount
    # Attempts and references go with their events (explicitly: the cascade would do it row by row).
    conn.executemany("DELETE FROM handler_attempts WHERE event_id = ?", [(id,) for _, id, _, _ in old])
    keys = [(ref, kind, seq) for seq, _, event_type, body in old for kind, ref in stored_refs(event_type, body)]
    conn.executemany(f"DELETE FROM event_refs WHERE {_REF_KEY}", keys)
    events = conn.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq, _, _, _ in old]).rowcount
    rejections = conn.execute("DELETE FROM rejections WHERE received_at < ?", (cutoff,)).rowcount
    return {"events": max(events, 0), "handler_runs": max(runs, 0), "rejections": rejections}


def _analyze(conn: sqlite3.Connection) -> None:
    # Sampled: a full ANALYZE reads every row of a million-event store (seconds); this reads about
    # ANALYSIS_LIMIT rows of each index, which is all the planner needs to prefer the right index.
    conn.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
    conn.execute("ANALYZE")


def _statistics_stale(conn: sqlite3.Connection) -> bool:
    """No statistics yet (with rows to measure), or the events table grew or shrank tenfold since."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() is None:
        return conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
    row = conn.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = 'events' AND idx = 'events_received_at'").fetchone()
    low, high = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    rows = 0 if low is None else high - low + 1  # an upper bound, from the rowid index alone
    measured = int(row[0].split()[0]) if row else 0
    return rows > 10 * max(measured, 100) or measured > 10 * max(rows, 100)


def select_events(conn: sqlite3.Connection, selection: EventFilter) -> list[StoredEvent]:
    """Read events matching `selection`, in seq order (or newest first)."""
    ranges = [] if "*" in selection.types else type_ranges(selection.types)
    if ranges:
        sql = distinct_types_sql("?")
        stored = [name for low, high in ranges for (name,) in conn.execute(sql, (low, high, high))]
        selection = with_exact_types(selection, stored)
        if not selection.types:
            return []
    sql, params = select_events_sql(
        selection,
        columns=_EVENT_COLUMNS,
        mark="?",
        time=iso,
        common_handler=_common_handler(conn, selection),
        common_ref_kinds=_common_ref_kinds(conn, selection),
    )
    return [_event(row) for row in conn.execute(sql, params)]


def _common_handler(conn: sqlite3.Connection, selection: EventFilter) -> bool:
    """Whether the selection's handler has COMMON_HANDLER_RUNS runs or more (False without a handler filter)."""
    if selection.handler is None:
        return False
    return bool(conn.execute(handler_runs_sql("?"), (selection.handler,)).fetchone()[0] >= COMMON_HANDLER_RUNS)


def _common_ref_kinds(conn: sqlite3.Connection, selection: EventFilter) -> list[str]:
    """The kinds of the selection's resource when it has COMMON_REF_ROWS references or more; else none."""
    if selection.ref is None or conn.execute(ref_rows_sql("?"), (selection.ref,)).fetchone()[0] < COMMON_REF_ROWS:
        return []
    kinds: list[str] = []
    while kind := conn.execute(next_ref_kind_sql("?"), (selection.ref, kinds[-1] if kinds else "")).fetchone()[0]:
        kinds.append(kind)
    return kinds


def _event(row: tuple[Any, ...]) -> StoredEvent:
    seq, id, type, occurred_at, received_at, headers, body, status = row
    received = parse_iso(received_at)
    assert received is not None  # NOT NULL in the schema
    return StoredEvent(seq, id, type, occurred_at, received, json.loads(headers), bytes(body), status)


def _run(row: tuple[Any, ...]) -> Run:
    event_id, handler, status, attempts, error, due, owner, until, started, finished, duration = row
    times = parse_iso(due), owner, parse_iso(until), parse_iso(started), parse_iso(finished)
    return Run(event_id, handler, status, attempts, error, *times, duration)


def _attempt(row: tuple[Any, ...]) -> Attempt:
    event_id, handler, attempt, owner, started, finished, duration, outcome, error = row
    return Attempt(event_id, handler, attempt, owner, parse_iso(started), parse_iso(finished), duration, outcome, error)


def _rejection(row: tuple[Any, ...]) -> Rejection:
    id, received_at, reason, remote, headers, body, message, detail = row
    received = parse_iso(received_at)
    assert received is not None  # NOT NULL in the schema
    details = None if detail is None else json.loads(detail)
    return Rejection(id, received, reason, remote, json.loads(headers), bytes(body or b""), message, details)
