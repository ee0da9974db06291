"""What the receiver keeps, and the interface every store backend offers.

SQLite (`SQLiteStore`) is the embedded default; PostgreSQL (`PostgresStore`) serves several
receivers behind one load balancer. The app, the dispatcher, the stream and the CLI use only
the `Store` protocol below (`receiver.stores.open_store` picks the backend from `--db`).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Literal, Protocol

from ..event import AttemptOutcome, EventStatus, RunStatus

__all__ = [
    "ATTEMPT_COLUMNS",
    "ATTEMPT_OUTCOME",
    "BACKLOG_STATUSES",
    "COMMON_HANDLER_RUNS",
    "COMMON_REF_ROWS",
    "CRASHED_ERROR",
    "HELD",
    "HOLD_RECHECK",
    "MAX_MERGED_TYPES",
    "MAX_REJECTIONS",
    "PROCESS_DIED",
    "REDACTED",
    "REJECTED_BODY_BYTES",
    "REJECTION_COLUMNS",
    "SENSITIVE_HEADERS",
    "SUPERSEDED",
    "TAKEOVER_NOTE",
    "Attempt",
    "Backlog",
    "EventFilter",
    "Incoming",
    "IngestResult",
    "Rejection",
    "Run",
    "Store",
    "StoredEvent",
    "Waiting",
    "backlog_from",
    "count_events_sql",
    "distinct_types_sql",
    "handler_runs_sql",
    "is_takeover",
    "iso",
    "iter_pages",
    "next_ref_kind_sql",
    "parse_iso",
    "redact",
    "redacted_json",
    "ref_rows_sql",
    "select_events_sql",
    "stored_types_sql",
    "type_clause",
    "type_ranges",
    "with_exact_types",
]

MAX_REJECTIONS = 1000
"""`rejections` keeps the newest this many rows."""
REJECTED_BODY_BYTES = 4096
"""A rejected request's body is kept only this far, for diagnosis."""

SENSITIVE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
REDACTED = "[redacted]"


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case header names and hide credentials: nothing stored or streamed carries them."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        name = name.lower()
        out[name] = REDACTED if name in SENSITIVE_HEADERS else value
    return out


def redacted_json(headers: Mapping[str, str]) -> str:
    """`redact(headers)` as the JSON object the stores keep: exactly what `json.dumps` writes.

    Every request's headers are stored, and the general encoder takes 1.6 times as long for them.
    """
    pairs = [f"{_quote(name)}: {_quote(value)}" for name, value in redact(headers).items()]
    return "{" + ", ".join(pairs) + "}"


def iso(t: float | datetime) -> str:
    """A time as SQLite stores it and the CLI prints it: ISO 8601 UTC, microseconds, `Z`; sorts as it compares."""
    global _iso_second
    if isinstance(t, datetime):
        t = t.timestamp()
    whole = int(t // 1)
    micros = round((t - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    # Formatting a datetime is the costliest step of storing an event: do it once a second.
    cached = _iso_second  # one read: another thread may replace it meanwhile
    if cached[0] != whole:
        cached = _iso_second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros:06d}Z"


_iso_second: tuple[int, str] = (-1, "")


def parse_iso(text: str | None) -> datetime | None:
    """`iso`'s text back as an aware UTC datetime (None stays None): what crosses the Store protocol."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class Incoming:
    """A verified webhook about to be stored, with the names of the handlers it will run.

    Not frozen: one is built for every request, and a frozen dataclass's `__init__` costs three times as much.
    """

    id: str
    type: str
    occurred_at: str | None
    received_at: float
    headers: Mapping[str, str]
    body: bytes
    handlers: Sequence[str] = ()
    refs: Sequence[tuple[str, str]] = ()
    """(kind, id) pairs from `receiver.event.resource_refs` of the body's `data`, stored in `event_refs` with the
    event. They must be exactly those: the SQLite store finds an event's rows again from its body."""
    ordering: Mapping[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    """For each ordered handler among `handlers` (`ordered_by`), the event's resource id of that kind and
    the handler's `hold_on_dead`: its run's `order_key` and `hold_on_dead`. Handlers absent run unordered."""
    order_at: float | None = None
    """The envelope's `timestamp` in Unix seconds, when it has a readable one and some run is ordered:
    ordered runs start in this order (then `seq`); without one, `received_at` stands in."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: Literal["stored", "duplicate"]
    seq: int | None = None
    requeued: int = 0
    """Dead runs a duplicate delivery put back in the queue."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A row of `events`."""

    seq: int
    id: str
    type: str
    occurred_at: str | None
    """The envelope's `timestamp`, as the sender wrote it."""
    received_at: datetime
    headers: dict[str, str]
    body: bytes
    status: EventStatus

    def body_json(self) -> dict[str, str]:
        """The exact body as JSON carries it: `{"body": text}` when it is UTF-8, else `{"body_b64": ...}`."""
        try:
            return {"body": self.body.decode("utf-8")}
        except UnicodeDecodeError:
            return {"body_b64": base64.b64encode(self.body).decode("ascii")}


@dataclass(frozen=True, slots=True)
class Run:
    """A row of `handler_runs`: one handler's work on one event."""

    event_id: str
    handler: str
    status: RunStatus
    attempts: int
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    lease_owner: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    superseded: bool = False
    """Set by `claim` for an ordered run: its handler already succeeded on a newer event about the resource."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """The run an ordered run waits for (`Store.waiting_for`): the same handler, an earlier event on its resource."""

    event_id: str
    status: RunStatus
    attempts: int
    next_attempt_at: datetime | None = None


HOLD_RECHECK = 10.0
"""Seconds a claim parks a run held back by an earlier one (its `next_attempt_at` moves this far ahead), so
claims and `next_due` skip it without probing it again. A finish releases the next run at once; this bound
only matters when the run it waits for ends another way (pruned, edited by hand)."""
# What holds back an ordered run `r` (a `handler_runs` row): an earlier run (by order_at, then order_seq) of the
# same handler and resource not finished, or dead when `r` holds on dead; or any other run of them running under
# a live lease (an event that arrived late may be earlier than one already running). Each EXISTS is a range of
# the (handler, order_key, status, order_at, order_seq) index: the finished history is never read.
# Parameter: the claim's time (`{now}`), in the backend's placeholder.
HELD = (
    "(EXISTS (SELECT 1 FROM handler_runs p WHERE p.handler = r.handler AND p.order_key = r.order_key "
    "AND p.status IN ('pending', 'running', 'failed') AND (p.order_at, p.order_seq) < (r.order_at, r.order_seq)) "
    "OR (r.hold_on_dead AND EXISTS (SELECT 1 FROM handler_runs p WHERE p.handler = r.handler "
    "AND p.order_key = r.order_key AND p.status = 'dead' AND (p.order_at, p.order_seq) < (r.order_at, r.order_seq))) "
    "OR EXISTS (SELECT 1 FROM handler_runs p WHERE p.handler = r.handler AND p.order_key = r.order_key "
    "AND p.status = 'running' AND p.lease_until >= {now} AND p.event_id <> r.event_id))"
)
# A newer event (by order_at alone: the envelope's time) about the same resource already succeeded.
SUPERSEDED = (
    "EXISTS (SELECT 1 FROM handler_runs p WHERE p.handler = r.handler AND p.order_key = r.order_key "
    "AND p.status = 'succeeded' AND p.order_at > r.order_at)"
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row of `rejections`: a refused request, kept for diagnosis (the newest MAX_REJECTIONS)."""

    id: int
    received_at: datetime
    reason: str
    """The error code the sender got (`invalid_signature`, ...)."""
    remote: str | None
    headers: dict[str, str]
    body: bytes
    """At most REJECTED_BODY_BYTES of it."""
    message: str | None = None
    """The sentence the sender got; None for rows stored before schema v2."""
    detail: dict[str, Any] | None = None
    """Counts behind the refusal: `secrets` configured, `tolerance` in seconds."""


REJECTION_COLUMNS = "id, received_at, reason, remote, headers, body, message, detail"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A row of `handler_attempts`: one try of one handler on one event, kept after its run ends."""

    event_id: str
    handler: str
    attempt: int
    owner: str | None
    started_at: datetime | None
    finished_at: datetime | None
    """None for a `crashed` try: its process died without saying when."""
    duration_ms: float | None
    outcome: AttemptOutcome
    error: str | None = None


ATTEMPT_COLUMNS = "event_id, handler, attempt, owner, started_at, finished_at, duration_ms, outcome, error"
ATTEMPT_OUTCOME: dict[str, AttemptOutcome] = {"succeeded": "succeeded", "failed": "failed", "dead": "dead"}
"""A try's outcome when `finish` is not told one: what the run's new status says of it."""

PROCESS_DIED = "The receiver's process died while this handler ran"
"""How `last_error` begins once a claim has taken over a try whose process died (its lease expired)."""

# A SQL expression over a `handler_runs` row still `running` whose process died: which try and process.
CRASHED_ERROR = (
    "'"
    + PROCESS_DIED.replace("'", "''")
    + " (try ' || attempts || ', process ' || coalesce(lease_owner, 'unknown') || ').'"
)
# An assignment for a claim's SET list, where the right-hand sides read the row as it was before the claim:
# taking over a run still `running` means its process died mid-try, and the note says which try and process.
TAKEOVER_NOTE = f"last_error = CASE WHEN status = 'running' THEN {CRASHED_ERROR} ELSE last_error END"


def is_takeover(run: Run) -> bool:
    """True when the claim that returned `run` took it over from a process that died while it ran."""
    return (run.last_error or "").startswith(PROCESS_DIED + " (try ")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to read. Type patterns: `subscription.upgraded`, `subscription.*`, `*`."""

    ids: Sequence[str] = ()
    types: Sequence[str] = ()
    status: Sequence[str] = ()
    since: datetime | None = None
    """`received_at` at or after this time."""
    until: datetime | None = None
    """`received_at` before this time."""
    after_seq: int | None = None
    max_seq: int | None = None
    ref: str | None = None
    """Events about this resource id (`cus_...`), of any kind: a row of `event_refs`."""
    handler: str | None = None
    """Events with a run of this handler (`module.qualname`)."""
    limit: int | None = None
    newest_first: bool = False


BACKLOG_STATUSES = ("pending", "running", "failed", "dead")
"""The run statuses `Store.backlog` counts: work not done (the succeeded history is never read)."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """The dispatcher's work left, as `/metrics` reports it."""

    runs: Mapping[str, int]
    """Runs by status, every one of BACKLOG_STATUSES (0 when none)."""
    oldest_due: datetime | None
    """Since when the longest-waiting due run has been due (its retry time came, or its lease expired);
    None when no run is due."""


def backlog_from(
    counts: Mapping[str, int], *, waiting: Sequence[datetime | None], leased: datetime | None, now: float
) -> Backlog:
    """A Backlog from what a backend read: counts by status, the earliest `next_attempt_at` of waiting runs
    and the earliest `lease_until` of running ones (None for none)."""
    due = [t for t in waiting if t is not None and t.timestamp() <= now]
    if leased is not None and leased.timestamp() < now:  # its process stopped renewing it: to be taken over
        due.append(leased)
    return Backlog({status: counts.get(status, 0) for status in BACKLOG_STATUSES}, min(due, default=None))


class Store(Protocol):
    """The store interface. Every write is durable when its coroutine returns.

    Times cross it as aware UTC `datetime`s when read and Unix seconds (floats) when written: each backend
    keeps its own column types (ISO text in SQLite, timestamptz in PostgreSQL) to itself.
    """

    path: str

    async def ingest(self, incoming: Incoming) -> IngestResult: ...
    def reject(
        self,
        *,
        reason: str,
        remote: str | None,
        headers: Mapping[str, str],
        body: bytes,
        message: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...
    async def check_writable(self) -> bool: ...
    def free_space(self) -> int | None:
        """Bytes free on the disk holding the store; None when it cannot tell (a database server's disk)."""
        ...

    async def close(self) -> None: ...

    # Reading.
    async def get_event(self, event_id: str) -> StoredEvent | None: ...
    async def get_runs(self, event_id: str) -> list[Run]: ...
    async def get_attempts(self, event_id: str) -> list[Attempt]:
        """Every recorded try of every handler on this event, by handler then in the order they ended."""
        ...

    async def get_refs(self, event_id: str) -> list[tuple[str, str]]:
        """The (kind, id) pairs stored in `event_refs` for this event, sorted."""
        ...

    async def list_events(self, selection: EventFilter) -> list[StoredEvent]: ...
    async def event_types(self, patterns: Sequence[str] = ()) -> list[str]:
        """The distinct stored types that match `patterns` (every one when empty or `*`), sorted.

        One index seek per type found (`stored_types_sql`), however many events each has.
        """
        ...

    async def list_rejections(
        self, *, reasons: Sequence[str] = (), since: datetime | None = None, limit: int = 50
    ) -> list[Rejection]:
        """Refused requests, newest first."""
        ...

    async def get_rejection(self, rejection_id: int) -> Rejection | None: ...
    async def count_events(self, selection: EventFilter, *, cap: int) -> int:
        """How many events match `selection` (its limit ignored), counting no further than `cap`."""
        ...

    def iter_events(self, selection: EventFilter, *, page: int = 500) -> AsyncIterator[StoredEvent]: ...
    async def seq_bounds(self) -> tuple[int, int]:
        """(oldest seq stored or the next one, newest seq a reader may serve: none at or below it can still appear)."""
        ...

    def watch(self, on_stored: Callable[[], None]) -> None:
        """Call `on_stored` when another process stores events (readers also poll: this only makes it sooner)."""
        ...

    def observe_batches(self, observe: Callable[[int], None] | None) -> None:
        """Call `observe(n)` after each group commit with the n writes it committed together (None: stop)."""
        ...

    async def backlog(self, *, now: float) -> Backlog:
        """Runs by status and the oldest due run, for `/metrics`: index-bounded, as cheap on a million runs."""
        ...

    # Dispatching: runs are claimed with a lease, and only the lease holder records an outcome.
    # `finish(attempts=)` corrects the count a claim made when no try was started (a takeover that gives up).
    # `finish` records the try in `handler_attempts` in the same transaction (`outcome`, or the one the new
    # status implies), unless `attempts=` says none was made; a claim that takes over a run still `running`
    # records that try as `crashed`.
    # With `ordered=True` (some of `handlers` are `ordered_by` a resource) a run with an `order_key` is taken
    # only when nothing holds it back (HELD): one run of a handler per resource at a time, earliest first.
    # A held run is parked (HOLD_RECHECK) rather than probed at every claim, and `finish` of a run that
    # succeeded or died releases the next one of its resource at once. `Run.superseded` is set for the others.
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
    ) -> list[Run]: ...
    async def waiting_for(self, event_id: str, handler: str) -> Waiting | None:
        """The run this ordered run waits for: the earliest unfinished earlier one of its handler and resource
        (dead counts when it holds on dead), else one running now; None when it waits for nothing."""
        ...

    async def renew(self, *, owner: str, until: float) -> int: ...
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
    ) -> bool: ...
    async def release(self, *, owner: str) -> int: ...
    async def requeue(
        self, *, ids: Sequence[str] = (), handler: str | None = None, status: Sequence[str] = ("failed", "dead")
    ) -> int: ...
    async def orphaned_runs(self, handlers: Sequence[str]) -> dict[str, int]: ...
    async def next_due(self, handlers: Sequence[str]) -> datetime | None: ...

    async def prune(self, *, before: float, limit: int | None = None) -> dict[str, int]:
        """Delete events received before `before` (the oldest first; at most `limit`) and their runs; counts."""
        ...

    async def count_prunable(self, *, before: float) -> dict[str, int]:
        """What `prune(before=...)` would delete, by table."""
        ...

    async def optimize(self) -> None:
        """Refresh the query planner's statistics: after a large prune, or when the store has grown."""
        ...


def select_events_sql(
    selection: EventFilter,
    *,
    columns: str,
    mark: str,
    time: Callable[[datetime], Any],
    ordered: bool = True,
    common_handler: bool = False,
    common_ref_kinds: Sequence[str] = (),
    ref_array: bool = False,
) -> tuple[str, list[Any]]:
    """The query both backends run for `selection`, with `mark` as the parameter placeholder.

    `time` turns a filter's datetime into the backend's column value. `common_handler` says the
    handler filter's handler has at least COMMON_HANDLER_RUNS runs (`handler_runs_sql` counts them);
    `common_ref_kinds`, the kinds of a resource filter's resource with at least COMMON_REF_ROWS
    references (`ref_rows_sql` counts them; none: it has fewer). `ref_array` (PostgreSQL) reads a
    resource filter's seqs as an array first.
    Several exact types with a limit (what `distinct_types_sql` turns a prefix into) are read as one
    index walk per type, each stopping at the limit, then merged: one walk over all of them in seq
    order would sort every matching row of the store to keep the first few.
    """
    where: list[str] = []
    params: list[Any] = []

    def marks(values: Sequence[Any]) -> str:
        params.extend(values)
        return ", ".join([mark] * len(values))

    if selection.ids:
        where.append(f"id IN ({marks(selection.ids)})")
    if selection.status:
        where.append(f"status IN ({marks(selection.status)})")
    if selection.ref is not None and common_ref_kinds:
        # On many events: walk them in the page's order, probing each one's reference by the full key.
        ref, kinds = marks([selection.ref]), marks(common_ref_kinds)
        where.append(
            f"EXISTS (SELECT 1 FROM event_refs r WHERE r.ref = {ref} AND r.kind IN ({kinds}) AND r.seq = events.seq)"
        )
    elif selection.ref is not None:  # on few: read its seqs first, one range of the key
        # The page's seq bounds inside too: PostgreSQL does not carry `events.seq <= x` into the subquery, and
        # walks the event_refs_seq index down from x for the resource instead of the (ref, kind, seq) key.
        about = f"SELECT seq FROM event_refs WHERE ref = {marks([selection.ref])}"
        if selection.after_seq is not None:
            about += f" AND seq > {marks([selection.after_seq])}"
        if selection.max_seq is not None:
            about += f" AND seq <= {marks([selection.max_seq])}"
        # PostgreSQL plans `seq IN (...)` as a merge join walking events and event_refs in seq order, which reads
        # the whole store for a resource with few events (355 ms on a million, against 0.1 ms): `ref_array` has
        # it read the resource's seqs first, once (an init plan), then fetch those events by key.
        where.append(f"seq = ANY (ARRAY({about}))" if ref_array else f"seq IN ({about})")
    if selection.handler is not None:
        if common_handler:  # on most events: walk them in the page's order, probing the (event_id, handler) key
            where.append(f"EXISTS (SELECT 1 FROM handler_runs r WHERE r.event_id = events.id AND r.handler = {mark})")
            params.append(selection.handler)
        else:  # on few: read its runs first, through the (handler, status) index
            where.append(f"id IN (SELECT event_id FROM handler_runs WHERE handler = {marks([selection.handler])})")
    for column, op, value in (
        ("received_at", ">=", None if selection.since is None else time(selection.since)),
        ("received_at", "<", None if selection.until is None else time(selection.until)),
        ("seq", ">", selection.after_seq),
        ("seq", "<=", selection.max_seq),
    ):
        if value is not None:
            where.append(f"{column} {op} {marks([value])}")
    order = "" if not ordered else " ORDER BY seq DESC" if selection.newest_first else " ORDER BY seq"
    types = list(selection.types)
    exact = types and all(t != "*" and not t.endswith(".*") for t in types)
    if exact and selection.limit is not None and not selection.ids and 1 < len(types) <= MAX_MERGED_TYPES:
        rest, rest_params = "".join(f" AND {clause}" for clause in where), params
        params = []
        arms = []
        for n, name in enumerate(types):
            params.extend([name, *rest_params, selection.limit])
            arms.append(
                f"SELECT seq FROM (SELECT seq FROM events WHERE type = {mark}{rest}{order} LIMIT {mark}) AS arm{n}"
            )
        sql = f"SELECT {columns} FROM events WHERE seq IN ({' UNION ALL '.join(arms)}){order} LIMIT {mark}"
        return sql, [*params, selection.limit]
    if types:
        clause, type_params = type_clause(types, mark=mark)
        where.insert(0, clause)
        params[:0] = type_params
    sql = f"SELECT {columns} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += order
    if selection.limit is not None:
        sql += f" LIMIT {marks([selection.limit])}"
    return sql, params


COMMON_HANDLER_RUNS = 10_000
"""A handler filter reads the handler's runs first (an index range) when it has fewer runs than this; a
handler with more is on a large share of the events, so the filter walks the events in the page's order and
probes each one's run by its key, stopping at the limit. Measured on a million-event store, a newest page of
100: a handler on every event 1,166 ms read by its runs against 0.1 ms walked; a handler on one event in
2,000 1.6 ms read by its runs against 148 ms walked."""


def handler_runs_sql(mark: str) -> str:
    """How many runs one handler has, counted up to COMMON_HANDLER_RUNS (one index range, bounded)."""
    return (
        f"SELECT count(*) FROM (SELECT 1 FROM handler_runs WHERE handler = {mark} LIMIT {COMMON_HANDLER_RUNS}) AS runs"
    )


COMMON_REF_ROWS = 10_000
"""A resource filter reads the resource's seqs first (one range of the `event_refs` key) when it has fewer
references than this; one with more is on a large share of the events, so the filter walks the events in the
page's order and probes each one's reference by the full key (ref, kind, seq), stopping at the limit.
Measured on a million-event store, a newest page of 50: a customer on 833,332 events 168 ms read by its seqs
against 0.13 ms walked; a subscription on one event 0.06 ms read by its seqs against 1,416 ms walked."""


def ref_rows_sql(mark: str) -> str:
    """How many references one resource id has, counted up to COMMON_REF_ROWS (one range of the key, bounded)."""
    return f"SELECT count(*) FROM (SELECT 1 FROM event_refs WHERE ref = {mark} LIMIT {COMMON_REF_ROWS}) AS refs"


def next_ref_kind_sql(mark: str) -> str:
    """The resource's next kind after the one given (parameters: ref, kind; "" for the first): one key seek."""
    return f"SELECT min(kind) FROM event_refs WHERE ref = {mark} AND kind > {mark}"


MAX_MERGED_TYPES = 64
"""Past this many types a listing is one index range and a sort: a statement of more arms costs more to plan."""


def type_ranges(patterns: Sequence[str]) -> list[tuple[str, str]]:
    """The `[low, high)` range of types each `prefix.*` pattern covers."""
    return [(p[:-1], p[:-2] + "/") for p in patterns if p.endswith(".*") and p != "*"]


def distinct_types_sql(mark: str) -> str:
    """The distinct stored types in one `[low, high)` range: one index seek per type, not a read of every row.

    Parameters: low, high, high. The recursion steps from one type to the next one above it.
    """
    return (
        "WITH RECURSIVE t (type) AS ("
        f"SELECT min(type) FROM events WHERE type >= {mark} AND type < {mark} "
        f"UNION ALL SELECT (SELECT min(type) FROM events WHERE type > t.type AND type < {mark}) "
        "FROM t WHERE t.type IS NOT NULL"
        ") SELECT type FROM t WHERE type IS NOT NULL"
    )


def stored_types_sql(patterns: Sequence[str], *, mark: str) -> list[tuple[str, list[Any]]]:
    """Statements whose rows, together, are the distinct stored types matching `patterns` (all when empty or `*`).

    A range or the whole table is walked one type at a time (`distinct_types_sql`); an exact type is one seek.
    """
    if not patterns or "*" in patterns:
        every = (
            "WITH RECURSIVE t (type) AS (SELECT min(type) FROM events "
            "UNION ALL SELECT (SELECT min(type) FROM events WHERE type > t.type) FROM t WHERE t.type IS NOT NULL"
            ") SELECT type FROM t WHERE type IS NOT NULL"
        )
        return [(every, [])]
    statements = [(distinct_types_sql(mark), [low, high, high]) for low, high in type_ranges(patterns)]
    exact = dict.fromkeys(p for p in patterns if not p.endswith(".*"))
    statements += [(f"SELECT type FROM events WHERE type = {mark} LIMIT 1", [name]) for name in exact]
    return statements


def with_exact_types(selection: EventFilter, stored: Sequence[str]) -> EventFilter:
    """`selection` with each `prefix.*` replaced by the `stored` types it covers (`*` is left alone)."""
    if "*" in selection.types:
        return selection
    exact = [t for t in selection.types if not t.endswith(".*")]
    return dataclasses.replace(selection, types=list(dict.fromkeys([*exact, *stored])))


def count_events_sql(
    selection: EventFilter,
    *,
    cap: int,
    mark: str,
    time: Callable[[datetime], Any],
    common_handler: bool = False,
    common_ref_kinds: Sequence[str] = (),
    ref_array: bool = False,
) -> tuple[str, list[Any]]:
    """A count of the events `selection` matches that stops at `cap` rows: cheap however many there are."""
    capped = dataclasses.replace(selection, limit=cap, newest_first=False)
    # Unordered: a count needs no order, and `ORDER BY seq` would make a time window a walk of the whole
    # table in seq order (the planner follows the order, not the received_at index) when it holds fewer than `cap`.
    inner, params = select_events_sql(
        capped,
        columns="1",
        mark=mark,
        time=time,
        ordered=False,
        common_handler=common_handler,
        common_ref_kinds=common_ref_kinds,
        ref_array=ref_array,
    )
    return f"SELECT count(*) FROM ({inner}) AS matching", params


def type_clause(patterns: Sequence[str], *, mark: str = "?") -> tuple[str, list[Any]]:
    """SQL matching `type` against patterns: exact, `prefix.*` (any depth below), `*`."""
    if "*" in patterns:
        return "TRUE", []
    parts: list[str] = []
    params: list[Any] = []
    for pattern in patterns:
        if pattern.endswith(".*"):
            # A range over the (type, seq) index, not substr() or LIKE: those scan every row, and LIKE
            # would read `_` and `%` in a type as wildcards. Every type that starts with `prefix.` sorts
            # at or after it and before `prefix/` ('/' follows '.'), in code point order: SQLite's BINARY
            # collation, and PostgreSQL's "C", which the column uses there.
            prefix = pattern[:-1]
            parts.append(f"(type >= {mark} AND type < {mark})")
            params.extend([prefix, prefix[:-1] + "/"])
        else:
            parts.append(f"type = {mark}")
            params.append(pattern)
    return "(" + " OR ".join(parts) + ")", params


async def iter_pages(store: Store, selection: EventFilter, *, page: int) -> AsyncIterator[StoredEvent]:
    """Every selected event in seq order, read a page at a time: memory does not grow with the count."""
    after = selection.after_seq
    remaining = selection.limit
    while remaining is None or remaining > 0:
        size = page if remaining is None else min(page, remaining)
        query = dataclasses.replace(selection, after_seq=after, limit=size, newest_first=False)
        rows = await store.list_events(query)
        for row in rows:
            yield row
        if len(rows) < size:
            return
        after = rows[-1].seq
        if remaining is not None:
            remaining -= len(rows)
