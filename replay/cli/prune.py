"""`montra-hooks prune`: delete old events, their runs, and old rejections."""

from __future__ import annotations

import time

import click

from .options import DURATION, db_option, run_on_store

__all__ = ["prune"]


@click.command()
@db_option
@click.option("--older-than", required=True, type=DURATION, metavar="DURATION", help="e.g. 30d, 12h.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune(db: str, older_than: float, dry_run: bool) -> None:
    """Delete events (with their runs) and rejections received longer ago than DURATION.

    Deletes the oldest first, a hundred events a transaction, so a running receiver's
    acknowledgements never wait long for the write lock. `serve --retain` does this continuously.

    \b
    Example:
      montra-hooks prune --older-than 30d --dry-run
    """
    before = time.time() - older_than
    if dry_run:
        counts = run_on_store(db, lambda store: store.count_prunable(before=before))
        click.echo(", ".join(f"{n} {table}" for table, n in counts.items()) + " would be deleted (dry run).")
        return
    counts = run_on_store(db, lambda store: store.prune(before=before), write=True)
    click.echo(", ".join(f"{n} {table}" for table, n in counts.items()) + " deleted.")
