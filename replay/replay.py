"""`montra-hooks replay`: re-send stored (or fixture) events to a receiver, or run them through handlers.

Stored rows are streamed (a page at a time, up to the newest seq at the start) into `pump`, which
keeps at most `--concurrency` in flight; results go straight to the summary and the output, so a
replay of a million events takes the memory of a replay of ten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import click

from receiver.cli import db_option, import_hooks, open_existing_store, parse_when
from receiver.errors import ConfigurationError
from receiver.event import EventStatus
from receiver.hooks import validate_pattern
from receiver.stores.protocol import EventFilter, Store

from .inprocess import AppTarget
from .options import allow_remote_option, check_target, open_catalogue, secret_option, signing_secret, timeout_option
from .paths import FixtureError
from .report import Summary, answer_line, result_json, sent_line
from .send import HttpTarget, Outgoing, Result, pump
from .sources import count_events, fixture_events, fixture_names, snapshot, stored_events

__all__ = ["DEFAULT_CONCURRENCY", "replay"]

DEFAULT_CONCURRENCY = 8
_FAILURES_SHOWN = 20  # then only the summary: a receiver that is down must not print a line per event

Target = HttpTarget | AppTarget


@click.command()
@db_option
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this event; repeat for more.")
@click.option("--type", "types", multiple=True, metavar="PATTERN", help="subscription.upgraded, subscription.*, *")
@click.option("--since", metavar="WHEN", help="Received at or after: ISO time or a duration ago (2h, 7d).")
@click.option("--until", metavar="WHEN", help="Received before: ISO time or a duration ago.")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(get_args(EventStatus)), help="The event's status; repeat."
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events (oldest first).")
@click.option(
    "--fixtures",
    "fixture_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="Send the fixtures in DIR (its types, then its scenarios) instead of stored events.",
)
@click.option("--to", "url", metavar="URL", help="A receiver to POST to, e.g. http://127.0.0.1:8000/webhooks.")
@click.option("--app", "app_spec", metavar="MOD:HOOKS", help="Run your handlers in this process instead.")
@secret_option
@click.option("--keep-id", is_flag=True, help="Send the original webhook-id (tests idempotency: expect duplicate).")
@click.option("--concurrency", type=click.IntRange(1, 1000), metavar="N", help=f"In flight [{DEFAULT_CONCURRENCY}].")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="R", help="At most R events a second.")
@click.option("--in-order", is_flag=True, help="One at a time, in arrival order, each after the previous answer.")
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per event, then a summary line.")
@allow_remote_option
@timeout_option
def replay(
    db: str,
    ids: Sequence[str],
    types: Sequence[str],
    since: str | None,
    until: str | None,
    statuses: Sequence[str],
    limit: int | None,
    fixture_dirs: Sequence[Path],
    url: str | None,
    app_spec: str | None,
    secret: str | None,
    keep_id: bool,
    concurrency: int | None,
    rate: float | None,
    in_order: bool,
    dry_run: bool,
    as_json: bool,
    allow_remote: bool,
    timeout: float,
) -> None:
    """Re-send stored events (or fixtures), re-signed with a fresh timestamp, to a receiver or your handlers.

    Each event keeps its exact body and goes out under a new webhook-id, ORIGINAL_r<8 hex>, with a
    montra-replay-of header, so a receiver runs it again; --keep-id sends the original id instead.
    Exit status 1 if any event was not accepted (a 2xx, or handlers that all succeeded).

    \b
    Examples:
      montra-hooks replay --type 'subscription.*' --since 2h --to http://127.0.0.1:8000/webhooks
      montra-hooks replay --status dead --app myapp.webhooks:hooks
      montra-hooks replay --id msg_2Bc9XQ --keep-id --to http://127.0.0.1:8000/webhooks
    """
    if (url is None) == (app_spec is None):
        raise click.UsageError(
            "Pass one target: --to URL (a running receiver) or --app MOD:HOOKS (your handlers, in this process)."
        )
    if fixture_dirs and (ids or since or until or statuses):
        raise click.UsageError("--id, --since, --until and --status select stored events; drop them with --fixtures.")
    if in_order and concurrency not in (None, 1):
        raise click.UsageError("--in-order sends one event at a time: drop --concurrency.")
    for pattern in types:
        try:
            validate_pattern(pattern)
        except ConfigurationError as e:
            raise click.BadParameter(str(e), param_hint="--type") from e
    workers = 1 if in_order else concurrency or DEFAULT_CONCURRENCY
    # Fixture events are built with fresh ids: they go out under their own.
    same_id = keep_id or bool(fixture_dirs)
    target: Target
    if url is not None:
        label = check_target(url, allow_remote=allow_remote)
        key = signing_secret(secret)
        target = HttpTarget(url, secret=key, keep_id=same_id, timeout=timeout, connections=workers)
    else:
        assert app_spec is not None
        target, label = AppTarget(import_hooks(app_spec), keep_id=same_id), f"{app_spec} (in-process)"
    run = _Run(target, label, workers=workers, rate=rate, dry_run=dry_run, as_json=as_json)

    if fixture_dirs:
        catalogue = open_catalogue(fixture_dirs)
        names = fixture_names(fixture_dirs)
        try:
            events = list(fixture_events(catalogue, names, types=types, limit=limit))
        except FixtureError as e:
            raise click.UsageError(str(e)) from e
        ok = asyncio.run(run.fixtures(events))
    else:
        selection = EventFilter(
            ids=ids,
            types=types,
            status=statuses,
            since=parse_when(since) if since else None,
            until=parse_when(until) if until else None,
            limit=limit,
        )
        ok = asyncio.run(run.store(open_existing_store(db), selection))
    if not ok:
        raise SystemExit(1)


class _Run:
    """One replay: feeds the events to the target and reports each result and the summary."""

    def __init__(
        self, target: Target, label: str, *, workers: int, rate: float | None, dry_run: bool, as_json: bool
    ) -> None:
        self.target = target
        self.label = label
        self.workers = workers
        self.rate = rate
        self.dry_run = dry_run
        self.as_json = as_json
        # Only a person watching a terminal wants a bar; output piped to a file or a program stays clean.
        self.progress = not as_json and not dry_run and sys.stdout.isatty()
        self.summary = Summary()
        self._failures_shown = 0

    async def store(self, store: Store, selection: EventFilter) -> bool:
        try:
            selection = await snapshot(store, selection)
            total = await count_events(store, selection) if self.progress else None
            return await self.send(stored_events(store, selection), total)
        finally:
            await store.close()

    async def fixtures(self, events: list[Outgoing]) -> bool:
        return await self.send(events, len(events))

    async def send(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing], total: int | None) -> bool:
        try:
            if self.dry_run:
                return await self._dry_run(events)
            return await self._send(events, total)
        finally:
            if isinstance(self.target, HttpTarget):
                await self.target.aclose()

    async def _send(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing], total: int | None) -> bool:
        with self._bar(total) as bar:

            def on_result(result: Result) -> None:
                self.summary.add(result)
                self._report(result)
                if bar is not None:
                    bar.update(1)

            await pump(events, self.target.send, on_result=on_result, concurrency=self.workers, rate=self.rate)
        self.summary.finish()
        if self.as_json:
            click.echo(json.dumps(self.summary.as_json()))
        elif self.summary.total == 0:
            click.echo("No events match: nothing was sent.")
        else:
            for line in self.summary.lines(self.label):
                click.echo(line)
        return self.summary.failed == 0

    def _report(self, result: Result) -> None:
        if self.as_json:
            click.echo(json.dumps(result_json(result)))
        elif not result.ok:
            self._failures_shown += 1
            if self._failures_shown <= _FAILURES_SHOWN:
                click.echo(f"{sent_line(result.event, result.sent_as)}  {answer_line(result)}", err=True)
            elif self._failures_shown == _FAILURES_SHOWN + 1:
                click.echo("... more failures: the summary counts them all (--json lists each).", err=True)

    async def _dry_run(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing]) -> bool:
        count = 0
        async for event in _aiter(events):
            count += 1
            if self.as_json:
                line: dict[str, Any] = {"id": event.id, "type": event.type, "seq": event.seq, "dry_run": True}
                click.echo(json.dumps(line))
            else:
                seq = f"seq {event.seq}: " if event.seq is not None else ""
                click.echo(f"{seq}{event.type} [{event.id}]{self._would(event)}")
        if not self.as_json:
            click.echo(f"Dry run: {count} event(s) would go to {self.label}; nothing was sent.")
        return True

    def _would(self, event: Outgoing) -> str:
        identity = "" if self.target.keep_id else " as a new id"
        if isinstance(self.target, AppTarget):
            names = [r.name for r in self.target.hooks.handlers_for(event.type)]
            return f"{identity} -> {', '.join(names) if names else 'no handler matches'}"
        return identity

    @contextlib.contextmanager
    def _bar(self, total: int | None) -> Iterator[Any]:
        if not self.progress:
            yield None
            return
        bar: Any = click.progressbar(length=total, label="Replaying", file=sys.stderr, show_pos=True)
        with bar:
            yield bar


async def _aiter(events: AsyncIterable[Outgoing] | Iterable[Outgoing]) -> AsyncIterator[Outgoing]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event
