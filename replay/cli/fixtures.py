"""`montra-hooks fixtures list|show|record`: the fixture catalogue, and stored events saved into it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from receiver.stores.protocol import Store, StoredEvent

from ..fixtures import USER_DIR, Catalogue
from ..paths import FixtureError
from .options import db_option, fixtures_option, no_such_event, open_catalogue, run_on_store

if TYPE_CHECKING:
    from ..scrub import Scrubbed

__all__ = ["fixtures"]


@click.group()
def fixtures() -> None:
    """The fixture catalogue: an event per Montra type, and scenarios that chain them.

    \b
    Examples:
      montra-hooks fixtures list
      montra-hooks fixtures show refund.created > my-fixtures/refund.created.json
      montra-hooks fixtures record msg_2Bc9XQ --scrub
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
        click.echo((f"  {name:<{width}}" + ("" if source.parent == builtin else _user_file(catalogue, name))).rstrip())
    click.echo("\nScenarios:")
    for name in scenarios:
        try:
            about = catalogue.description(name)
        except FixtureError as e:
            about = f"(cannot be built: {e})"
        click.echo(f"  {name:<{width}}  {about}".rstrip())
    click.echo("\nSend one: montra-hooks trigger TYPE-or-SCENARIO [--set PATH=VALUE]... [--remove PATH]...")


def _user_file(catalogue: Catalogue, name: str) -> str:
    """`  (FILE)`, and the type it builds when the file is named otherwise (`fixtures record --as NAME`)."""
    source = catalogue.source(name)
    try:
        built = catalogue.template(name)["type"]
    except FixtureError:
        built = name  # `fixtures show` and `trigger` say what is wrong with it
    return f"  ({source})" if built == name else f"  ({source}, a {built})"


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


@fixtures.command("record")
@click.argument("event_id", metavar="ID")
@click.option(
    "--as",
    "name",
    metavar="NAME",
    help="Save as NAME.json, sent with `trigger NAME` (default: the event's type). The file keeps the real type.",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help=f"The fixture folder to save in, created if missing (default: the first of env MONTRA_HOOKS_FIXTURES, "
    f"else ./{USER_DIR}, which trigger, watch and the pytest plugin read by default).",
)
@click.option(
    "--scrub",
    is_flag=True,
    help="Replace emails, people's names, phones, street addresses and card numbers with fixture values; "
    "ids, amounts, currencies and times are kept.",
)
@click.option("--force", is_flag=True, help="Overwrite a fixture file that already exists.")
@db_option
def fixtures_record(event_id: str, name: str | None, folder: Path | None, scrub: bool, force: bool, db: str) -> None:
    """Save a stored event as a fixture of your own: its type, data and previous_attributes, ids kept.

    The event's id and timestamp are left out: each build fills in fresh ones. The file is
    usable at once by trigger, replay --fixtures, watch and the pytest plugin.

    \b
    Examples:
      montra-hooks fixtures record msg_2Bc9XQ
      montra-hooks fixtures record msg_2Bc9XQ --as upgrade-to-pro --scrub
      montra-hooks fixtures record msg_2Bc9XQ --dir tests/montra-fixtures --force
    """
    from ..record import check_name, fixture_from_body, write_fixture
    from ..scrub import scrub as scrub_body

    try:
        wanted = None if name is None else check_name(name)
    except FixtureError as e:
        raise click.BadParameter(str(e), param_hint="--as") from e

    async def read(store: Store) -> StoredEvent | None:
        return await store.get_event(event_id)

    event = run_on_store(db, read)
    if event is None:
        no_such_event(event_id, db)
    folder = _record_dir() if folder is None else folder
    try:
        fixture = fixture_from_body(event.body, event.id)
        replaced: list[Scrubbed] = []
        if scrub:
            fixture, replaced = scrub_body(fixture)
        path = write_fixture(folder, wanted or fixture["type"], fixture, force=force)
    except FixtureError as e:
        raise click.UsageError(str(e)) from e
    if scrub:
        click.echo(_scrubbed_line(replaced))
    trigger = f"montra-hooks trigger {path.stem}" + ("" if _read_by_default(folder) else f" --fixtures {folder}")
    click.echo(f"Saved {event.type} [{event.id}] as {path}: send it with `{trigger}`.")


_LISTED = 20
"""Paths a --scrub line names; the rest are counted (a body can hold thousands of emails)."""


def _scrubbed_line(replaced: Sequence[Scrubbed]) -> str:
    if not replaced:
        return "Scrubbed nothing: no email, name, phone, address or card number found."
    listed = ", ".join(map(str, replaced[:_LISTED]))
    more = f" and {len(replaced) - _LISTED} more" if len(replaced) > _LISTED else ""
    return f"Scrubbed {len(replaced)} value(s): {listed}{more}."


def _env_dirs() -> list[Path]:
    return [Path(each) for each in os.environ.get("MONTRA_HOOKS_FIXTURES", "").split(os.pathsep) if each]


def _record_dir() -> Path:
    """Where `record` saves by default: the folder the other commands read by default."""
    return next(iter(_env_dirs()), Path(USER_DIR))


def _read_by_default(folder: Path) -> bool:
    """Whether `trigger` with no --fixtures reads `folder` (then the hint needs no --fixtures)."""
    defaults = _env_dirs() or [Path(USER_DIR)]
    return folder.resolve() in {each.resolve() for each in defaults}
