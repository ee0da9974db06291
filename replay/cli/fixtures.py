"""`montra-hooks fixtures list|show`: the fixture catalogue."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click

from ..paths import FixtureError
from .options import fixtures_option, open_catalogue

__all__ = ["fixtures"]


@click.group()
def fixtures() -> None:
    """The fixture catalogue: an event per Montra type, and scenarios that chain them.

    \b
    Examples:
      montra-hooks fixtures list
      montra-hooks fixtures show refund.created > my-fixtures/refund.created.json
    """


@fixtures.command("list")
@fixtures_option
def fixtures_list(fixture_dirs: Sequence[Path]) -> None:
    """List every event type and scenario; yours (from --fixtures) are marked with their file.

    \b
    Example:
      montra-hooks fixtures list --fixtures tests/montra-fixtures
    """
    catalogue = open_catalogue(fixture_dirs)
    builtin = catalogue.folders[-1]
    types, scenarios = catalogue.types(), catalogue.scenarios()
    width = max(map(len, [*types, *scenarios]), default=0)
    click.echo("Event types:")
    for name in types:
        source = catalogue.source(name)
        click.echo((f"  {name:<{width}}" + ("" if source.parent == builtin else f"  ({source})")).rstrip())
    click.echo("\nScenarios:")
    for name in scenarios:
        try:
            about = catalogue.description(name)
        except FixtureError as e:
            about = f"(cannot be built: {e})"
        click.echo(f"  {name:<{width}}  {about}".rstrip())
    click.echo("\nSend one: montra-hooks trigger TYPE-or-SCENARIO [--set PATH=VALUE]... [--remove PATH]...")


@fixtures.command("show")
@click.argument("name", metavar="TYPE-or-SCENARIO")
@fixtures_option
def fixtures_show(name: str, fixture_dirs: Sequence[Path]) -> None:
    """Print a fixture as its file holds it (a build adds a fresh id and timestamp).

    \b
    Example:
      montra-hooks fixtures show refund.created > my-fixtures/refund.created.json
    """
    catalogue = open_catalogue(fixture_dirs)
    try:
        if name in catalogue.types():
            document: object = catalogue.template(name)
        else:
            catalogue.description(name)  # checks the scenario, or names the close matches
            document = json.loads(catalogue.source(name).read_text(encoding="utf-8"))
    except FixtureError as e:
        raise click.UsageError(str(e)) from e
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))
