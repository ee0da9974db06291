"""The PostgreSQL schema: SQLite's tables, columns and statuses in native types, versioned in `montra_schema`.

Times are `timestamptz`, headers `jsonb`, bodies `bytea`. Two functions keep the stream's cursor safe
(see `store`): `montra_begin_batch()` marks a batch in flight before it takes any seq, and
`montra_stream_horizon()` is the newest seq below every batch still in flight.
"""

from __future__ import annotations

import psycopg

from ...errors import ConfigurationError

__all__ = ["BATCH_MARK", "SCHEMA_VERSION", "check_schema", "migrate"]

MIGRATION_LOCK = 0x6D6F6E7472610001
"""Advisory lock held while migrating: instances starting together migrate once."""
BATCH_MARK = 0x6D6F
"""The top 16 bits of the advisory lock keys that mark batches in flight; the low 48 bits are a seq."""

_MIGRATIONS: list[str] = [
    # 1: the first public schema.
    """
    CREATE TABLE events (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        type text NOT NULL,
        occurred_at text,
        received_at timestamptz NOT NULL,
        headers jsonb NOT NULL,
        body bytea NOT NULL,
        status text NOT NULL DEFAULT 'unhandled'
    );
    CREATE INDEX events_type ON events (type, seq);
    CREATE INDEX events_status ON events (status, seq);
    CREATE INDEX events_received_at ON events (received_at);

    CREATE TABLE handler_runs (
        event_id text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        handler text NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        next_attempt_at timestamptz,
        lease_owner text,
        lease_until timestamptz,
        started_at timestamptz,
        finished_at timestamptz,
        duration_ms double precision,
        PRIMARY KEY (event_id, handler)
    );
    -- Claims read only waiting runs and expired leases: partial indexes keep the finished history out of them.
    CREATE INDEX handler_runs_waiting ON handler_runs (next_attempt_at) WHERE status IN ('pending', 'failed');
    CREATE INDEX handler_runs_leased ON handler_runs (lease_until) WHERE status = 'running';
    CREATE INDEX handler_runs_owner ON handler_runs (lease_owner) WHERE status = 'running';
    CREATE INDEX handler_runs_handler ON handler_runs (handler, status);

    CREATE TABLE rejections (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        received_at timestamptz NOT NULL,
        reason text NOT NULL,
        remote text,
        headers jsonb NOT NULL,
        body bytea
    );

    -- An event's status is derived from its runs in the database, so every writer keeps it true.
    -- The events are locked first, in id order: a concurrent change to another run of the same
    -- event then commits before this function reads, and (in READ COMMITTED, each statement of a
    -- volatile function taking a new snapshot) the status it writes counts both changes.
    CREATE FUNCTION montra_event_status(ids text[]) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        IF cardinality(ids) = 0 THEN
            RETURN;
        END IF;
        PERFORM 1 FROM events WHERE id = ANY (ids) ORDER BY id FOR UPDATE;
        UPDATE events SET status = derived.status
        FROM (
            SELECT e.id, CASE
                WHEN count(r.handler) = 0 THEN 'unhandled'
                WHEN bool_or(r.status = 'dead') THEN 'dead'
                WHEN bool_or(r.status = 'failed') THEN 'failed'
                WHEN bool_or(r.status IN ('pending', 'running')) THEN 'pending'
                ELSE 'handled'
            END AS status
            FROM events e LEFT JOIN handler_runs r ON r.event_id = e.id
            WHERE e.id = ANY (ids)
            GROUP BY e.id
        ) AS derived
        WHERE events.id = derived.id AND events.status <> derived.status;
    END
    $$;

    CREATE FUNCTION montra_runs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            PERFORM montra_event_status(ARRAY(SELECT DISTINCT event_id FROM new_runs));
        ELSIF TG_OP = 'DELETE' THEN
            PERFORM montra_event_status(ARRAY(SELECT DISTINCT event_id FROM old_runs));
        ELSE
            PERFORM montra_event_status(ARRAY(
                SELECT DISTINCT n.event_id FROM new_runs n JOIN old_runs o USING (event_id, handler)
                WHERE n.status IS DISTINCT FROM o.status
            ));
        END IF;
        RETURN NULL;
    END
    $$;

    -- A batch marks itself in flight before it stores anything: a transaction-scoped advisory lock whose
    -- key holds the newest seq handed out so far, so every seq the batch stores is above it (shared: two
    -- batches may hold the same key). The lock ends with the transaction, committed or rolled back, and
    -- every session sees it at once in pg_locks.
    CREATE FUNCTION montra_begin_batch() RETURNS void LANGUAGE sql AS $$
        SELECT pg_advisory_xact_lock_shared(
            (BATCH_MARK::bigint << 48)
            | coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'seq')::regclass), 0)
        );
    $$;

    -- The newest seq a reader may serve: no seq at or below it can still appear. It reads the newest seq
    -- handed out, then the batches in flight, in that order: a batch marked after the first read stores
    -- seqs above that newest one, and one marked before it stays in pg_locks until it has ended.
    CREATE FUNCTION montra_stream_horizon() RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        handed_out bigint := coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'seq')::regclass), 0);
        in_flight bigint;
    BEGIN
        SELECT min(((classid::bigint << 32) | objid::bigint) & x'FFFFFFFFFFFF'::bigint) INTO in_flight
        FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 1 AND classid::bigint >> 16 = BATCH_MARK
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
        RETURN least(handed_out, in_flight);
    END
    $$;

    CREATE TRIGGER handler_runs_inserted AFTER INSERT ON handler_runs
        REFERENCING NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION montra_runs_changed();
    CREATE TRIGGER handler_runs_updated AFTER UPDATE ON handler_runs
        REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs
        FOR EACH STATEMENT EXECUTE FUNCTION montra_runs_changed();
    CREATE TRIGGER handler_runs_deleted AFTER DELETE ON handler_runs
        REFERENCING OLD TABLE AS old_runs FOR EACH STATEMENT EXECUTE FUNCTION montra_runs_changed();
    """,
    # 2: types compare in code point order ("C"), as in SQLite, so that a prefix filter (`subscription.*`)
    # is a range of the (type, seq) index; under a language's collation `.` and `/` may not sort as bytes.
    # The dead runs of a redelivered event are found by the primary key, not by status.
    """
    ALTER TABLE events ALTER COLUMN type TYPE text COLLATE "C";
    """,
    # 3: /metrics counts runs by status on every scrape: an index-only count of the unfinished ones
    # (partial, so the succeeded history neither grows it nor is read).
    """
    CREATE INDEX handler_runs_backlog ON handler_runs (status)
        WHERE status IN ('pending', 'running', 'failed', 'dead');
    """,
    # 4: attempt history and resource references: self-contained, existing rows kept.
    # `handler_attempts` has its own id: a re-queued dead run counts its tries from 1 again.
    # `event_refs` rows for events stored before this step are not backfilled (their bodies are not re-read).
    """
    CREATE TABLE handler_attempts (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        handler text NOT NULL,
        attempt integer NOT NULL,
        owner text,
        started_at timestamptz,
        finished_at timestamptz,
        duration_ms double precision,
        outcome text NOT NULL,
        error text
    );
    CREATE INDEX handler_attempts_event ON handler_attempts (event_id, handler, id);

    -- Keyed (ref, kind, seq): `--ref cus_...` (any kind) and an ordered lookup by (kind, ref) are both an index
    -- range on it, with one index written per reference rather than two. Prune deletes the rows with their
    -- events (by `seq`), so no foreign key check is paid at ingest.
    CREATE TABLE event_refs (
        seq bigint NOT NULL,
        kind text NOT NULL,
        ref text NOT NULL,
        PRIMARY KEY (ref, kind, seq)
    );
    CREATE INDEX event_refs_seq ON event_refs (seq);

    -- A refusal's explanation: the sentence the sender got, and the counts behind it (secrets, tolerance).
    ALTER TABLE rejections ADD COLUMN message text;
    ALTER TABLE rejections ADD COLUMN detail jsonb;
    """,
    # 5: per-resource ordering: existing rows kept, and unordered (their order_key stays NULL). An ordered run
    # carries its resource, its event's time and seq, and whether a dead run holds back its successors, so the
    # claim's "is an earlier one unfinished" probe is one range of one index. Partial: unordered runs cost no
    # entry; status in the key: a probe reads only unfinished runs (or, for `superseded`, succeeded ones).
    # The new columns have constant defaults: adding them rewrites no row.
    """
    ALTER TABLE handler_runs ADD COLUMN order_key text;
    ALTER TABLE handler_runs ADD COLUMN order_at timestamptz;
    ALTER TABLE handler_runs ADD COLUMN order_seq bigint;
    ALTER TABLE handler_runs ADD COLUMN hold_on_dead boolean NOT NULL DEFAULT false;
    CREATE INDEX handler_runs_order ON handler_runs (handler, order_key, status, order_at, order_seq)
        WHERE order_key IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Bring the database up to SCHEMA_VERSION in one transaction; refuse a newer one."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS montra_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM montra_schema").fetchone()
        version = int(str(row[0])) if row else 0
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"The database has schema version {version}, newer than this montra-webhooks "
                f"understands ({SCHEMA_VERSION}): upgrade montra-webhooks or use another --db."
            )
        for step in range(version, SCHEMA_VERSION):
            conn.execute(_MIGRATIONS[step].replace("BATCH_MARK", str(BATCH_MARK)).encode())
        if row is None:
            conn.execute("INSERT INTO montra_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            conn.execute("UPDATE montra_schema SET version = %s", (SCHEMA_VERSION,))


def check_schema(conn: psycopg.Connection[tuple[object, ...]], *, name: str) -> None:
    """Raise ConfigurationError, naming the store, unless the database holds one this version can read.

    For read-only use: nothing is created or migrated.
    """
    exists = conn.execute("SELECT to_regclass('montra_schema') IS NOT NULL").fetchone()
    row = conn.execute("SELECT max(version) FROM montra_schema").fetchone() if exists and exists[0] else None
    version = int(str(row[0])) if row and row[0] is not None else 0
    if version < 1:
        raise ConfigurationError(
            f"No event store in the database at {name}: pass the --db that `montra-hooks serve` uses."
        )
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"The event store at {name} has schema version {version}, newer than this montra-webhooks "
            f"understands ({SCHEMA_VERSION}): upgrade montra-webhooks."
        )
