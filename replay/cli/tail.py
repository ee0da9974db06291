"""`montra-hooks events tail`: follow new events and their handler outcomes as they happen (like `stripe logs tail`).

It polls the store by seq, so it works on a store another process writes (SQLite or PostgreSQL) and
never writes itself. Events still settling are watched until they are handled, unhandled or dead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import click

from receiver.event import EventStatus
from receiver.stores.open import redact_url
from receiver.stores.protocol import EventFilter, Store, StoredEvent, iso

from .events import attempt_json, attempt_line, event_json
from .options import PATTERN, db_option, json_option, open_existing_store

__all__ = ["tail"]

MAX_WATCHED = 500
"""Events whose outcomes are still followed; past it the oldest is let go (a flood must not slow each look)."""
_SETTLED = frozenset({"handled", "unhandled", "dead"})


@dataclass
class _Watch:
    event: StoredEvent
    shown: bool = False
    status: str = ""
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    """Tries already printed: attempts come back sorted by handler, so a count would misplace a new one."""


@click.command("tail")
@db_option
@click.option("--type", "types", multiple=True, type=PATTERN, metavar="PATTERN", help="subscription.*; repeat.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(get_args(EventStatus)),
    help="Show an event once it reaches this status (dead: only what gave up); repeat for more.",
)
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.01, max=60),
    metavar="SECONDS",
    help="Seconds between looks at the store.",
)
@json_option("One JSON object per line: `record` is event, attempt or status.")
def tail(db: str, types: Sequence[str], statuses: Sequence[str], interval: float, as_json: bool) -> None:
    """Follow new events and each handler try as they happen; Ctrl-C stops.

    \b
    Examples:
      montra-hooks events tail
      montra-hooks events tail --type 'subscription.*' --status dead --json
    """
    store = open_existing_store(db)
    printer = _Printer(as_json=as_json, statuses=frozenset(statuses))

    async def follow() -> None:
        try:
            _, cursor = await store.seq_bounds()
            what = " ".join([*(f"--type {t}" for t in types), *(f"--status {s}" for s in statuses)])
            click.echo(
                f"Watching {redact_url(db)} for new events{' matching ' + what if what else ''} "
                f"(after seq {cursor}); Ctrl-C stops.",
                err=True,
            )
            watched: dict[str, _Watch] = {}
            while True:
                cursor = await _look(store, types, cursor, watched, printer)
                await asyncio.sleep(interval)
        finally:
            await store.close()

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        click.echo("Stopped.", err=True)


async def _look(store: Store, types: Sequence[str], cursor: int, watched: dict[str, _Watch], printer: _Printer) -> int:
    """Take in events stored after `cursor`, print what changed on the watched ones; return the new cursor."""
    while True:
        new = await store.list_events(EventFilter(types=types, after_seq=cursor, limit=200))
        for event in new:
            watched[event.id] = _Watch(event)
            cursor = event.seq
        if len(new) < 200:
            break
    while len(watched) > MAX_WATCHED:
        del watched[next(iter(watched))]
    for event_id, watch in list(watched.items()):
        current = await store.get_event(event_id)
        if current is None:  # pruned meanwhile
            del watched[event_id]
            continue
        watch.event = current
        if not watch.shown and (not printer.statuses or current.status in printer.statuses):
            printer.event(current)
            watch.shown, watch.status = True, current.status
        if watch.shown:
            for attempt in await store.get_attempts(event_id):
                key = (attempt.handler, attempt.attempt, attempt.started_at, attempt.outcome)
                if key not in watch.seen:
                    watch.seen.add(key)
                    printer.attempt(attempt_json(attempt), attempt_line(attempt), attempt.handler)
            if current.status != watch.status:
                printer.status(current)
                watch.status = current.status
        if current.status in _SETTLED and (watch.shown or printer.statuses):
            del watched[event_id]
    return cursor


class _Printer:
    def __init__(self, *, as_json: bool, statuses: frozenset[str]) -> None:
        self.as_json = as_json
        self.statuses = statuses

    def _json(self, record: str, values: dict[str, Any]) -> None:
        click.echo(json.dumps({"record": record, **values}))

    def event(self, event: StoredEvent) -> None:
        if self.as_json:
            self._json("event", event_json(event))
        else:
            click.echo(f"--> {iso(event.received_at)}  {event.type} [{event.id}]  seq {event.seq}  {event.status}")

    def attempt(self, values: dict[str, Any], line: str, handler: str) -> None:
        if self.as_json:
            self._json("attempt", values)
        else:
            click.echo(f"<-- [{values['event_id']}] {handler}  {line}")

    def status(self, event: StoredEvent) -> None:
        if self.as_json:
            self._json("status", {"id": event.id, "status": event.status})
        else:
            click.echo(f"    [{event.id}] is now {event.status}")
