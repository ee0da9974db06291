"""Bulk actions on a filtered selection of the list: re-run its failed runs, or replay its events.

Each action is asked for twice: a GET counts what it would touch and shows a confirmation ("Re-run
37 events' failed runs?"), whose form carries the filters and the newest seq at that moment; the POST
acts on the events that match then, up to that seq, so it touches what the confirmation counted
(and never the events a replay adds). At most `BULK_MAX` events: past it, narrow the filter or use
the CLI (`montra-hooks retry`, `montra-hooks replay`), which stream any number.

A re-run re-queues runs as `montra-hooks retry` does (`MontraApp.rerun_events`). A replay re-sends each
body to this receiver, re-signed under a new id `{original}_r{8 hex}` with `montra-replay-of`, as
`montra-hooks replay` does: through the app itself (`MontraApp.replay`: its verification, store and dispatch),
not the network.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..replays import original_id
from ..stores.protocol import EventFilter, StoredEvent

if TYPE_CHECKING:
    from ..app import MontraApp

__all__ = [
    "ACCEPTED",
    "ACTIONS",
    "BULK_MAX",
    "Action",
    "CannotSign",
    "Plan",
    "TooMany",
    "plan",
    "replay",
    "rerun",
    "targets",
]

BULK_MAX = 1000
"""A bulk action touches at most this many events."""
Action = Literal["rerun", "replay"]
ACTIONS: tuple[Action, ...] = ("rerun", "replay")
RERUNNABLE = ("failed", "dead")
"""An event has a failed or dead run exactly when its status is one of these (DESIGN: status from runs)."""
ACCEPTED = frozenset({"stored", "duplicate", "handler_failed"})
"""Answers of a replay that stored it (`handler_failed`: stored, and a handler run inline failed)."""
_PAGE = 50  # events read (bodies included) and sent at a time: memory stays small whatever their size
_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Plan:
    """What a bulk action would touch now: `count` events (to `BULK_MAX + 1`), all at or below `max_seq`."""

    action: Action
    count: int
    max_seq: int

    @property
    def too_many(self) -> bool:
        return self.count > BULK_MAX


def targets(action: Action, selection: EventFilter, *, max_seq: int) -> EventFilter | None:
    """The events `action` works on among `selection`'s, up to `max_seq`; None when none can be."""
    bounded = dataclasses.replace(selection, max_seq=max_seq, after_seq=None, limit=BULK_MAX + 1, newest_first=False)
    if action == "replay":
        return bounded
    statuses = [s for s in (selection.status or RERUNNABLE) if s in RERUNNABLE]
    return dataclasses.replace(bounded, status=statuses) if statuses else None


async def plan(app: MontraApp, action: Action, selection: EventFilter) -> Plan:
    newest = (await app.store.seq_bounds())[1]
    chosen = targets(action, selection, max_seq=newest)
    count = 0 if chosen is None else await app.store.count_events(chosen, cap=BULK_MAX + 1)
    return Plan(action, count, newest)


class TooMany(Exception):
    """More events match than a bulk action takes."""


async def _check_size(app: MontraApp, chosen: EventFilter) -> None:
    if await app.store.count_events(chosen, cap=BULK_MAX + 1) > BULK_MAX:
        raise TooMany


async def rerun(app: MontraApp, selection: EventFilter, *, max_seq: int) -> tuple[int, int]:
    """Re-queue the failed and dead runs of the selected events (only `selection.handler`'s, when it names one).

    Returns (events, runs re-queued).
    """
    chosen = targets("rerun", selection, max_seq=max_seq)
    if chosen is None:
        return 0, 0
    await _check_size(app, chosen)
    ids = [event.id async for event in app.store.iter_events(chosen, page=_PAGE)]
    runs = await app.rerun_events(ids, handler=selection.handler)
    return len(ids), runs


async def replay(app: MontraApp, selection: EventFilter, *, max_seq: int) -> Counter[str]:
    """Re-send the selected events to this receiver under new ids; the answers counted by status or error code.

    `CannotSign` when the receiver has no secret to sign with (only `whpk_` public keys).
    """
    chosen = targets("replay", selection, max_seq=max_seq)
    assert chosen is not None
    await _check_size(app, chosen)
    answers: Counter[str] = Counter()
    page: list[StoredEvent] = []
    async for event in app.store.iter_events(chosen, page=_PAGE):
        page.append(event)
        if len(page) == _PAGE:
            answers.update(await _send_all(app, page))
            page = []
    answers.update(await _send_all(app, page))
    return answers


class CannotSign(Exception):
    """The receiver cannot sign a replay: the message says what to configure."""


async def _send_all(app: MontraApp, events: Sequence[StoredEvent]) -> list[str]:
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(event: StoredEvent) -> str:
        async with gate:
            # In-process, through the webhook path's own checks and store (MontraApp.replay).
            status, answer = await app.replay(event.body, original=original_id(event.id, event.headers))
        code = str(answer.get("status") or answer.get("error") or f"HTTP {status}")
        if code == "cannot_sign":
            raise CannotSign(str(answer.get("message")))
        return code

    return list(await asyncio.gather(*(one(event) for event in events)))
