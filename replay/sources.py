"""Where sent events come from: rows of the store, streamed, or events built from fixtures.

Replaying from a store reads only the rows that exist when it starts (`snapshot` bounds the
selection by the newest seq), so a replay into its own receiver never chases the rows it adds;
the rows are read a page at a time (`Store.iter_events`), so memory does not grow with their count.

>>> selection = await snapshot(store, EventFilter(types=["subscription.*"]))
>>> async for event in stored_events(store, selection): ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from receiver.patterns import matches
from receiver.stores.protocol import EventFilter, Store

from .fixtures import Assignments, Catalogue
from .paths import FixtureError
from .send import Outgoing

__all__ = [
    "build_events",
    "count_events",
    "encode_event",
    "fixture_events",
    "fixture_names",
    "outgoing",
    "snapshot",
    "stored_events",
]


async def snapshot(store: Store, selection: EventFilter) -> EventFilter:
    """`selection` bounded by the newest event stored now (what a replay adds comes after it), oldest first."""
    last = await store.list_events(EventFilter(newest_first=True, limit=1))
    newest = last[0].seq if last else 0
    bound = newest if selection.max_seq is None else min(selection.max_seq, newest)
    return dataclasses.replace(selection, max_seq=bound, newest_first=False)


async def stored_events(store: Store, selection: EventFilter) -> AsyncIterator[Outgoing]:
    """The selected rows in seq order, with their exact body bytes and stored headers."""
    async for row in store.iter_events(selection):
        yield Outgoing(row.id, row.type, row.body, seq=row.seq, headers=row.headers)


async def count_events(store: Store, selection: EventFilter) -> int:
    """How many rows `selection` holds: one streaming pass, for a progress bar's length."""
    count = 0
    async for _ in store.iter_events(selection):
        count += 1
    return count


def encode_event(envelope: Mapping[str, Any]) -> bytes:
    """The body bytes of a built fixture event, as trigger, replay, watch and the pytest plugin send it."""
    return json.dumps(envelope, ensure_ascii=False).encode()


def outgoing(envelope: Mapping[str, Any]) -> Outgoing:
    """A built fixture event, ready to send under its own `id` (fresh at each build)."""
    event_id = envelope.get("id")
    if not (
        isinstance(event_id, str)
        and 0 < len(event_id) <= 256
        and event_id.isascii()
        and event_id.isprintable()
        and " " not in event_id
    ):
        raise FixtureError(f"The event id {event_id!r} is not a webhook-id: 1 to 256 ASCII characters, no spaces.")
    return Outgoing(event_id, str(envelope.get("type")), encode_event(envelope))


def build_events(
    catalogue: Catalogue,
    name: str,
    *,
    assignments: Assignments = (),
    additions: Assignments = (),
    removals: Sequence[str] = (),
) -> list[Outgoing]:
    """Build a type's event (or a scenario's), `set`/`add`/`remove` applied, ready to send; FixtureError if not."""
    built = catalogue.build(name, set=assignments, add=additions, remove=removals)
    return [outgoing(envelope) for envelope in built]


def fixture_names(folders: Sequence[Path]) -> list[str]:
    """The types, then the scenarios, that these folders themselves hold (not the built-in ones)."""
    types: dict[str, None] = {}
    scenarios: dict[str, None] = {}
    for folder in folders:
        for path, found in ((folder, types), (folder / "scenarios", scenarios)):
            for file in sorted(path.glob("*.json")):
                if not file.name.startswith("."):
                    found.setdefault(file.stem)
    return [*sorted(types), *sorted(scenarios)]


def fixture_events(
    catalogue: Catalogue, names: Sequence[str], *, types: Sequence[str] = (), limit: int | None = None
) -> Iterator[Outgoing]:
    """Build each named type or scenario in turn and yield its events whose type matches `types` (all if empty)."""
    sent = 0
    for name in names:
        for envelope in catalogue.build(name):
            if limit is not None and sent >= limit:
                return
            if types and not any(matches(pattern, str(envelope.get("type"))) for pattern in types):
                continue
            sent += 1
            yield outgoing(envelope)
