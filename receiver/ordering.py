"""Per-resource ordering (`hooks.on(..., ordered_by=...)`): what an event's runs carry into the store.

The claim enforces the order (see `receiver.stores.protocol.HELD`); this module only says, at ingest,
which resource each ordered handler's run is about and where the event sits in time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC

from .event import parse_timestamp
from .hooks import Registration
from .stores.protocol import Waiting, iso

__all__ = ["order_time", "run_ordering", "waiting_text"]


def run_ordering(registrations: Iterable[Registration], refs: Sequence[tuple[str, str]]) -> dict[str, tuple[str, bool]]:
    """{handler: (resource id, hold_on_dead)} for the ordered handlers whose resource kind the event refers to.

    An event without that reference is not about one such resource: its run is unordered.
    """
    ordering: dict[str, tuple[str, bool]] = {}
    by_kind: dict[str, str] | None = None  # built for the first ordered handler: most events have none
    for registration in registrations:
        if registration.ordered_by is not None:
            by_kind = dict(refs) if by_kind is None else by_kind
            if registration.ordered_by in by_kind:
                ordering[registration.name] = (by_kind[registration.ordered_by], registration.hold_on_dead)
    return ordering


def order_time(timestamp: object) -> float | None:
    """The envelope's `timestamp` as Unix seconds (a time without an offset read as UTC), or None."""
    moment = parse_timestamp(timestamp)
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):  # a year the platform's clock cannot count: no usable time
        return None


def waiting_text(waiting: Waiting, max_attempts: int | None = None) -> str:
    """`waiting for evt_... (failed, try 2 of 7)`: the earlier run of the same handler and resource in the way.

    `max_attempts` is the handler's, when the caller knows its registration (the CLI reads only the store).
    """
    if waiting.status == "pending" and not waiting.attempts:
        state = "pending, not tried yet"
    else:
        state = f"{waiting.status}, try {waiting.attempts}" + (f" of {max_attempts}" if max_attempts else "")
    if waiting.status == "failed" and waiting.next_attempt_at is not None:
        state += f", next try at {iso(waiting.next_attempt_at)}"
    return f"waiting for {waiting.event_id} ({state})"
