"""Per-resource ordering (`hooks.on(..., ordered_by=...)`): what an event's runs carry into the store.

The claim enforces the order (see `receiver.stores.protocol.HELD`); this module only says, at ingest,
which resource each ordered handler's run is about and where the event sits in time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC

from .event import parse_timestamp
from .hooks import Registration

__all__ = ["order_time", "run_ordering"]


def run_ordering(registrations: Iterable[Registration], refs: Sequence[tuple[str, str]]) -> dict[str, tuple[str, bool]]:
    """{handler: (resource id, hold_on_dead)} for the ordered handlers whose resource kind the event refers to.

    An event without that reference is not about one such resource: its run is unordered.
    """
    by_kind = dict(refs)
    ordering: dict[str, tuple[str, bool]] = {}
    for registration in registrations:
        if registration.ordered_by is not None and registration.ordered_by in by_kind:
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
