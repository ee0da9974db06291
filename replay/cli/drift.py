"""`montra-hooks drift`: stored events' shapes against the typed catalogue (`receiver.types`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import click

from receiver.stores.open import redact_url
from receiver.stores.protocol import Store, iso

from ..drift import DEFAULT_SAMPLE, TypeReport, drift
from .options import PATTERN, WHEN, db_option, json_option, run_on_store

__all__ = ["drift_command", "report_lines"]


@click.command("drift")
@db_option
@click.option(
    "--type",
    "types",
    multiple=True,
    type=PATTERN,
    metavar="PATTERN",
    help="Only these types: subscription.upgraded, subscription.*, *; repeat for more. Default: every stored type.",
)
@click.option("--since", type=WHEN, metavar="WHEN", help="Only events received at or after: ISO time or 2h, 7d.")
@click.option(
    "--sample",
    default=DEFAULT_SAMPLE,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="Events read per type, the newest first.",
)
@json_option("One JSON object per type: added, missing and changed paths with counts and an example id.")
def drift_command(db: str, types: Sequence[str], since: datetime | None, sample: int, as_json: bool) -> None:
    """Compare stored events' shapes with the typed catalogue: fields added, missing or of another JSON type.

    Reads the newest --sample events of each stored type (a page at a time, through the type index).
    Exit 1 when any type differs (or is not in the catalogue), 0 when none does or no event matched.

    \b
    Examples:
      montra-hooks drift
      montra-hooks drift --type 'subscription.*' --since 7d --json
    """

    async def read(store: Store) -> list[TypeReport]:
        return await drift(store, types, since=since, sample=sample)

    reports = run_on_store(db, read)
    if not reports:
        named = " ".join([*(f"--type {t}" for t in types), *([f"--since {iso(since)}"] if since else [])])
        where = f"match {named}" if named else "are stored"
        click.echo(f"No events {where} in {redact_url(db)}: nothing to compare.", err=True)
        return
    if as_json:
        for report in reports:
            click.echo(json.dumps(report.as_json()))
    else:
        for line in report_lines(reports, sample=sample):
            click.echo(line)
    if any(report.differs for report in reports):
        raise SystemExit(1)


def report_lines(reports: Sequence[TypeReport], *, sample: int) -> list[str]:
    """The human report: per type a heading, then one line per difference: kind, path, count, example, types."""
    lines: list[str] = []
    for report in reports:
        shown = report.as_json()
        if not report.known:
            lines.append(f"{report.type}: {report.sampled} sampled, not in the catalogue (newest {report.newest})")
            continue
        rows = [("added", d["path"], d["count"], d["example"], "") for d in shown["added"]]
        rows += [("missing", d["path"], d["count"], d["example"], "") for d in shown["missing"]]
        rows += [
            ("changed", d["path"], d["count"], d["example"], f"  {d['expected']} -> {d['seen']}")
            for d in shown["changed"]
        ]
        verdict = f"{len(rows)} difference(s)" if rows else "matches the catalogue"
        lines.append(f"{report.type}: {report.sampled} sampled, {verdict}")
        path_width = max((len(row[1]) for row in rows), default=0)
        example_width = max((len(row[3]) for row in rows), default=0)
        for kind, path, count, example, types in rows:
            lines.append(f"  {kind:<8} {path:<{path_width}}  {count:>6}  {example:<{example_width}}{types}".rstrip())
    differing = sum(report.differs for report in reports)
    lines.append(
        f"\n{differing} of {len(reports)} type(s) differ from the catalogue "
        f"(the newest {sample:,} events of each type were read)."
    )
    return lines
