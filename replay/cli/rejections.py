"""`montra-hooks rejections list|show`: refused requests and why, in words (a wrong secret, a skewed clock)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import click

from receiver.errors import REJECTION_REASONS
from receiver.rejections import explain, rejection_json
from receiver.stores.open import redact_url
from receiver.stores.protocol import iso

from .options import WHEN, db_option, json_option, run_on_store

__all__ = ["rejections"]

SHOWN_BODY_CHARS = 2000
"""`rejections show` prints this much of the (already truncated) body."""


@click.group()
def rejections() -> None:
    """Refused requests and why: a wrong secret, a skewed clock, a missing header.

    \b
    Examples:
      montra-hooks rejections list --since 1h
      montra-hooks rejections show 12
    """


@rejections.command("list")
@db_option
@click.option(
    "--reason",
    "reasons",
    multiple=True,
    type=click.Choice(REJECTION_REASONS),
    help="Only this error code; repeat for more.",
)
@click.option("--since", type=WHEN, metavar="WHEN", help="Refused at or after: ISO time or a duration ago (2h, 7d).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), metavar="N", help="Newest first.")
@json_option("One JSON object per line, with `explanation`.")
def rejections_list(db: str, reasons: Sequence[str], since: datetime | None, limit: int, as_json: bool) -> None:
    """List refused requests, newest first, each explained in words. Exit 1 when filters match nothing.

    \b
    Example:
      montra-hooks rejections list --reason invalid_signature --since 2h
    """
    rows = run_on_store(db, lambda store: store.list_rejections(reasons=reasons, since=since, limit=limit))
    if not rows:
        named = " ".join([*(f"--reason {r}" for r in reasons), *([f"--since {iso(since)}"] if since else [])])
        if named:
            click.echo(f"No rejected requests match {named} in {redact_url(db)}.", err=True)
            raise SystemExit(1)
        click.echo("No rejected requests: every request so far was signed and well formed.")
        return
    if as_json:
        for row in rows:
            click.echo(json.dumps(rejection_json(row)))
        return
    click.echo(f"{'ID':>5}  {'RECEIVED':<27}  {'REMOTE':<15}  {'REASON':<26}  WHY")
    for r in rows:
        remote = r.remote or "-"
        click.echo(f"{r.id:>5}  {iso(r.received_at):<27}  {remote:<15}  {r.reason:<26}  {explain(r)}")


@rejections.command("show")
@db_option
@click.argument("rejection_id", metavar="N", type=click.IntRange(min=1))
@json_option("The rejection as one JSON object, with `explanation`.")
def rejections_show(db: str, rejection_id: int, as_json: bool) -> None:
    """Show one refused request: why, its headers and its body (truncated).

    \b
    Example:
      montra-hooks rejections show 12
    """
    found = run_on_store(db, lambda store: store.get_rejection(rejection_id))
    if found is None:
        raise click.UsageError(
            f"No rejection {rejection_id} in {redact_url(db)}: `montra-hooks rejections list` shows their ids "
            "(only the newest 1,000 are kept)."
        )
    if as_json:
        click.echo(json.dumps(rejection_json(found)))
        return
    click.echo(f"rejection {found.id}: {found.reason}  from {found.remote or 'an unknown address'}")
    click.echo(f"received {iso(found.received_at)}")
    click.echo(f"why: {explain(found)}")
    if found.message:
        click.echo(f"answered: {found.message}")
    click.echo("headers:")
    for name, value in sorted(found.headers.items()):
        click.echo(f"  {name}: {value}")
    text = found.body.decode("utf-8", errors="replace")
    cut = len(text) > SHOWN_BODY_CHARS
    click.echo(f"body ({len(found.body)} bytes kept{', first ' + str(SHOWN_BODY_CHARS) + ' shown' if cut else ''}):")
    click.echo(text[:SHOWN_BODY_CHARS] + ("..." if cut else ""))
