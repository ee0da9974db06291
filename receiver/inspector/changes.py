"""An event's `previous_attributes` as a change: one before/after row per dotted path.

Montra sends, with an update, the fields' values before it (`previous_attributes`) beside the
resource as it is now (`data`). Each path named in `previous_attributes` becomes a row: before is
its value there, after the value at the same path in `data`. Where both sides hold an object, its
keys are compared one by one (`plan.amount`), those of either side, and a key one side lacks is
shown as absent. Values are kept as JSON text, so `null`, `"1"` and `1` stay apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_CHANGES", "Change", "changes"]

MAX_CHANGES = 500
"""Rows shown at most: a hostile body could name thousands of paths."""

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One changed path: `before` and `after` as JSON text, None where that side lacks the path."""

    path: str
    before: str | None
    after: str | None


def changes(envelope: object) -> list[Change] | None:
    """The rows of `envelope["previous_attributes"]` against `envelope["data"]`; None when it has none.

    The envelope is parsed JSON no deeper than the inspector pretty-prints (see `body`), so the
    recursion below is bounded.
    """
    if not isinstance(envelope, dict):
        return None
    previous = envelope.get("previous_attributes")
    if not isinstance(previous, dict) or not previous:
        return None
    data = envelope.get("data")
    rows: list[Change] = []
    for key, before in previous.items():
        after = data.get(key, _ABSENT) if isinstance(data, dict) else _ABSENT
        _compare(str(key), before, after, rows, top=True)
    return rows[:MAX_CHANGES]


def _compare(path: str, before: Any, after: Any, rows: list[Change], *, top: bool) -> None:
    if len(rows) >= MAX_CHANGES:
        return
    if isinstance(before, dict) and isinstance(after, dict) and (before or after):
        for key in [*before, *(k for k in after if k not in before)]:
            _compare(f"{path}.{key}", before.get(key, _ABSENT), after.get(key, _ABSENT), rows, top=False)
        return
    # Inside an object, keys equal on both sides did not change: only the ones named at the top are kept as given.
    shown = _json(before), _json(after)
    # Compared as JSON text: in Python, True == 1 == 1.0.
    if not top and shown[0] is not None and shown[0] == shown[1]:
        return
    rows.append(Change(path, *shown))


def _json(value: Any) -> str | None:
    return None if value is _ABSENT else json.dumps(value, ensure_ascii=False)
