"""`montra-hooks prune`: delete old events, their runs, and old rejections."""

from __future__ import annotations

import time

import click

from .options import DURATION, db_option, run_on_store

__all__ = ["prune"]


@click.command()
@db_option
@click.option("--older-than", required=True, type=DURATION, metavar="DURATION", help="e.g. 30d, 12h.")
def prune(db: str, older_than: float) -> None:
    """Delete events (with their runs) and rejections received longer ago than DURATION.

    \b
    Example:
      montra-hooks prune --older-than 30d
    """
    before = time.time() - older_than
    counts = run_on_store(db, lambda store: store.prune(before=before), write=True)
    click.echo(", ".join(f"{n} {table}" for table, n in counts.items()) + " deleted.")
