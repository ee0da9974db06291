"""The statements the PostgreSQL store runs that are more than a line: a batch, a claim, a prune."""

from __future__ import annotations

from ..protocol import ATTEMPT_COLUMNS, CRASHED_ERROR, HELD, SUPERSEDED, TAKEOVER_NOTE

__all__ = [
    "CLAIM_ORDERED",
    "EVENT_COLUMNS",
    "FINISH",
    "INGEST",
    "PRUNE",
    "RELEASE",
    "RELEASE_LOCK",
    "RUN_COLUMNS",
    "candidates_sql",
    "claim_sql",
]

EVENT_COLUMNS = "seq, id, type, occurred_at, received_at, headers, body, status"
RUN_COLUMNS = (
    "event_id, handler, status, attempts, last_error, next_attempt_at, lease_owner, lease_until, "
    "started_at, finished_at, duration_ms"
)
# One statement stores a whole batch, in one round trip and one transaction of its own: the batch
# marks itself in flight (the join with `mark` reads it before the first row is stored), then new
# events (a duplicate id, in the table or earlier in the batch, is skipped by the unique index),
# their runs, and a fresh cycle for dead runs of duplicates. Binary parameters (%b) skip the
# escaping of text arrays, the costliest step in the client.
INGEST = """
WITH mark AS (
    SELECT montra_begin_batch()
), batch AS (
    SELECT * FROM unnest(
        %(ids)b::text[], %(types)b::text[], %(occurred)b::text[], %(received)b::timestamptz[],
        %(headers)b::jsonb[], %(bodies)b::bytea[], %(statuses)b::text[]
    ) WITH ORDINALITY AS b (id, type, occurred_at, received_at, headers, body, status, n)
), stored AS (
    INSERT INTO events (id, type, occurred_at, received_at, headers, body, status)
    SELECT id, type, occurred_at, received_at, headers, body, status FROM batch, mark ORDER BY n
    ON CONFLICT (id) DO NOTHING
    RETURNING id, seq
), runs AS (
    INSERT INTO handler_runs (event_id, handler, next_attempt_at, order_key, order_at, order_seq, hold_on_dead)
    SELECT r.event_id, r.handler, r.due, r.order_key, r.order_at,
        CASE WHEN r.order_key IS NOT NULL THEN stored.seq END, r.hold
    FROM unnest(
        %(run_ids)b::text[], %(run_handlers)b::text[], %(run_due)b::timestamptz[], %(run_keys)b::text[],
        %(run_order_at)b::timestamptz[], %(run_holds)b::boolean[]
    ) AS r (event_id, handler, due, order_key, order_at, hold)
    JOIN stored ON stored.id = r.event_id
), refs AS (
    INSERT INTO event_refs (seq, kind, ref)
    SELECT stored.seq, r.kind, r.ref
    FROM unnest(%(ref_ids)b::text[], %(ref_kinds)b::text[], %(ref_values)b::text[]) AS r (event_id, kind, ref)
    JOIN stored ON stored.id = r.event_id
    ON CONFLICT DO NOTHING
), requeued AS (
    UPDATE handler_runs SET status = 'pending', attempts = 0, next_attempt_at = %(now)b, lease_owner = NULL,
        lease_until = NULL
    WHERE event_id = ANY (%(ids)b::text[]) AND status = 'dead'
    RETURNING event_id
)
SELECT id, seq FROM stored UNION ALL SELECT event_id, NULL FROM requeued
"""
_WAITING = "status IN ('pending', 'failed') AND next_attempt_at <= %(now)s"
_UNFINISHED = "status IN ('pending', 'failed', 'dead')"
"""Inline mode runs every unfinished run of its event now, a dead one included."""
_EXPIRED = "status = 'running' AND lease_until < %(now)s"


def claim_sql(*, event: bool) -> str:
    """Due runs (or one event's unfinished runs) in two index-friendly halves, each skipping rows others lock."""
    waiting, only = (_UNFINISHED, "AND event_id = %(event_id)s") if event else (_WAITING, "")
    returning = ", ".join("r." + column for column in RUN_COLUMNS.split(", "))
    return f"""
WITH waiting AS (
    SELECT event_id, handler FROM handler_runs WHERE {waiting} AND handler = ANY (%(handlers)s) {only}
    ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT event_id, handler, attempts, lease_owner, started_at FROM handler_runs
    WHERE {_EXPIRED} AND handler = ANY (%(handlers)s) {only}
    ORDER BY lease_until LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), due AS (
    (SELECT * FROM waiting UNION ALL SELECT event_id, handler FROM expired) LIMIT %(limit)s
), crashed AS (
    -- A claimed run whose lease expired while `running` was a try that crashed: the rows `expired` read
    -- (as they were before the UPDATE), so this needs no second read of handler_runs.
    INSERT INTO handler_attempts ({ATTEMPT_COLUMNS})
    SELECT event_id, handler, attempts, lease_owner, started_at, NULL, NULL, 'crashed', {CRASHED_ERROR}
    FROM expired JOIN due USING (event_id, handler)
)
UPDATE handler_runs r SET status = 'running', lease_owner = %(owner)s, lease_until = %(until)s,
    attempts = attempts + 1, started_at = %(now)s, finished_at = NULL, duration_ms = NULL, {TAKEOVER_NOTE}
FROM due WHERE r.event_id = due.event_id AND r.handler = due.handler
RETURNING {returning}
"""


# One statement, so the counts and the rows deleted agree (a run's cascade would go uncounted). Only
# rows below the stream horizon: a batch still in flight is not the past, whatever its received_at.
# The oldest `limit` at a time, through the received_at index; rows another instance is pruning are skipped.
PRUNE = """
WITH old AS (
    SELECT id, seq FROM events WHERE received_at < %(cutoff)s AND seq <= %(horizon)s
    ORDER BY received_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), runs AS (
    DELETE FROM handler_runs WHERE event_id IN (SELECT id FROM old) RETURNING 1
), attempts AS (
    DELETE FROM handler_attempts WHERE event_id IN (SELECT id FROM old)
), refs AS (
    DELETE FROM event_refs WHERE seq IN (SELECT seq FROM old)
), gone AS (
    DELETE FROM events WHERE seq IN (SELECT seq FROM old) RETURNING seq
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM runs)
"""

# The run's update and its try's row in one statement (one transaction). `record` is false when no try was
# made (`finish(attempts=)`): the claim already recorded the crashed one.
FINISH = f"""
WITH run AS (
    UPDATE handler_runs SET status = %(status)s, last_error = %(error)s, next_attempt_at = %(due)s,
        lease_owner = NULL, lease_until = NULL, finished_at = %(finished)s, duration_ms = %(duration)s,
        attempts = coalesce(%(attempts)s, attempts)
    WHERE event_id = %(event_id)s AND handler = %(handler)s AND lease_owner = %(owner)s AND status = 'running'
    RETURNING event_id, handler, attempts, started_at, order_key
), tried AS (
    INSERT INTO handler_attempts ({ATTEMPT_COLUMNS})
    SELECT event_id, handler, attempts, %(owner)s, started_at, %(finished)s, %(duration)s, %(outcome)s, %(error)s
    FROM run WHERE %(record)s
)
SELECT count(*), max(order_key) FROM run
"""


# The candidates of an ordered claim: due runs, row-locked as `claim_sql` does, each with a transaction-scoped
# advisory lock on its (handler, resource) tried. A resource another claim is deciding on is skipped (that claim
# commits what it takes before it lets go); once held, the next statement's snapshot (CLAIM_ORDERED) sees every
# claim and finish committed before.
def candidates_sql(*, event: bool) -> str:
    waiting, only = (_UNFINISHED, "AND event_id = %(event_id)s") if event else (_WAITING, "")
    return f"""
WITH waiting AS (
    SELECT event_id, handler, order_key, next_attempt_at AS due FROM handler_runs
    WHERE {waiting} AND handler = ANY (%(handlers)s) {only}
    ORDER BY next_attempt_at LIMIT %(scan)s FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT event_id, handler, order_key, lease_until AS due FROM handler_runs
    WHERE {_EXPIRED} AND handler = ANY (%(handlers)s) {only}
    ORDER BY lease_until LIMIT %(scan)s FOR UPDATE SKIP LOCKED
), due AS (
    SELECT * FROM waiting UNION ALL SELECT * FROM expired ORDER BY due LIMIT %(scan)s
)
SELECT event_id, handler FROM due
WHERE order_key IS NULL OR pg_try_advisory_xact_lock(hashtext(handler), hashtext(order_key))
ORDER BY due
"""


# The second statement of an ordered claim, on the candidates the first locked (in due order, `n`): whether
# something holds each back (HELD) and whether it is superseded, read in this statement's fresh snapshot; then
# the first `limit` free ones are claimed and (unless `park` is false: an inline claim) the held ones parked.
_RETURNING = ", ".join("r." + column for column in RUN_COLUMNS.split(", "))
CLAIM_ORDERED = f"""
WITH candidate AS (
    SELECT * FROM unnest(%(ids)s::text[], %(names)s::text[]) WITH ORDINALITY AS c (event_id, handler, n)
), judged AS (
    SELECT r.event_id, r.handler, c.n, r.status, r.attempts, r.lease_owner, r.started_at,
        r.order_key IS NOT NULL AND {HELD.format(now="%(now)s")} AS held,
        r.order_key IS NOT NULL AND {SUPERSEDED} AS superseded
    FROM candidate c JOIN handler_runs r ON r.event_id = c.event_id AND r.handler = c.handler
), free AS (
    SELECT event_id, handler, superseded FROM judged WHERE NOT held ORDER BY n LIMIT %(limit)s
), parked AS (
    SELECT event_id, handler FROM judged WHERE held AND %(park)s
), crashed AS (
    INSERT INTO handler_attempts ({ATTEMPT_COLUMNS})
    SELECT event_id, handler, attempts, lease_owner, started_at, NULL, NULL, 'crashed', {CRASHED_ERROR}
    FROM judged WHERE status = 'running' AND (event_id, handler) IN (
        SELECT event_id, handler FROM free UNION ALL SELECT event_id, handler FROM parked
    )
), park AS (
    UPDATE handler_runs r SET status = CASE WHEN status = 'running' THEN 'pending' ELSE status END,
        lease_owner = NULL, lease_until = NULL, next_attempt_at = %(recheck)s, {TAKEOVER_NOTE}
    FROM parked WHERE r.event_id = parked.event_id AND r.handler = parked.handler
)
UPDATE handler_runs r SET status = 'running', lease_owner = %(owner)s, lease_until = %(until)s,
    attempts = attempts + 1, started_at = %(now)s, finished_at = NULL, duration_ms = NULL, {TAKEOVER_NOTE}
FROM free WHERE r.event_id = free.event_id AND r.handler = free.handler
RETURNING {_RETURNING}, free.superseded
"""

# A run of an ordered handler that succeeded or died lets the next one of its resource go now. A transaction
# after the finish committed: first the resource's advisory lock (RELEASE_LOCK), then this in a fresh snapshot,
# so a claim that parked that run meanwhile has committed (it held the lock) and is seen.
RELEASE_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%(handler)s), hashtext(%(key)s))"
RELEASE = """
UPDATE handler_runs SET next_attempt_at = %(now)s
WHERE (event_id, handler) = (
    SELECT event_id, handler FROM handler_runs
    WHERE handler = %(handler)s AND order_key = %(key)s AND status = 'pending' ORDER BY order_at, order_seq LIMIT 1
) AND next_attempt_at > %(now)s
"""
