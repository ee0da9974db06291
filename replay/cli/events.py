"""`montra-hooks events list|show`: look at stored events and their handler runs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

from receiver.ordering import waiting_text
from receiver.stores.open import redact_url
from receiver.stores.protocol import Attempt, EventFilter, Run, Store, StoredEvent, Waiting, iso

from .options import db_option, event_filter_options, json_option, no_such_event, run_on_store

__all__ = ["COUNT_CAP", "attempt_json", "attempt_line", "describe_filter", "event_json", "events"]

COUNT_CAP = 1000
"""The listing's footer counts matches this far ("20 of 1,000+"): a count never reads the whole store."""


@click.group()
def events() -> None:
    """Look at stored events: list them, show one with every handler try, or follow new ones.

    \b
    Examples:
      montra-hooks events list --type 'subscription.*' --since 2h
      montra-hooks events show msg_2Bc9XQ
      montra-hooks events tail --status dead
    """


@events.command("list")
@db_option
@event_filter_options(limit=20, order="newest first")
@click.option("--handler", metavar="NAME", help="Only events with a run of this handler (module.qualname).")
@click.option("--ref", metavar="REF", help="Only events about this resource id (cus_..., sub_...), of any kind.")
@json_option("One JSON object per line (no footer).")
def events_list(
    db: str,
    types: Sequence[str],
    statuses: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    limit: int,
    handler: str | None,
    ref: str | None,
    as_json: bool,
) -> None:
    """List stored events, newest first; the filters add up. Exit 1 when filters match nothing.

    \b
    Examples:
      montra-hooks events list --type 'subscription.*' --status dead
      montra-hooks events list --ref cus_8f2k --since 7d
      montra-hooks events list --handler billing.grant_pro --until 2h
    """
    selection = EventFilter(
        types=types,
        status=statuses,
        since=since,
        until=until,
        ref=ref,
        handler=handler,
        limit=limit,
        newest_first=True,
    )

    async def read(store: Store) -> tuple[list[StoredEvent], int]:
        rows = await store.list_events(selection)
        # Only a full page can have more beyond it: a short one is the whole count.
        total = await store.count_events(selection, cap=COUNT_CAP + 1) if len(rows) == limit else len(rows)
        return rows, total

    rows, total = run_on_store(db, read)
    if not rows:
        named = describe_filter(selection)
        if named:
            click.echo(f"No events match {named} in {redact_url(db)}.", err=True)
            raise SystemExit(1)
        click.echo("No events stored yet.")
        return
    if as_json:
        for row in rows:
            click.echo(json.dumps(event_json(row)))
        return
    id_width, type_width = max(len(r.id) for r in rows), max(len(r.type) for r in rows)
    click.echo(f"{'SEQ':>6}  {'ID':<{id_width}}  {'TYPE':<{type_width}}  {'STATUS':<9}  RECEIVED")
    for r in rows:
        click.echo(f"{r.seq:>6}  {r.id:<{id_width}}  {r.type:<{type_width}}  {r.status:<9}  {iso(r.received_at)}")
    if total > len(rows):
        counted = f"{COUNT_CAP:,}+" if total > COUNT_CAP else f"{total:,}"
        click.echo(f"\nshowing {len(rows)} of {counted}: --limit shows more, --until or --since narrow it")


def describe_filter(selection: EventFilter) -> str:
    """The options behind `selection`, as the user typed them: what a "nothing matched" message names."""
    parts = [f"--id {i}" for i in selection.ids]
    parts += [f"--type {t}" for t in selection.types]
    parts += [f"--status {s}" for s in selection.status]
    if selection.handler is not None:
        parts.append(f"--handler {selection.handler}")
    if selection.ref is not None:
        parts.append(f"--ref {selection.ref}")
    if selection.since is not None:
        parts.append(f"--since {iso(selection.since)}")
    if selection.until is not None:
        parts.append(f"--until {iso(selection.until)}")
    return " ".join(parts)


@events.command("show")
@db_option
@click.argument("event_id")
@json_option("The event, its resources, runs and every attempt as one JSON object.")
def events_show(db: str, event_id: str, as_json: bool) -> None:
    """Show one event: headers, body, the resources it is about, and each handler's run with every attempt.

    \b
    Example:
      montra-hooks events show msg_2Bc9XQ
    """

    Shown = tuple[StoredEvent | None, list[Run], list[tuple[str, str]], list[Attempt], dict[str, Waiting]]

    async def read(store: Store) -> Shown:
        event = await store.get_event(event_id)
        if event is None:
            return None, [], [], [], {}
        runs = await store.get_runs(event_id)
        # An ordered run held back by an earlier event about the same resource: which one (None when unordered).
        waiting: dict[str, Waiting] = {}
        for run in runs:
            found = await store.waiting_for(event_id, run.handler) if run.status in ("pending", "failed") else None
            if found is not None:
                waiting[run.handler] = found
        return event, runs, await store.get_refs(event_id), await store.get_attempts(event_id), waiting

    event, runs, refs, attempts, waiting = run_on_store(db, read)
    if event is None:
        no_such_event(event_id, db)
    if as_json:
        shown = {
            **event_json(event),
            "resources": dict(refs),
            "runs": [{**_run_json(run), "waiting_for": _waiting_json(waiting.get(run.handler))} for run in runs],
            "attempts": [attempt_json(a) for a in attempts],
        }
        click.echo(json.dumps(shown))
        return
    click.echo(f"{event.type} [{event.id}]  seq {event.seq}  {event.status}")
    click.echo(f"received {iso(event.received_at)}" + (f", occurred {event.occurred_at}" if event.occurred_at else ""))
    for name, value in sorted(event.headers.items()):
        click.echo(f"  {name}: {value}")
    click.echo(_body_text(event.body))
    if refs:
        click.echo("resources: " + ", ".join(f"{kind} {ref}" for kind, ref in refs))
    for run in runs:
        click.echo(f"\n{run.handler}: {run.status}, {run.attempts} attempt(s)")
        if run.handler in waiting:
            click.echo("  " + waiting_text(waiting[run.handler]))
        if run.last_error:
            click.echo("  " + run.last_error.rstrip().replace("\n", "\n  "))
        if run.next_attempt_at and run.status == "failed":
            click.echo(f"  next attempt at {iso(run.next_attempt_at)}")
        # The timeline last, below the full error: one line per try, its error's last line.
        for attempt in attempts:
            if attempt.handler == run.handler:
                click.echo("  " + attempt_line(attempt))


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


def attempt_line(attempt: Attempt) -> str:
    """One try on one line: `try 2  2026-...Z  timeout  30001.2 ms  w1  HandlerTimeout: ...` (the error's last line)."""
    started = iso(attempt.started_at) if attempt.started_at else "?"
    took = f"{attempt.duration_ms:.1f} ms" if attempt.duration_ms is not None else "-"
    error = (attempt.error or "").rstrip().splitlines()
    line = f"try {attempt.attempt}  {started}  {attempt.outcome:<9}  {took:>10}  {attempt.owner or '?'}"
    return line + (f"  {error[-1]}" if error else "")


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    values = {name: getattr(attempt, name) for name in attempt.__slots__}
    return {name: iso(value) if isinstance(value, datetime) else value for name, value in values.items()}


def _waiting_json(waiting: Waiting | None) -> dict[str, Any] | None:
    if waiting is None:
        return None
    values = {name: getattr(waiting, name) for name in waiting.__slots__}
    return {name: iso(value) if isinstance(value, datetime) else value for name, value in values.items()}


def _run_json(run: Run) -> dict[str, Any]:
    # `superseded` is the claim's word to a handler, not part of the stored run.
    values = {name: getattr(run, name) for name in run.__slots__ if name != "superseded"}
    return {name: iso(value) if isinstance(value, datetime) else value for name, value in values.items()}


def _body_text(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2)
    except (UnicodeDecodeError, ValueError):
        return repr(body)
