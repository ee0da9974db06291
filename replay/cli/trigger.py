"""`montra-hooks trigger`: build a fixture event (or a scenario's) and send it, signed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..paths import FixtureError
from .options import (
    ASSIGNMENT,
    DEFAULT_TO,
    allow_remote_option,
    fixtures_option,
    json_option,
    open_catalogue,
    secret_option,
    sending_secret,
    target_url,
    timeout_option,
    to_option,
)

if TYPE_CHECKING:
    from ..send import HttpTarget, Outgoing

__all__ = ["trigger"]


@click.command()
@click.argument("name", metavar="TYPE-or-SCENARIO")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    type=ASSIGNMENT,
    metavar="PATH=VALUE",
    help='Override a value the fixture has; VALUE is JSON where it parses (1200, true, "1200"), else text. Repeatable.',
)
@click.option(
    "--add",
    "additions",
    multiple=True,
    type=ASSIGNMENT,
    metavar="PATH=VALUE",
    help="Like --set, and the path may be new: adds keys the fixture lacks. Repeatable.",
)
@click.option("--remove", "removals", multiple=True, metavar="PATH", help="Remove a key or list item. Repeatable.")
@to_option(default=DEFAULT_TO, help="The receiver.")
@secret_option
@fixtures_option
@allow_remote_option
@timeout_option
@json_option("One JSON line per event sent.")
def trigger(
    name: str,
    assignments: Sequence[tuple[str, Any]],
    additions: Sequence[tuple[str, Any]],
    removals: Sequence[str],
    url: str,
    secret: str | None,
    fixture_dirs: Sequence[Path],
    allow_remote: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Build a fixture event (or a scenario's events, in order) and send it, signed, to a receiver.

    Paths are dotted (data.line_items.0.amount); quote a key that holds a dot
    (data.metadata."plan.tier"); prefix a scenario step's name to target one step
    (customer:data.email). --set refuses a path the fixture lacks and names the closest keys, so a
    typo never adds a key; --add adds one on purpose. Exit status 1 if an event is not accepted
    with a 2xx; a scenario stops there.

    \b
    Examples:
      montra-hooks trigger subscription.upgraded
      montra-hooks trigger refund.created --set data.amount=1200 --remove data.reason
      montra-hooks trigger customer.created --add data.metadata.plan=pro
      montra-hooks trigger checkout-to-subscription --set customer:data.email=ada@example.com
    """
    from ..send import HttpTarget
    from ..sources import build_events

    target_url(url, allow_remote=allow_remote)
    key = sending_secret(secret)
    try:
        catalogue = open_catalogue(fixture_dirs)
        events = build_events(catalogue, name, assignments=assignments, additions=additions, removals=removals)
    except FixtureError as e:
        raise click.UsageError(str(e)) from e
    if not asyncio.run(_send_in_order(HttpTarget(url, secret=key, keep_id=True, timeout=timeout), events, as_json)):
        raise SystemExit(1)


async def _send_in_order(target: HttpTarget, events: Sequence[Outgoing], as_json: bool) -> bool:
    from ..report import answer_line, result_json, sent_line

    async with target:
        for n, event in enumerate(events, 1):
            if not as_json:
                click.echo(sent_line(event))
            result = await target.send(event)
            click.echo(json.dumps(result_json(result, replay=False)) if as_json else answer_line(result))
            if not result.ok:
                if n < len(events):
                    click.echo(f"Stopped: the {len(events) - n} later event(s) were not sent.", err=True)
                return False
    return True
