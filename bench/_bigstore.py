"""A large SQLite store built fast through the public schema: `bench/scale.py`'s million events.

Rows go in with `executemany`, 50,000 to a transaction, through `receiver.stores.sqlite.store.connect`
(the receiver's own schema, pragmas and triggers): every event has one handler run, most succeeded,
one in a hundred dead, so the store looks like months of real traffic. Events are spread over the
last `days` days (oldest first, as they arrive), over a dozen types in four families. No ANALYZE:
a store that grew under an older receiver has no planner statistics, and the planner must still
pick the right indexes (this receiver gathers them when it opens such a store).

Run one: `python bench/_bigstore.py PATH EVENTS`.
"""

from __future__ import annotations

import json
import sys
import time

from _events import event_body

from receiver.stores.protocol import iso
from receiver.stores.sqlite.store import connect

TYPES = [
    "customer.created",
    "customer.updated",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_failed",
    "refund.created",
    "subscription.created",
    "subscription.upgraded",
    "subscription.downgraded",
    "subscription.canceled",
    "subscription.scheduled_change.created",
    "subscription.scheduled_change.canceled",
]
HANDLER = "bench.handlers.audit"
DEAD_EVERY = 100
"""One run in this many is dead: enough dead runs that a statement reading all of them shows."""
CHUNK = 50_000
_HEADERS = json.dumps({"content-type": "application/json", "user-agent": "bench"})


def event_id(n: int) -> str:
    return f"msg_big_{n:09d}"


def build(path: str, events: int, *, days: float = 60.0, now: float | None = None) -> None:
    """Store `events` events with one run each, received evenly over the `days` days before `now`."""
    now = time.time() if now is None else now
    step = days * 86400 / max(events, 1)
    start = now - days * 86400
    conn = connect(path)
    try:
        for first in range(0, events, CHUNK):
            rows = []
            runs = []
            for n in range(first, min(first + CHUNK, events)):
                at = iso(start + n * step)
                rows.append((event_id(n), TYPES[n % len(TYPES)], at, at, _HEADERS, event_body(n)))
                dead = n % DEAD_EVERY == 0
                status, error = ("dead", "RuntimeError: gave up") if dead else ("succeeded", None)
                runs.append((event_id(n), HANDLER, status, 1, error, at, at, at, 3.5))
            with conn:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO events (id, type, occurred_at, received_at, headers, body) VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.executemany(
                    "INSERT INTO handler_runs (event_id, handler, status, attempts, last_error, next_attempt_at, "
                    "started_at, finished_at, duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    runs,
                )
    finally:
        conn.close()


if __name__ == "__main__":
    started = time.monotonic()
    build(sys.argv[1], int(sys.argv[2]))
    print(f"built {int(sys.argv[2]):,} events in {time.monotonic() - started:.1f} s")
