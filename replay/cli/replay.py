"""`montra-hooks replay`: re-send stored (or fixture) events to a receiver, or run them through handlers.

The options are checked here; the replay itself is `replay.replay.Replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ..paths import FixtureError
from .options import (
    allow_remote_option,
    app_option,
    db_option,
    event_filter_options,
    fixtures_option,
    json_option,
    load_hooks,
    open_catalogue,
    open_existing_store,
    secret_option,
    sending_secret,
    target_url,
    timeout_option,
    to_option,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from receiver.stores.protocol import EventFilter, Store

    from ..replay import Target
    from ..send import Outgoing

__all__ = ["replay"]

_DEFAULT_CONCURRENCY = 8  # replay.replay.DEFAULT_CONCURRENCY, repeated so --help does not import the sender


@click.command()
@db_option
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this event; repeat for more.")
@event_filter_options(limit=None, order="oldest first")
@fixtures_option
@to_option(default=None, help="A receiver to POST to, e.g. http://127.0.0.1:8000/webhooks.")
@app_option(help="Run your handlers in this process instead.")
@secret_option
@click.option("--keep-id", is_flag=True, help="Send the original webhook-id (tests idempotency: expect duplicate).")
@click.option("--concurrency", type=click.IntRange(1, 1000), metavar="N", help=f"In flight [{_DEFAULT_CONCURRENCY}].")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="R", help="At most R events a second.")
@click.option("--in-order", is_flag=True, help="One at a time, in arrival order, each after the previous answer.")
@click.option("--dry-run", is_flag=True, help="List what would be sent; send nothing.")
@click.option(
    "--edit",
    is_flag=True,
    help="Open each body in $VISUAL or $EDITOR first, and send what you save (all edited before any is sent).",
)
@json_option("One JSON line per event, then a summary line.")
@allow_remote_option
@timeout_option
@click.pass_context
def replay(
    ctx: click.Context,
    db: str,
    ids: Sequence[str],
    types: Sequence[str],
    statuses: Sequence[str],
    since: datetime | None,
    until: datetime | None,
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
    edit: bool,
    as_json: bool,
    allow_remote: bool,
    timeout: float,
) -> None:
    """Re-send stored events (or fixtures), re-signed with a fresh timestamp, to a receiver or your handlers.

    Each event keeps its exact body and goes out under a new webhook-id, ORIGINAL_r<8 hex>, with a
    montra-replay-of header, so a receiver runs it again; --keep-id sends the original id instead.
    With --fixtures DIR on the command line, the fixtures in DIR (its types, then its scenarios)
    are sent instead of stored events. Exit status 1 if any event was not accepted (a 2xx, or
    handlers that all succeeded).

    --edit opens each body, pretty-printed, in $VISUAL or $EDITOR (its file the last argument) and sends
    what was saved, re-signed. An editor that exits with an error stops the replay before anything is
    sent (exit 2); a saved body that is not JSON is named and not sent (exit 2 once the others are).

    \b
    Examples:
      montra-hooks replay --type 'subscription.*' --since 2h --to http://127.0.0.1:8000/webhooks
      montra-hooks replay --status dead --app myapp.webhooks:hooks
      montra-hooks replay --id msg_2Bc9XQ --keep-id --to http://127.0.0.1:8000/webhooks
      EDITOR=nano montra-hooks replay --id msg_2Bc9XQ --edit --to http://127.0.0.1:8000/webhooks
    """
    if (url is None) == (app_spec is None):
        raise click.UsageError(
            "Pass one target: --to URL (a running receiver) or --app MOD:HOOKS (your handlers, in this process)."
        )
    # MONTRA_HOOKS_FIXTURES names the folders trigger and watch read; only an explicit --fixtures
    # switches replay from the store to fixtures, so a set variable never replays the wrong events.
    from_fixtures = bool(fixture_dirs) and ctx.get_parameter_source("fixture_dirs") is ParameterSource.COMMANDLINE
    if from_fixtures and (ids or since or until or statuses):
        raise click.UsageError("--id, --since, --until and --status select stored events; drop them with --fixtures.")
    if in_order and concurrency not in (None, 1):
        raise click.UsageError("--in-order sends one event at a time: drop --concurrency.")
    if edit and dry_run:
        raise click.UsageError("--edit sends what you save and --dry-run sends nothing: drop one of them.")
    editor = _editor() if edit else None

    from receiver.stores.open import redact_url
    from receiver.stores.protocol import EventFilter

    from ..inprocess import AppTarget
    from ..replay import DEFAULT_CONCURRENCY, Replay
    from ..send import HttpTarget
    from ..sources import fixture_events, fixture_names
    from .events import describe_filter

    workers = 1 if in_order else concurrency or DEFAULT_CONCURRENCY
    # Fixture events are built with fresh ids: they go out under their own.
    same_id = keep_id or from_fixtures
    target: Target
    if url is not None:
        label = target_url(url, allow_remote=allow_remote)
        target = HttpTarget(url, secret=sending_secret(secret), keep_id=same_id, timeout=timeout, connections=workers)
    else:
        assert app_spec is not None
        target, label = AppTarget(load_hooks(app_spec), keep_id=same_id), f"{app_spec} (in-process)"
    # Only a person watching a terminal wants a bar; output piped to a file or a program stays clean.
    show_bar = not as_json and not dry_run and sys.stdout.isatty()
    run = Replay(
        target,
        label,
        workers=workers,
        rate=rate,
        dry_run=dry_run,
        as_json=as_json,
        echo=click.echo,
        progress=_progress_bar if show_bar else None,
    )
    if from_fixtures:
        catalogue = open_catalogue(fixture_dirs)
        try:
            events = list(fixture_events(catalogue, fixture_names(fixture_dirs), types=types, limit=limit))
        except FixtureError as e:
            raise click.UsageError(str(e)) from e
        refused = 0
        if editor is not None:
            events, refused = _run_edits(_edit_all(events, editor))
        ok = asyncio.run(run.from_list(events)) if events or not refused else _unused(target)
    else:
        selection = EventFilter(ids=ids, types=types, status=statuses, since=since, until=until, limit=limit)
        refused = 0
        if editor is not None:
            edited, refused = _run_edits(_edit_stored(open_existing_store(db), selection, editor))
            ok = asyncio.run(run.from_list(edited)) if edited else _unused(target)
        else:
            ok = asyncio.run(run.from_store(open_existing_store(db), selection))
        if run.summary.total + refused == 0 and not dry_run:
            # Nothing sent is nothing delivered: exit 1, naming what to loosen (a typo'd --id, say).
            named = describe_filter(selection)
            where = redact_url(db)
            click.echo(
                f"{named} matched no stored event in {where}." if named else f"{where} holds no event.", err=True
            )
            raise SystemExit(1)
    if refused:
        raise SystemExit(2)  # each refused save was named as it was refused
    if not ok:
        raise SystemExit(1)


class EditFailed(click.ClickException):
    """`--edit` could not edit: one line, exit 2 (a usage error, with no usage text around it)."""

    exit_code = 2


def _editor() -> list[str]:
    import os

    from ..edit import EditorFailed, editor_command

    try:
        return editor_command(os.environ)
    except EditorFailed as e:
        raise EditFailed(str(e)) from e


def _run_edits(edits: Coroutine[Any, Any, tuple[list[Outgoing], int]]) -> tuple[list[Outgoing], int]:
    from ..edit import EditorFailed

    try:
        return asyncio.run(edits)
    except EditorFailed as e:
        raise EditFailed(str(e)) from e


async def _edit_all(events: list[Outgoing], editor: list[str]) -> tuple[list[Outgoing], int]:
    from ..edit import edit_all

    return await edit_all(events, editor, on_refused=_say_refused)


async def _edit_stored(store: Store, selection: EventFilter, editor: list[str]) -> tuple[list[Outgoing], int]:
    """The selected stored events, each edited; the store is closed before anything is sent."""
    from ..edit import edit_all
    from ..sources import snapshot, stored_events

    try:
        return await edit_all(stored_events(store, await snapshot(store, selection)), editor, on_refused=_say_refused)
    finally:
        await store.close()


def _unused(target: Target) -> bool:
    """Close a target nothing was sent to (every edit was refused, or none matched); True: nothing failed."""
    from ..send import HttpTarget

    if isinstance(target, HttpTarget):
        asyncio.run(target.aclose())
    return True


def _say_refused(error: Exception) -> None:
    click.echo(f"Error: {error}", err=True)


@contextlib.contextmanager
def _progress_bar(total: int | None) -> Iterator[Any]:
    bar: Any = click.progressbar(length=total, label="Replaying", file=sys.stderr, show_pos=True)
    with bar:
        yield bar
