"""`montra-hooks retry`: re-queue failed or dead handler runs."""

from __future__ import annotations

from collections.abc import Sequence

import click

from receiver.stores.open import redact_url

from .options import db_option, run_on_store

__all__ = ["retry"]


@click.command()
@db_option
@click.option("--id", "ids", multiple=True, metavar="ID", help="Only this event's runs; repeat for more.")
@click.option("--handler", metavar="NAME", help="Only this handler's runs.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(["failed", "dead"]), help="Default: both.")
def retry(db: str, ids: Sequence[str], handler: str | None, statuses: Sequence[str]) -> None:
    """Re-queue failed or dead handler runs now; a running receiver picks them up.

    Exit 1 when --id or --handler match no failed or dead run.

    \b
    Example:
      montra-hooks retry --status dead --handler examples.handlers.grant_pro
    """
    status = tuple(statuses) or ("failed", "dead")
    count = run_on_store(db, lambda store: store.requeue(ids=ids, handler=handler, status=status), write=True)
    named = " ".join([*(f"--id {i}" for i in ids), *([f"--handler {handler}"] if handler else [])])
    if count == 0 and named:
        # A selection that matches nothing is likely a typo'd id or name: exit 1 and say which.
        click.echo(
            f"No {' or '.join(status)} runs match {named} in {redact_url(db)}: nothing was re-queued. "
            "`montra-hooks events list --status dead` shows what is there.",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"Re-queued {count} run(s); a running receiver picks them up within a second.")
