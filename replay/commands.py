"""The `fixtures`, `trigger` and `watch` commands (`replay` has its own module, `replay.replay`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import click

from .inprocess import AppTarget
from .options import (
    DEFAULT_TO,
    allow_remote_option,
    build_events,
    check_target,
    fixtures_option,
    open_catalogue,
    secret_option,
    signing_secret,
    timeout_option,
)
from .paths import FixtureError
from .report import answer_line, result_json, sent_line
from .send import HttpTarget, Outgoing
from .watch import HandlerModule, Watcher

__all__ = ["fixtures", "trigger", "watch"]


@click.group()
def fixtures() -> None:
    """The fixture catalogue: an event per Montra type, and scenarios that chain them."""


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


@click.command()
@click.argument("name", metavar="TYPE-or-SCENARIO")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="PATH=VALUE",
    help='Override a value; VALUE is JSON where it parses (1200, true, "1200"), else text. Repeatable.',
)
@click.option("--remove", "removals", multiple=True, metavar="PATH", help="Remove a key or list item. Repeatable.")
@click.option("--to", "url", default=DEFAULT_TO, show_default=True, metavar="URL", help="The receiver.")
@secret_option
@fixtures_option
@allow_remote_option
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="One JSON line per event sent.")
def trigger(
    name: str,
    assignments: Sequence[str],
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
    (customer:data.email). Exit status 1 if an event is not accepted with a 2xx; a scenario
    stops there.

    \b
    Examples:
      montra-hooks trigger subscription.upgraded
      montra-hooks trigger refund.created --set data.amount=1200 --remove data.reason
      montra-hooks trigger checkout-to-subscription --set customer:data.email=ada@example.com
    """
    check_target(url, allow_remote=allow_remote)
    key = signing_secret(secret)
    events = build_events(open_catalogue(fixture_dirs), name, assignments=assignments, removals=removals)
    if not asyncio.run(_send_in_order(HttpTarget(url, secret=key, keep_id=True, timeout=timeout), events, as_json)):
        raise SystemExit(1)


async def _send_in_order(target: HttpTarget, events: Sequence[Outgoing], as_json: bool) -> bool:
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


@click.command()
@fixtures_option
@click.option("--to", "url", metavar="URL", help="A receiver to POST each saved fixture to.")
@click.option("--app", "app_spec", metavar="MOD:HOOKS", help="Run your handlers in-process, reloading their code.")
@secret_option
@allow_remote_option
@timeout_option
def watch(
    fixture_dirs: Sequence[Path],
    url: str | None,
    app_spec: str | None,
    secret: str | None,
    allow_remote: bool,
    timeout: float,
) -> None:
    """Send a fixture each time you save its file; with --app, reload your handlers when their code changes.

    Save DIR/TYPE.json (or DIR/scenarios/NAME.json) to send its event(s). With --app, saving the
    handler module runs the last event again on the new code.

    \b
    Examples:
      montra-hooks fixtures show refund.created > my-fixtures/refund.created.json
      montra-hooks watch --fixtures my-fixtures --app myapp.webhooks:hooks
      montra-hooks watch --fixtures my-fixtures --to http://127.0.0.1:8000/webhooks
    """
    if (url is None) == (app_spec is None):
        raise click.UsageError("Pass one target: --to URL (a running receiver) or --app MOD:HOOKS (in-process).")
    if not fixture_dirs:
        raise click.UsageError(
            "Nothing to watch: pass --fixtures DIR (or set MONTRA_HOOKS_FIXTURES), a folder of fixtures you edit; "
            "copy one there with `montra-hooks fixtures show TYPE > DIR/TYPE.json`."
        )
    catalogue = open_catalogue(fixture_dirs)
    code: HandlerModule | None = None
    target: HttpTarget | AppTarget
    if url is not None:
        check_target(url, allow_remote=allow_remote)
        target = HttpTarget(url, secret=signing_secret(secret), keep_id=True, timeout=timeout, connections=1)
    else:
        assert app_spec is not None
        code = HandlerModule(app_spec)
        target = AppTarget(code.hooks, keep_id=True)
    watcher = Watcher(catalogue, fixture_dirs, target, code=code, echo=click.echo)

    async def main() -> None:
        try:
            await watcher.run()
        finally:
            if isinstance(target, HttpTarget):
                await target.aclose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        click.echo("Stopped watching.")
