"""The SQLite schema: public (users query it with sqlite-utils or Datasette), versioned with `user_version`."""

from __future__ import annotations

import sqlite3

from ...errors import ConfigurationError

__all__ = ["SCHEMA_VERSION", "migrate"]

# An event's status is derived from its runs, in the database itself, so that every
# writer (the receiver, `montra-hooks retry`, a user's own UPDATE) keeps it true.
_EVENT_STATUS = """
    UPDATE events SET status = (
        SELECT CASE
            WHEN count(*) = 0 THEN 'unhandled'
            WHEN sum(status = 'dead') > 0 THEN 'dead'
            WHEN sum(status = 'failed') > 0 THEN 'failed'
            WHEN sum(status IN ('pending', 'running')) > 0 THEN 'pending'
            ELSE 'handled'
        END
        FROM handler_runs WHERE event_id = {row}.event_id
    )
    WHERE id = {row}.event_id;
"""

_MIGRATIONS: list[str] = [
    # 1: the first public schema.
    f"""
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        occurred_at TEXT,
        received_at TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        status TEXT NOT NULL DEFAULT 'unhandled'
    );
    CREATE INDEX events_type ON events (type, seq);
    CREATE INDEX events_status ON events (status, seq);
    CREATE INDEX events_received_at ON events (received_at);

    CREATE TABLE handler_runs (
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        handler TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        next_attempt_at TEXT,
        lease_owner TEXT,
        lease_until TEXT,
        started_at TEXT,
        finished_at TEXT,
        duration_ms REAL,
        PRIMARY KEY (event_id, handler)
    );
    CREATE INDEX handler_runs_due ON handler_runs (status, next_attempt_at);
    CREATE INDEX handler_runs_handler ON handler_runs (handler, status);

    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at TEXT NOT NULL,
        reason TEXT NOT NULL,
        remote TEXT,
        headers TEXT NOT NULL,
        body BLOB
    );

    CREATE TRIGGER handler_runs_inserted AFTER INSERT ON handler_runs BEGIN
        {_EVENT_STATUS.format(row="NEW")}
    END;
    CREATE TRIGGER handler_runs_updated AFTER UPDATE OF status ON handler_runs BEGIN
        {_EVENT_STATUS.format(row="NEW")}
    END;
    CREATE TRIGGER handler_runs_deleted AFTER DELETE ON handler_runs BEGIN
        {_EVENT_STATUS.format(row="OLD")}
    END;
    """,
    # Attempt history and resource references (issue 14): self-contained, existing rows kept.
    # `handler_attempts` has its own id: a re-queued dead run counts its tries from 1 again.
    # `event_refs` rows for events stored before this step are not backfilled (their bodies are not re-read).
    """
    CREATE TABLE handler_attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        handler TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        owner TEXT,
        started_at TEXT,
        finished_at TEXT,
        duration_ms REAL,
        outcome TEXT NOT NULL,
        error TEXT
    );
    CREATE INDEX handler_attempts_event ON handler_attempts (event_id, handler, id);

    -- Keyed (ref, kind, seq): `--ref cus_...` (any kind) and an ordered lookup by (kind, ref) are both an index
    -- range on it, with one index written per reference rather than two. Prune deletes the rows with their
    -- events, so no foreign key check is paid at ingest (step 4 drops the seq index made here).
    CREATE TABLE event_refs (
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        PRIMARY KEY (ref, kind, seq)
    ) WITHOUT ROWID;
    CREATE INDEX event_refs_seq ON event_refs (seq);

    -- A refusal's explanation: the sentence the sender got, and the counts behind it (secrets, tolerance).
    ALTER TABLE rejections ADD COLUMN message TEXT;
    ALTER TABLE rejections ADD COLUMN detail TEXT;
    """,
    # 3: per-resource ordering (issue 15): existing rows kept, and unordered (their order_key stays NULL).
    # An ordered run carries its resource, its event's time and seq, and whether a dead run holds its successors,
    # so the claim's "is an earlier one unfinished" probe is one range of one index, whatever the history.
    # The index is partial: unordered runs (most) cost no entry; status is in the key, so a probe reads only
    # unfinished runs (or, for `superseded`, the succeeded ones after a time).
    """
    ALTER TABLE handler_runs ADD COLUMN order_key TEXT;
    ALTER TABLE handler_runs ADD COLUMN order_at TEXT;
    ALTER TABLE handler_runs ADD COLUMN order_seq INTEGER;
    ALTER TABLE handler_runs ADD COLUMN hold_on_dead INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX handler_runs_order ON handler_runs (handler, order_key, status, order_at, order_seq)
        WHERE order_key IS NOT NULL;
    """,
    # 4: `event_refs` keeps only its key. The seq index was a second B-tree insert per reference on the ingest
    # path (three references: about 13,000 of an event's 600,000 instructions); prune and the event page find an
    # event's rows by their keys instead, made again from its body by the function ingest used
    # (`receiver.event.stored_refs`). A change to what `resource_refs` extracts needs a step that rebuilds the
    # table: rows it no longer derives would outlive their events.
    """
    DROP INDEX event_refs_seq;
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to SCHEMA_VERSION, one transaction per step; refuse a newer one."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigurationError(
            f"The database has schema version {version}, newer than this montra-webhooks "
            f"understands ({SCHEMA_VERSION}): upgrade montra-webhooks or use another --db."
        )
    for step in range(version, SCHEMA_VERSION):
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            # Another process may have migrated while we waited for the lock.
            if conn.execute("PRAGMA user_version").fetchone()[0] > step:
                continue
            for statement in _split(_MIGRATIONS[step]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")


def _split(script: str) -> list[str]:
    """Split a migration into statements, keeping each trigger body whole."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
