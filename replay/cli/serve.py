"""`montra-hooks serve`: run the receiver under uvicorn."""

from __future__ import annotations

import errno
import logging
import shlex
import socket
from collections.abc import Callable, Sequence

import click

from receiver.command import command_name
from receiver.dev_secret import DEV_SECRET_FILE, load_or_create_dev_secret, secrets_from_env
from receiver.errors import ConfigurationError
from receiver.hooks import Hooks
from receiver.logs import LOG_FORMATS, log_config
from receiver.loopback import is_loopback
from receiver.stores.open import DEFAULT_DB, prepare_store, redact_url

from .options import DEFAULT_TO, DURATION, db_option, load_hooks

__all__ = ["PortInUse", "check_port", "serve"]


@click.command()
@click.option("--app", "app_spec", metavar="MOD:HOOKS", help="Your handlers: a module and its Hooks object.")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--path",
    default="/webhooks",
    show_default=True,
    callback=lambda ctx, param, value: _route(value),
    help="Path that takes webhooks.",
)
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
@click.option(
    "--inspect",
    is_flag=True,
    help="Turn on the /inspect pages: without --inspect-token, for this machine, with a token created once in "
    ".montra-hooks/inspect-token and a login link printed at start.",
)
@click.option(
    "--inspect-token",
    envvar="MONTRA_HOOKS_INSPECT_TOKEN",
    metavar="T",
    help="Turn on /inspect for whoever logs in with this token, 16 characters or more "
    "(env MONTRA_HOOKS_INSPECT_TOKEN).",
)
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
@click.option(
    "--retain", type=DURATION, metavar="DURATION", help="Prune events older than this in the background, e.g. 30d."
)
@click.option("--access-log", is_flag=True, help="Log every request (off by default: it costs throughput).")
@click.option("--metrics", is_flag=True, help="Serve GET /metrics for Prometheus.")
@click.option(
    "--metrics-token",
    envvar="MONTRA_HOOKS_METRICS_TOKEN",
    metavar="T",
    help="Serve GET /metrics behind this bearer token (env MONTRA_HOOKS_METRICS_TOKEN).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one JSON object per line (uvicorn's lines too), with event_id, handler, attempt, outcome.",
)
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
    max_connections: int,
    header_timeout: float,
    body_timeout: float,
    retain: float | None,
    access_log: bool,
    metrics: bool,
    metrics_token: str | None,
    log_format: str,
) -> None:
    """Run the receiver.

    \b
    Example:
      montra-hooks serve --app examples.handlers:hooks --secret whsec_...

    Secrets also come from env MONTRA_HOOKS_SECRETS (comma-separated). With none on a loopback
    host, a dev secret is created in .montra-hooks/dev-secret for trigger, replay and listen.
    """
    inspect_token = inspect_token or None
    if inspect and not inspect_token and not is_loopback(host):
        raise click.UsageError(
            f"--inspect without a token on --host {host}, which is not loopback: pass --inspect-token T "
            "(or set MONTRA_HOOKS_INSPECT_TOKEN), or serve on 127.0.0.1."
        )
    chosen = list(secrets) or secrets_from_env()
    if not chosen and not is_loopback(host):
        raise click.UsageError(
            f"No webhook secret, and --host {host} is not loopback: pass --secret or set MONTRA_HOOKS_SECRETS."
        )
    # Before the banner and before anything is created: a second `serve` says the port is taken, in one line.
    check_port(host, port)
    secret_note = f"{len(chosen)} configured"
    if not chosen:
        try:
            secret, created = load_or_create_dev_secret()
        except ConfigurationError as e:  # a link planted where the secret goes: say so, in one line
            raise click.UsageError(str(e)) from e
        chosen = [secret]
        secret_note = f"dev secret in {DEV_SECRET_FILE}" + (" (created)" if created else "")
    hooks = load_hooks(app_spec) if app_spec else Hooks()
    # Imported here: only serve needs the web stack, and the other commands start faster without it.
    from receiver.app import create_app
    from receiver.server import Limits, run_server

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
            retain=retain,
            metrics=metrics,
            metrics_token=metrics_token or None,
        )
    except ConfigurationError as e:
        raise click.UsageError(str(e)) from e
    # In JSON every line is an object, the banner's too: it goes through the same logging as the rest.
    logging_config = log_config("json") if log_format == "json" else None
    if logging_config is not None:
        from logging.config import dictConfig  # here: only serve needs it

        dictConfig(logging_config)
    say: Callable[[str], None] = logging.getLogger("montra.serve").info if logging_config else click.echo
    shown_host = f"[{host}]" if ":" in host else host
    say(f"montra-hooks: receiving on http://{shown_host}:{port}{path}")
    say(f"  store:    {redact_url(db)}")
    say(f"  secret:   {secret_note}")
    say(f"  handlers: {', '.join(hooks.names) or 'none (events are stored, not dispatched)'}")
    say("  stream:   " + ("GET /stream, token required" if stream_token else "off (--stream-token turns it on)"))
    if app.inspector is not None and app.inspector.token_file is None:
        say(f"  inspect:  http://{shown_host}:{port}/inspect (log in with the --inspect-token)")
    elif app.inspector is not None:
        # As Jupyter does: the link holds the token, so opening it is the login (this machine only).
        login = f"http://{shown_host}:{port}{app.inspector.login_path}"
        say(f"  inspect:  {login} (this machine only; token in {app.inspector.token_file})")
    if app.metrics is not None:
        if metrics_token:
            access = ", token required"
        elif is_loopback(host):
            access = ""
        else:  # counts and handler names only, but say so: --metrics-token closes it
            access = ", open to whoever reaches this port (--metrics-token T requires a bearer token)"
        say(f"  metrics:  http://{shown_host}:{port}/metrics{access}")
    say("  delivery to handlers is at least once: make them idempotent on event.id")
    command = command_name()  # as the shell finds it: from `make run` it is not on PATH
    target = f"http://{shown_host}:{port}{path}"
    to = "" if target == DEFAULT_TO else f" --to {target}"
    listing = f"{command} events list" + ("" if db == DEFAULT_DB else f" --db {shlex.quote(redact_url(db))}")
    say(f"Next, in another terminal: {command} trigger subscription.upgraded{to} && {listing}")
    if logging_config is None:
        # uvicorn configures its own loggers only: show the dispatcher's and the handlers' too, as uvicorn shows its.
        logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
    # Open streams end by themselves on SIGTERM, but a client that stopped reading holds its socket's
    # unsent bytes, and uvicorn would wait for them forever: the graceful shutdown gets 10 s.
    limits = Limits(max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout)
    run_server(
        app,
        host=host,
        port=port,
        limits=limits,
        access_log=access_log,
        timeout_graceful_shutdown=10,
        log_config=logging_config,
    )


class PortInUse(click.ClickException):
    """Exit 2 as a usage error does, but in one line: the command was right, the port is not free."""

    exit_code = 2


def check_port(host: str, port: int) -> None:
    """Bind (host, port) once and let go, as uvicorn will: a usage error, in one line, when it cannot."""
    if port == 0:
        return  # the system picks a free one
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise click.BadParameter(f"cannot resolve {host!r}: {e.strerror}.", param_hint="--host") from e
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn does: a port in TIME_WAIT after a previous serve is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"Port {port} on {host} is already in use (another montra-hooks serve?): "
                    f"stop it, or pass --port with a free port, e.g. --port {port + 1 if port < 65535 else 8001}."
                ) from e
            raise click.UsageError(
                f"Cannot listen on {host} port {port}: {e.strerror}. Check --host and --port."
            ) from e


def _route(path: str) -> str:
    """A path the router can mount: absolute, and not one of the receiver's own routes."""
    if not path.startswith("/"):
        raise click.BadParameter(f"{path!r} must start with '/': e.g. /{path.lstrip('/') or 'webhooks'}.")
    if path in ("/", "/healthz", "/stream") or path.startswith("/inspect"):
        raise click.BadParameter(f"{path!r} is one of the receiver's own routes: pick another, e.g. /webhooks.")
    return path
