"""Times as people type them: a duration (`90s`, `15m`, `2h`, `30d`, `1w`) or an ISO 8601 time.

The CLI (`--since 2h`, `prune --older-than 30d`) and the inspector's filters (`?since=2h`) read
them here, so both accept the same forms and say the same thing about a value they cannot read.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = ["MAX_DURATION", "parse_duration", "parse_when"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = 100 * 365 * 86400
"""Longer ago than this is before any webhook was sent (and past what a datetime holds, for huge numbers)."""


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `30d`, `1w` as seconds; `ValueError` with a sentence that says what to type."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, e.g. 30d, 12h, 15m.")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than 100 years: use e.g. 30d, 52w.")
    return seconds


def parse_when(text: str, *, now: float | None = None) -> datetime:
    """An ISO 8601 time (UTC when it names no zone), or a duration meaning that long ago (`2h`), as aware UTC.

    >>> parse_when("2026-11-25")
    datetime.datetime(2026, 11, 25, 0, 0, tzinfo=datetime.timezone.utc)
    """
    stripped = text.strip()
    if _DURATION.match(stripped):
        return datetime.fromtimestamp((time.time() if now is None else now) - parse_duration(stripped), UTC)
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time nor a duration: use e.g. 2026-11-25T17:00:00Z, 2026-11-25 or 2h."
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
