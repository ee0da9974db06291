"""`montra-hooks`: the receiver's commands (serve, events, retry, prune) and the options they share."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from .dev_secret import DEV_SECRET_FILE, load_or_create_dev_secret
from .errors import ConfigurationError, MontraHooksError
from .event import EventStatus
from .hooks import Hooks, validate_pattern
from .loopback import is_loopback
from .stores.open import DEFAULT_DB, is_postgres_url, open_store, prepare_store, redact_url
from .stores.protocol import EventFilter, Store, StoredEvent

__all__ = [
    "cli",
    "db_option",
    "event_json",
    "import_hooks",
    "open_existing_store",
    "parse_duration",
    "parse_when",
]

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_EVENT_STATUSES = get_args(EventStatus)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="montra-webhooks")
def cli() -> None:
    """Receive, store, dispatch, replay and tunnel Montra webhooks."""


def db_option(fn: F) -> F:
    return click.option(
        "--db",
        envvar="MONTRA_HOOKS_DB",
        default=DEFAULT_DB,
        show_default=True,
        help="The event store: a SQLite file, or a postgresql:// URL (env MONTRA_HOOKS_DB).",
    )(fn)


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `30d`, `1w` as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration: use a number and a unit, e.g. 30d, 12h, 15m.")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def parse_when(text: str) -> str:
    """An ISO 8601 time, or a duration meaning that long ago (`2h`), as the store's ISO UTC text."""
    if _DURATION.match(text.strip()):
        moment = datetime.fromtimestamp(time.time() - parse_duration(text), UTC)
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is neither a time nor a duration: use e.g. 2026-11-25T17:00:00Z, 2026-11-25 or 2h."
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def import_hooks(spec: str) -> Hooks:
    """Import `module:attribute` (the working directory importable, as uvicorn does) and return its Hooks."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{spec!r} is not MODULE:HOOKS, e.g. examples.handlers:hooks.", param_hint="--app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise click.BadParameter(f"cannot import {module_name!r}: {e}.", param_hint="--app") from e
    hooks = getattr(module, attribute, None)
    if not isinstance(hooks, Hooks):
        found = type(hooks).__name__ if hooks is not None else "nothing"
        raise click.BadParameter(f"{spec} is {found}, not a receiver.Hooks.", param_hint="--app")
    return hooks


def open_existing_store(db: str) -> Store:
    if not is_postgres_url(db) and not Path(db).exists():
        raise click.UsageError(f"No event store at {db}: start `montra-hooks serve` first, or pass --db.")
    try:
        return open_store(db)
    except ConfigurationError as e:
        raise click.UsageError(str(e)) from e


@cli.command()
@click.option("--app", "app_spec", metavar="MOD:HOOKS", help="Your handlers: a module and its Hooks object.")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--path", default="/webhooks", show_default=True, help="Path that takes webhooks.")
@click.option("--secret", "secrets", multiple=True, metavar="S", help="Webhook secret; repeat to rotate.")
@click.option("--tolerance", default=300, show_default=True, type=click.IntRange(min=0), metavar="SECONDS")
@click.option("--max-body", default=1024 * 1024, show_default=True, type=click.IntRange(min=1), metavar="BYTES")
@click.option("--max-attempts", default=7, show_default=True, type=click.IntRange(min=1), metavar="N")
@click.option("--backoff", default=1.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS")
# Hidden: how long a claimed run stays leased without renewal; tests shorten it to see crash takeover quickly.
@click.option("--lease", default=30.0, type=click.FloatRange(min=0.3), hidden=True, metavar="SECONDS")
@click.option(
    "--stream-token",
    envvar="MONTRA_HOOKS_STREAM_TOKEN",
    metavar="T",
    help="Turn on GET /stream for `montra-hooks listen`, behind this bearer token (env MONTRA_HOOKS_STREAM_TOKEN).",
)
@click.option("--inspect", is_flag=True, help="Turn on the /inspect pages (this machine only, unless a token is set).")
@click.option(
    "--inspect-token",
    envvar="MONTRA_HOOKS_INSPECT_TOKEN",
    metavar="T",
    help="Turn on /inspect for whoever logs in with this token (env MONTRA_HOOKS_INSPECT_TOKEN).",
)
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs throughput).")
@click.option(
    "--max-connections",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    metavar="N",
    help="Open connections at most; past it, new requests get 503.",
)
# Hidden: how long a request's headers and body may take; tests shorten them to see slow clients cut off quickly.
@click.option("--header-timeout", default=10.0, type=click.FloatRange(min=0.1), hidden=True, metavar="SECONDS")
@click.option("--body-timeout", default=30.0, type=click.FloatRange(min=0.1), hidden=True, metavar="SECONDS")
def serve(
    app_spec: str | None,
    db: str,
    host: str,
    port: int,
    path: str,
    secrets: Sequence[str],
    tolerance: int,
    max_body: int,
    max_attempts: int,
    backoff: float,
    lease: float,
    stream_token: str | None,
    inspect: bool,
    inspect_token: str | None,
    access_log: bool,
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
) -> None:
    """Run the receiver.

    \b
    Example:
      montra-hooks serve --app examples.handlers:hooks --secret whsec_...

    Secrets also come from env MONTRA_HOOKS_SECRETS (comma-separated). With none on a loopback
    host, a dev secret is created in .montra-hooks/dev-secret for trigger, replay and listen.
    """
    from .app import create_app, secrets_from_env
    from .server import Limits, run_server

    inspect_token = inspect_token or None
    if inspect and not inspect_token and not is_loopback(host):
        raise click.UsageError(
            f"--inspect without a token on --host {host}, which is not loopback: pass --inspect-token T "
            "(or set MONTRA_HOOKS_INSPECT_TOKEN), or serve on 127.0.0.1."
        )
    chosen = list(secrets) or secrets_from_env()
    secret_note = f"{len(chosen)} configured"
    if not chosen:
        if not is_loopback(host):
            raise click.UsageError(
                f"No webhook secret, and --host {host} is not loopback: pass --secret or set MONTRA_HOOKS_SECRETS."
            )
        secret, created = load_or_create_dev_secret()
        chosen = [secret]
        secret_note = f"dev secret in {DEV_SECRET_FILE}" + (" (created)" if created else "")
    hooks = import_hooks(app_spec) if app_spec else Hooks()
    try:
        prepare_store(db)  # open and migrate now, so a bad --db is one line here, not a traceback later
        app = create_app(
            hooks,
            db=db,
            secrets=chosen,
            path=path,
            tolerance=tolerance,
            max_body=max_body,
            max_attempts=max_attempts,
            backoff=backoff,
            inspect=inspect,
            inspect_token=inspect_token,
            lease=lease,
            stream_token=stream_token or None,
        )
    except ConfigurationError as e:
        raise click.UsageError(str(e)) from e
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"montra-hooks: receiving on http://{shown_host}:{port}{path}")
    click.echo(f"  store:    {redact_url(db)}")
    click.echo(f"  secret:   {secret_note}")
    click.echo(f"  handlers: {', '.join(hooks.names) or 'none (events are stored, not dispatched)'}")
    click.echo("  stream:   " + ("GET /stream, token required" if stream_token else "off (--stream-token turns it on)"))
    if inspect or inspect_token:
        who = "log in with the --inspect-token" if inspect_token else "this machine only"
        click.echo(f"  inspect:  http://{shown_host}:{port}/inspect ({who})")
    click.echo("  delivery to handlers is at least once: make them idempotent on event.id")
    # From `make run` the command is not on PATH: show the one that is running.
    command = "montra-hooks"
    if not shutil.which(command):
        command = os.path.relpath(sys.argv[0])
        command = os.path.abspath(sys.argv[0]) if command.startswith("..") else command
    target = f"http://{shown_host}:{port}{path}"
    to = "" if target == "http://127.0.0.1:8000/webhooks" else f" --to {target}"
    listing = f"{command} events list" + ("" if db == DEFAULT_DB else f" --db {shlex.quote(redact_url(db))}")
    click.echo(f"Next, in another terminal: {command} trigger subscription.upgraded{to} && {listing}")
    # uvicorn configures its own loggers only: show the dispatcher's and the handlers' too, as uvicorn shows its.
    logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
    # Open streams end by themselves on SIGTERM, but a client that stopped reading holds its socket's
    # unsent bytes, and uvicorn would wait for them forever: the graceful shutdown gets 10 s.
    limits = Limits(max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout)
    run_server(app, host=host, port=port, limits=limits, access_log=access_log, timeout_graceful_shutdown=10)


@cli.group()
def events() -> None:
    """Look at stored events."""


@events.command("list")
@db_option
@click.option("--type", "types", multiple=True, metavar="PATTERN", help="subscription.upgraded, subscription.*, *")
@click.option("--status", "statuses", multiple=True, type=click.Choice(_EVENT_STATUSES))
@click.option("--since", help="ISO time or a duration ago (2h, 7d).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def events_list(
    db: str, types: Sequence[str], statuses: Sequence[str], since: str | None, limit: int, as_json: bool
) -> None:
    """List stored events, newest first.

    \b
    Example:
      montra-hooks events list --type 'subscription.*' --status dead
    """
    for pattern in types:
        _pattern(pattern)
    selection = EventFilter(
        types=types, status=statuses, since=parse_when(since) if since else None, limit=limit, newest_first=True
    )
    rows = _run(open_existing_store(db), lambda store: store.list_events(selection))
    if as_json:
        for row in rows:
            click.echo(json.dumps(event_json(row)))
        return
    if not rows:
        click.echo("No events match.")
        return
    id_width, type_width = max(len(r.id) for r in rows), max(len(r.type) for r in rows)
    click.echo(f"{'SEQ':>6}  {'ID':<{id_width}}  {'TYPE':<{type_width}}  {'STATUS':<9}  RECEIVED")
    for r in rows:
        click.echo(f"{r.seq:>6}  {r.id:<{id_width}}  {r.type:<{type_width}}  {r.status:<9}  {r.received_at}")


@events.command("show")
@db_option
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True)
def events_show(db: str, event_id: str, as_json: bool) -> None:
    """Show one event: headers, body and its handler runs with their errors.

    \b
    Example:
      montra-hooks events show msg_2Bc9XQ
    """

    async def read(store: Store) -> tuple[StoredEvent | None, list[Any]]:
        return await store.get_event(event_id), await store.get_runs(event_id)

    event, runs = _run(open_existing_store(db), read)
    if event is None:
        raise click.UsageError(
            f"No event {event_id!r} in {redact_url(db)}: `montra-hooks events list` shows what is stored."
        )
    if as_json:
        click.echo(json.dumps({**event_json(event), "runs": [_run_json(run) for run in runs]}))
        return
    click.echo(f"{event.type} [{event.id}]  seq {event.seq}  {event.status}")
    click.echo(f"received {event.received_at}" + (f", occurred {event.occurred_at}" if event.occurred_at else ""))
    for name, value in sorted(event.headers.items()):
        click.echo(f"  {name}: {value}")
    click.echo(_body_text(event.body))
    for run in runs:
        click.echo(f"\n{run.handler}: {run.status}, {run.attempts} attempt(s)")
        if run.next_attempt_at and run.status == "failed":
            click.echo(f"  next attempt at {run.next_attempt_at}")
        if run.last_error:
            click.echo("  " + run.last_error.rstrip().replace("\n", "\n  "))


@cli.command()
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
    count = _run(open_existing_store(db), lambda store: store.requeue(ids=ids, handler=handler, status=status))
    click.echo(f"Re-queued {count} run(s); a running receiver picks them up within a second.")


@cli.command()
@db_option
@click.option("--older-than", required=True, metavar="DURATION", help="e.g. 30d, 12h.")
def prune(db: str, older_than: str) -> None:
    """Delete events (with their runs) and rejections received longer ago than DURATION.

    \b
    Example:
      montra-hooks prune --older-than 30d
    """
    before = time.time() - parse_duration(older_than)
    counts = _run(open_existing_store(db), lambda store: store.prune(before=before))
    click.echo(", ".join(f"{n} {table}" for table, n in counts.items()) + " deleted.")


def event_json(event: StoredEvent) -> dict[str, Any]:
    """An event as JSON: the body as text when it is UTF-8, else as `body_b64`."""
    return {
        "seq": event.seq,
        "id": event.id,
        "type": event.type,
        "status": event.status,
        "occurred_at": event.occurred_at,
        "received_at": event.received_at,
        "headers": event.headers,
        **event.body_json(),
    }


def _run_json(run: Any) -> dict[str, Any]:
    return {name: getattr(run, name) for name in run.__slots__}


def _body_text(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2)
    except (UnicodeDecodeError, ValueError):
        return repr(body)


def _pattern(pattern: str) -> str:
    try:
        return validate_pattern(pattern)
    except ConfigurationError as e:
        raise click.BadParameter(str(e), param_hint="--type") from e


def _run(store: Store, work: Callable[[Store], Any]) -> Any:
    async def main() -> Any:
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except MontraHooksError as e:  # a locked or unreadable store: one line that says so, exit 2
        raise click.UsageError(f"{e} Check --db, or try again when the store is free.") from e
