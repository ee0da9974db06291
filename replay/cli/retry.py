"""`montra-hooks retry`: re-queue failed or dead handler runs."""

from __future__ import annotations

from collections.abc import Sequence

import click

from .options import db_option, run_on_store

__all__ = ["retry"]


@click.command()
@db_option
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this event's runs; repeat for more.")
@click.option("--handler", metavar="NAME", help="Only this handler's runs.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(["failed", "dead"]), help="Default: both.")
def retry(db: str, ids: Sequence[str], handler: str | None, statuses: Sequence[str]) -> None:
    """Re-queue failed or dead handler runs now; a running receiver picks them up.

    \b
    Example:
      montra-hooks retry --status dead --handler examples.handlers.grant_pro
    """
    status = tuple(statuses) or ("failed", "dead")
    count = run_on_store(db, lambda store: store.requeue(ids=ids, handler=handler, status=status), write=True)
    click.echo(f"Re-queued {count} run(s); a running receiver picks them up within a second.")
