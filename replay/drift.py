"""Drift: how the shapes of stored events differ from the typed catalogue (`receiver.types`).

The expected shape of each known type is read from its payload's TypedDict at runtime
(`typing.get_type_hints`): the types a handler declares, the fixtures' test and this report share
one source. Per type, three kinds of difference, each a dotted path with how many sampled events
show it and the id of the newest of them:

- `added`: a field the events carry and the catalogue lacks (`data.plan_name`); below it, nothing
  more is reported.
- `missing`: a required field (not `NotRequired`) the events lack.
- `changed`: a field whose JSON type differs: `expected` (`number`, `string or null`) and `seen`.

Objects are compared key by key, recursively; a list's elements are each compared with its item
type, under `path[]` (`data.line_items[].amount`). Free-form objects (`metadata`, `dict[str, Any]`)
and `previous_attributes` are not looked into. A stored type the catalogue does not know is
reported with `known: false`: Montra sends a type this version has no payload for.

Sampling: for each stored type, the newest `sample` events (received since `since`) are read, newest
first, a page at a time through the store's (type, seq) index: the cost grows with the number of
types and the sample, not with the store's size.

    >>> reports = asyncio.run(drift(store, ["subscription.*"], sample=1000))
    >>> [r.as_json() for r in reports if r.differs]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints, is_typeddict

from receiver.stores.protocol import EventFilter, Store, StoredEvent
from receiver.types import PAYLOADS

__all__ = [
    "DEFAULT_SAMPLE",
    "PAGE",
    "Shape",
    "TypeReport",
    "catalogue",
    "drift",
    "json_type",
    "shape_of",
]

DEFAULT_SAMPLE = 1000
"""Events read per type, the newest first, unless `--sample` says otherwise."""
PAGE = 500
"""Events read per query: memory holds one page of bodies at a time."""

JsonType = Literal["object", "array", "string", "integer", "number", "boolean", "null"]
_ORDER: tuple[JsonType, ...] = ("object", "array", "string", "number", "integer", "boolean", "null")


@dataclass(frozen=True, slots=True)
class Shape:
    """What the catalogue expects at one place of an event: JSON types, and an object's keys or a list's items."""

    types: frozenset[JsonType]
    fields: Mapping[str, tuple[Shape, bool]] | None = None
    """An object's keys: (shape, required). None: any keys (a free-form object), not looked into."""
    items: Shape | None = None
    """A list's element shape; None: any elements."""

    def describe(self) -> str:
        """`number`, `string or null`: an integer counts as a number, so `number` alone names both."""
        shown = [t for t in _ORDER if t in self.types and not (t == "integer" and "number" in self.types)]
        return " or ".join(shown)


ANY = Shape(frozenset(_ORDER))


def json_type(value: object) -> JsonType:
    """The JSON type of a value `json.loads` returned (`true` is a boolean, not an integer)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape_of(annotation: Any) -> Shape:
    """The shape a type annotation of `receiver.types` allows; a kind this does not know is a TypeError."""
    origin = get_origin(annotation)
    if annotation is Any:
        return ANY
    if annotation is None or annotation is type(None):
        return Shape(frozenset({"null"}))
    if origin in (Required, NotRequired):
        return shape_of(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return _merge([shape_of(arg) for arg in get_args(annotation)])
    if origin is Literal:
        return Shape(frozenset(json_type(value) for value in get_args(annotation)))
    if is_typeddict(annotation):
        hints = get_type_hints(annotation, include_extras=True)
        total = getattr(annotation, "__total__", True)
        return Shape(
            frozenset({"object"}), {key: (shape_of(hint), _required(hint, total)) for key, hint in hints.items()}
        )
    if annotation is bool:
        return Shape(frozenset({"boolean"}))
    if annotation is int:
        return Shape(frozenset({"integer"}))
    if annotation is float:  # a JSON number; an integer is one too (as mypy takes an int for a float)
        return Shape(frozenset({"number", "integer"}))
    if annotation is str:
        return Shape(frozenset({"string"}))
    if annotation is list or origin is list:
        args = get_args(annotation)
        return Shape(frozenset({"array"}), items=shape_of(args[0]) if args else None)
    if annotation is dict or origin is dict:
        return Shape(frozenset({"object"}))
    raise TypeError(f"drift does not know how to check {annotation!r}: teach replay/drift.py's shape_of this kind.")


def _required(hint: Any, total: bool) -> bool:
    origin = get_origin(hint)
    return True if origin is Required else False if origin is NotRequired else total


def _merge(shapes: Sequence[Shape]) -> Shape:
    """A union: any of its JSON types; an object's keys and a list's items come from the member that has them."""
    fields = next((s.fields for s in shapes if s.fields is not None), None)
    items = next((s.items for s in shapes if s.items is not None), None)
    return Shape(frozenset().union(*(s.types for s in shapes)), fields, items)


def envelope_shape(payload: Shape) -> Shape:
    """An event envelope (DESIGN.md "Wire format") whose `data` is `payload`: only `type` is required there."""
    free = Shape(frozenset({"object"}))
    string = Shape(frozenset({"string"}))
    return Shape(
        frozenset({"object"}),
        {
            "id": (string, False),
            "type": (string, True),
            "timestamp": (string, False),
            "data": (payload, True),
            "previous_attributes": (free, False),
        },
    )


@functools.cache
def catalogue() -> dict[str, Shape]:
    """Each known event type's expected envelope, derived from `receiver.types.PAYLOADS`."""
    return {name: envelope_shape(shape_of(payload)) for name, payload in PAYLOADS.items()}


# Comparing --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    count: int = 0
    example: str = ""

    def add(self, event_id: str) -> None:
        if not self.count:  # events are read newest first: the first is the newest
            self.example = event_id
        self.count += 1


@dataclass(slots=True)
class TypeReport:
    """What the sampled events of one type show against the catalogue."""

    type: str
    known: bool
    sampled: int = 0
    added: dict[str, _Tally] = field(default_factory=dict)
    missing: dict[str, _Tally] = field(default_factory=dict)
    changed: dict[tuple[str, str, str], _Tally] = field(default_factory=dict)
    """Keyed by (path, expected, seen)."""
    newest: str = ""

    @property
    def differs(self) -> bool:
        return not self.known or bool(self.added or self.missing or self.changed)

    def check(self, event_id: str, envelope: object) -> None:
        """Compare one event's parsed body with the catalogue's shape for this type."""
        if not self.sampled:
            self.newest = event_id
        self.sampled += 1
        shape = catalogue().get(self.type)
        if shape is not None:
            self._compare(shape, envelope, "", event_id)

    def _compare(self, shape: Shape, value: object, path: str, event_id: str) -> None:
        seen = json_type(value)
        if seen not in shape.types:
            self.changed.setdefault((path or "(body)", shape.describe(), seen), _Tally()).add(event_id)
            return
        if isinstance(value, dict) and shape.fields is not None:
            for key, item in value.items():
                expected = shape.fields.get(key)
                if expected is None:
                    self.added.setdefault(_join(path, key), _Tally()).add(event_id)
                else:
                    self._compare(expected[0], item, _join(path, key), event_id)
            for key, (_, required) in shape.fields.items():
                if required and key not in value:
                    self.missing.setdefault(_join(path, key), _Tally()).add(event_id)
        elif isinstance(value, list) and shape.items is not None:
            for item in value:
                self._compare(shape.items, item, path + "[]", event_id)

    def as_json(self) -> dict[str, Any]:
        """One object: type, known, sampled, newest (the newest sampled event's id), `added`, `missing`, `changed`."""
        return {
            "type": self.type,
            "known": self.known,
            "sampled": self.sampled,
            "newest": self.newest,
            "added": [{"path": p, "count": t.count, "example": t.example} for p, t in sorted(self.added.items())],
            "missing": [{"path": p, "count": t.count, "example": t.example} for p, t in sorted(self.missing.items())],
            "changed": [
                {"path": p, "expected": expected, "seen": seen, "count": t.count, "example": t.example}
                for (p, expected, seen), t in sorted(self.changed.items())
            ],
        }


def _join(path: str, key: str) -> str:
    # As replay/paths.py writes paths: a key that holds a dot (or could read as an index) is quoted.
    plain = key and "." not in key and '"' not in key and "[" not in key and not key.isdigit() and key.strip() == key
    segment = key if plain else json.dumps(key)
    return f"{path}.{segment}" if path else segment


# Reading the store ------------------------------------------------------------------------------


async def newest_events(
    store: Store, event_type: str, *, since: datetime | None, sample: int, page: int = PAGE
) -> AsyncIterator[StoredEvent]:
    """The newest `sample` events of one type (received at or after `since`), newest first, a page at a time.

    `since` is not a condition of the query: walking the type's index backwards with it, the last page
    would read on through every older event of the type to find none. Events arrive in seq order, so the
    walk stops at the first one received before `since` instead: one page past it at most.
    """
    selection = EventFilter(types=[event_type], newest_first=True)
    remaining, below = sample, None
    while remaining > 0:
        size = min(page, remaining)
        rows = await store.list_events(dataclasses.replace(selection, max_seq=below, limit=size))
        for row in rows:
            if since is not None and row.received_at < since:
                return
            yield row
        if len(rows) < size:
            return
        remaining -= len(rows)
        below = rows[-1].seq - 1


async def drift(
    store: Store, patterns: Sequence[str] = (), *, since: datetime | None = None, sample: int = DEFAULT_SAMPLE
) -> list[TypeReport]:
    """One report per stored type matching `patterns` (all when empty) with events since `since`, by type."""
    reports: list[TypeReport] = []
    for event_type in await store.event_types(patterns):
        report = TypeReport(event_type, known=event_type in PAYLOADS)
        async for event in newest_events(store, event_type, since=since, sample=sample):
            try:
                envelope = json.loads(event.body)
            except (UnicodeDecodeError, ValueError, RecursionError):
                envelope = event.body.decode("utf-8", "replace")  # reported as a changed body, never a crash
            report.check(event.id, envelope)
        if report.sampled:
            reports.append(report)
    return reports
