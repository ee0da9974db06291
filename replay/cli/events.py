"""`montra-hooks events list|show`: look at stored events and their handler runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from receiver.stores.open import redact_url
from receiver.stores.protocol import EventFilter, Run, Store, StoredEvent, iso

from .options import db_option, event_filter_options, json_option, run_on_store

__all__ = ["event_json", "events"]


@click.group()
def events() -> None:
    """Look at stored events: list them, or show one with its handler runs.

    \b
    Examples:
      montra-hooks events list --type 'subscription.*' --since 2h
      montra-hooks events show msg_2Bc9XQ
    """


@events.command("list")
@db_option
@event_filter_options(limit=20, order="newest first")
@json_option("One JSON object per line.")
def events_list(
    db: str,
    types: Sequence[str],
    statuses: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored events, newest first.

    \b
    Example:
      montra-hooks events list --type 'subscription.*' --status dead
    """
    selection = EventFilter(
        types=types,
        status=statuses,
        since=since,
        until=until,
        limit=limit,
        newest_first=True,
    )
    rows = run_on_store(db, lambda store: store.list_events(selection))
    if as_json:
        for row in rows:
            click.echo(json.dumps(event_json(row)))
        return
    if not rows:
        click.echo("No events match.")
        return
    id_width, type_width = max(len(r.id) for r in rows), max(len(r.type) for r in rows)
    click.echo(f"{'SEQ':>6}  {'ID':<{id_width}}  {'TYPE':<{type_width}}  {'STATUS':<9}  RECEIVED")
    for r in rows:
        click.echo(f"{r.seq:>6}  {r.id:<{id_width}}  {r.type:<{type_width}}  {r.status:<9}  {iso(r.received_at)}")


@events.command("show")
@db_option
@click.argument("event_id")
@json_option("The event and its runs as one JSON object.")
def events_show(db: str, event_id: str, as_json: bool) -> None:
    """Show one event: headers, body and its handler runs with their errors.

    \b
    Example:
      montra-hooks events show msg_2Bc9XQ
    """

    async def read(store: Store) -> tuple[StoredEvent | None, list[Run]]:
        return await store.get_event(event_id), await store.get_runs(event_id)

    event, runs = run_on_store(db, read)
    if event is None:
        raise click.UsageError(
            f"No event {event_id!r} in {redact_url(db)}: `montra-hooks events list` shows what is stored."
        )
    if as_json:
        click.echo(json.dumps({**event_json(event), "runs": [_run_json(run) for run in runs]}))
        return
    click.echo(f"{event.type} [{event.id}]  seq {event.seq}  {event.status}")
    click.echo(f"received {iso(event.received_at)}" + (f", occurred {event.occurred_at}" if event.occurred_at else ""))
    for name, value in sorted(event.headers.items()):
        click.echo(f"  {name}: {value}")
    click.echo(_body_text(event.body))
    for run in runs:
        click.echo(f"\n{run.handler}: {run.status}, {run.attempts} attempt(s)")
        if run.next_attempt_at and run.status == "failed":
            click.echo(f"  next attempt at {iso(run.next_attempt_at)}")
        if run.last_error:
            click.echo("  " + run.last_error.rstrip().replace("\n", "\n  "))


def event_json(event: StoredEvent) -> dict[str, Any]:
    """An event as JSON: the body as text when it is UTF-8, else as `body_b64`."""
    return {
        "seq": event.seq,
        "id": event.id,
        "type": event.type,
        "status": event.status,
        "occurred_at": event.occurred_at,
        "received_at": iso(event.received_at),
        "headers": event.headers,
        **event.body_json(),
    }


def _run_json(run: Run) -> dict[str, Any]:
    values = {name: getattr(run, name) for name in run.__slots__}
    return {name: iso(value) if isinstance(value, datetime) else value for name, value in values.items()}


def _body_text(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2)
    except (UnicodeDecodeError, ValueError):
        return repr(body)
