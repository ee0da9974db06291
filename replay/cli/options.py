"""The options that several commands share, each defined once as a decorator (as sqlite-utils'
`output_options`), the click types that parse them, and how their values become what commands use.

Only this package speaks click: the library raises `ConfigurationError` or `FixtureError`, and the
helpers here turn those into one-line `click.UsageError`/`click.BadParameter` (exit 2) that say what
to do. None of them ever prints a secret. Nothing here imports the web stack (Starlette, uvicorn,
httpx, jinja2): the read-only commands start without it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

import click

from receiver.dev_secret import DEV_SECRET_FILE
from receiver.errors import ConfigurationError, MontraHooksError
from receiver.event import EventStatus
from receiver.hooks import Hooks, import_hooks
from receiver.patterns import validate_pattern
from receiver.stores.open import DEFAULT_DB, is_postgres_url, open_store, redact_url
from receiver.stores.protocol import Store
from receiver.stores.sqlite.store import check_store_file
from receiver.times import parse_duration, parse_when

from ..fixtures import USER_DIR, Catalogue, default_user_dirs
from ..paths import FixtureError, parse_assignment
from ..targets import DEFAULT_TO, RemoteTarget, check_target, signing_secret

__all__ = [
    "DEFAULT_TO",
    "DURATION",
    "PATTERN",
    "WHEN",
    "F",
    "allow_remote_option",
    "app_option",
    "db_option",
    "event_filter_options",
    "fixtures_option",
    "json_option",
    "load_hooks",
    "no_such_event",
    "open_catalogue",
    "open_existing_store",
    "run_on_store",
    "secret_option",
    "sending_secret",
    "target_url",
    "timeout_option",
    "to_option",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

if TYPE_CHECKING:  # click's ParamType is generic for the type checker; subscripting it at runtime needs click 8.2+
    _FloatType = click.ParamType[float]
    _TimeType = click.ParamType[datetime]
    _TextType = click.ParamType[str]
    _PairType = click.ParamType[tuple[str, Any]]
else:
    _FloatType = _TimeType = _TextType = _PairType = click.ParamType


def _fail(message: str, param: click.Parameter | None, ctx: click.Context | None) -> click.BadParameter:
    """A BadParameter naming the option as it is typed (`--since`), as every other message here does."""
    hint = param.opts[0] if param is not None and param.opts else None
    return click.BadParameter(message, ctx=ctx, param_hint=hint)


class Duration(_FloatType):
    """`90s`, `15m`, `2h`, `30d`, `1w` as seconds (a float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as e:
            raise _fail(str(e), param, ctx) from None


class When(_TimeType):
    """An ISO 8601 time (UTC when it names no zone), or a duration meaning that long ago (`2h`), as a datetime."""

    name = "when"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError as e:
            raise _fail(str(e), param, ctx) from None


class Pattern(_TextType):
    """An event type pattern: `subscription.upgraded`, `subscription.*` or `*`."""

    name = "pattern"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return validate_pattern(str(value))
        except ConfigurationError as e:
            raise _fail(str(e), param, ctx) from e


class Assignment(_PairType):
    """`--set PATH=VALUE`: a dotted path and a JSON (or text) value."""

    name = "assignment"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_assignment(str(value))
        except FixtureError as e:
            raise _fail(str(e), param, ctx) from e


DURATION = Duration()
WHEN = When()
PATTERN = Pattern()
ASSIGNMENT = Assignment()


# --- the store --------------------------------------------------------------------------------------------


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        envvar="MONTRA_HOOKS_DB",
        metavar="FILE|URL",
        default=DEFAULT_DB,
        show_default=True,
        help="The event store: a SQLite file, or a postgresql:// URL (env MONTRA_HOOKS_DB).",
    )(fn)


def event_filter_options(*, limit: int | None, order: str) -> Callable[[F], F]:
    """--type, --status, --since, --until, --limit: which stored events a command reads.

    The command takes them as `types`, `statuses`, `since`, `until` (datetimes) and `limit`.
    """
    limit_help = f"At most this many events ({order})."

    def decorate(fn: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--type",
                    "types",
                    multiple=True,
                    type=PATTERN,
                    metavar="PATTERN",
                    help="subscription.upgraded, subscription.*, *; repeat for more.",
                ),
                click.option(
                    "--status",
                    "statuses",
                    multiple=True,
                    type=click.Choice(get_args(EventStatus)),
                    help="The event's status; repeat for more.",
                ),
                click.option(
                    "--since",
                    type=WHEN,
                    metavar="WHEN",
                    help="Received at or after: ISO time or a duration ago (2h, 7d).",
                ),
                click.option("--until", type=WHEN, metavar="WHEN", help="Received before: ISO time or a duration ago."),
                click.option(
                    "--limit",
                    default=limit,
                    show_default=limit is not None,
                    type=click.IntRange(min=1),
                    metavar="N",
                    help=limit_help,
                ),
            ]
        ):
            fn = option(fn)
        return fn

    return decorate


def open_existing_store(db: str, *, write: bool = False) -> Store:
    """The store `--db` names, which must exist: a usage error when it does not (looking never creates one).

    Read-only unless `write`: reading commands never create, migrate or write a store.
    """
    try:
        if write and not is_postgres_url(db):
            check_store_file(db)
        return open_store(db, readonly=not write)
    except ConfigurationError as e:
        raise click.UsageError(str(e)) from e


def run_on_store(db: str, work: Callable[[Store], Awaitable[T]], *, write: bool = False) -> T:
    """Open the store `--db` names, run `work` on it, close it; a store error is one line, exit 2."""
    store = open_existing_store(db, write=write)

    async def main() -> T:
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except MontraHooksError as e:  # a locked or unreadable store: one line that says so, exit 2
        raise click.UsageError(f"{e} Check --db, or try again when the store is free.") from e


def no_such_event(event_id: str, db: str) -> NoReturn:
    """Stop with exit 1, as any selection that matches nothing does, naming the id and the store."""
    listing = "`montra-hooks events list` shows what is stored."
    click.echo(f"Error: No event {event_id!r} in {redact_url(db)}: {listing}", err=True)
    raise SystemExit(1)


# --- fixtures ---------------------------------------------------------------------------------------------


def fixtures_option(fn: F) -> F:
    """--fixtures DIR: a folder of your own fixtures (DIR/TYPE.json, DIR/scenarios/NAME.json); the same everywhere."""
    return click.option(
        "--fixtures",
        "fixture_dirs",
        multiple=True,
        envvar="MONTRA_HOOKS_FIXTURES",
        # Read when the command runs, not at import: ./montra-fixtures may appear after the CLI loads.
        default=default_user_dirs,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        metavar="DIR",
        help=f"A folder of your own fixtures, which win over the built-in ones; repeat for more "
        f"(env MONTRA_HOOKS_FIXTURES, folders separated by {os.pathsep!r}; default ./{USER_DIR} if it exists).",
    )(fn)


def open_catalogue(fixture_dirs: Sequence[Path]) -> Catalogue:
    try:
        return Catalogue(fixture_dirs)
    except FixtureError as e:
        raise click.BadParameter(str(e), param_hint="--fixtures") from e


# --- where events go, signed with what ----------------------------------------------------------------------


def to_option(*, default: str | None, help: str) -> Callable[[F], F]:
    return click.option("--to", "url", default=default, show_default=default is not None, metavar="URL", help=help)


def app_option(*, help: str) -> Callable[[F], F]:
    return click.option("--app", "app_spec", metavar="MOD:HOOKS", help=help)


def allow_remote_option(fn: F) -> F:
    return click.option(
        "--allow-remote", is_flag=True, help="Allow a target that is not on loopback (127.0.0.1, ::1, localhost)."
    )(fn)


def secret_option(fn: F) -> F:
    return click.option(
        "--secret",
        metavar="S",
        help=f"Sign with this secret (default: the first of env MONTRA_HOOKS_SECRETS, else the dev "
        f"secret `serve` created in {DEV_SECRET_FILE}).",
    )(fn)


def timeout_option(fn: F) -> F:
    return click.option(
        "--timeout",
        default=30.0,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="How long to wait for each answer.",
    )(fn)


def json_option(help: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def target_url(url: str, *, allow_remote: bool, option: str = "--to") -> str:
    """An http(s) URL on loopback (anywhere with --allow-remote), or a one-line usage error."""
    try:
        return check_target(url, allow_remote=allow_remote)
    except RemoteTarget as e:
        raise click.UsageError(str(e)) from e
    except ConfigurationError as e:
        raise click.BadParameter(str(e), param_hint=option) from e


def sending_secret(secret: str | None) -> str:
    """--secret, else the first of MONTRA_HOOKS_SECRETS, else the dev secret; checked by signing once."""
    try:
        found = signing_secret(secret)
    except ConfigurationError as e:  # its message never quotes the secret
        raise click.BadParameter(str(e), param_hint="--secret") from e
    if found is None:
        raise click.UsageError(
            f"No secret to sign with: pass --secret, or run `montra-hooks serve` once on loopback to create "
            f"the dev secret ({DEV_SECRET_FILE}) in this folder."
        )
    return found


def load_hooks(spec: str) -> Hooks:
    """The Hooks `--app MOD:HOOKS` names, or a one-line usage error."""
    try:
        return import_hooks(spec)
    except ConfigurationError as e:
        raise click.BadParameter(str(e), param_hint="--app") from e
