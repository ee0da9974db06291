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
    """Re-queue failed or dead handler runs now; a running receiver picks them up. Exit 1 when none match.

    \b
    Example:
      montra-hooks retry --status dead --handler examples.handlers.grant_pro
    """
    status = tuple(statuses) or ("failed", "dead")
    count = run_on_store(db, lambda store: store.requeue(ids=ids, handler=handler, status=status), write=True)
    if count == 0:
        named = " ".join([*(f"--id {i}" for i in ids), *([f"--handler {handler}"] if handler else [])])
        runs = " or ".join(status)
        click.echo(
            f"No {runs} runs match {named} in {redact_url(db)}: nothing was re-queued. "
            "`montra-hooks events list --status dead` shows what is there."
            if named
            else f"No {runs} runs in {redact_url(db)}: nothing was re-queued.",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"Re-queued {count} run(s); a running receiver picks them up within a second.")
