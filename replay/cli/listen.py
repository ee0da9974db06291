"""`montra-hooks listen`: the laptop side of the tunnel."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import click

from receiver.errors import MontraHooksError
from receiver.loopback import is_loopback

from .options import PATTERN, allow_remote_option, json_option, secret_option, sending_secret, target_url

__all__ = ["listen"]


@click.command()
@click.option("--from", "source", required=True, metavar="URL", help="The relay's base URL; listen reads URL/stream.")
@click.option(
    "--token",
    required=True,
    envvar="MONTRA_HOOKS_STREAM_TOKEN",
    metavar="T",
    help="The relay's stream token (env MONTRA_HOOKS_STREAM_TOKEN).",
)
@click.option(
    "--forward-to", "target", required=True, metavar="URL", help="Local receiver, e.g. http://127.0.0.1:8000/webhooks."
)
@secret_option
@click.option(
    "--events",
    multiple=True,
    type=PATTERN,
    metavar="PATTERN",
    help="Only these types: subscription.*, refund.created; repeat.",
)
@click.option(
    "--start", default="live", show_default=True, metavar="live|all|SEQ", help="Where to begin with no saved cursor."
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Cursor file (default .montra-hooks/listen-<hash>.json).",
)
@json_option("One JSON object per delivered event.")
@allow_remote_option
@click.option(
    "--backoff",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.001),
    metavar="SECONDS",
    help="First wait before retrying the target or reconnecting; it doubles up to --max-backoff.",
)
@click.option("--max-backoff", default=10.0, show_default=True, type=click.FloatRange(min=0.001), metavar="SECONDS")
@click.option(
    "--silence",
    default=45.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Reconnect after this long without a byte from the relay.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Wait this long for the local target's answer.",
)
def listen(
    source: str,
    token: str,
    target: str,
    secret: str | None,
    events: Sequence[str],
    start: str,
    state: Path | None,
    as_json: bool,
    allow_remote: bool,
    backoff: float,
    max_backoff: float,
    silence: float,
    timeout: float,
) -> None:
    """Tunnel a public receiver's events to a local one, in order, missing nothing.

    \b
    Example (the relay runs `montra-hooks serve --stream-token T` on a public host):
      montra-hooks listen --from https://hooks.example.com --token T \\
        --forward-to http://127.0.0.1:8000/webhooks

    Each event is re-signed for --secret (same webhook-id, fresh timestamp, exact body). A local
    target that is down or answers 5xx is retried, never skipped; a 401, 403, 404 or 405 (wrong
    --secret or path) stops listen with exit 1 before that event; another 4xx is shown and passed. The
    cursor is saved after each answer, so a restart resumes where it stopped; with none saved,
    listen starts at the live end unless --start all (or --start SEQ) asks for the backlog.
    """
    target_url(source, allow_remote=True, option="--from")
    target_url(target, allow_remote=allow_remote, option="--forward-to")
    if urlsplit(source).scheme == "http" and not is_loopback(urlsplit(source).hostname or ""):
        click.echo("warning: --from is plain http: the token and the events cross the network unencrypted.", err=True)
    if start not in ("live", "all") and not (start.isascii() and start.isdigit() and int(start) >= 1):
        raise click.BadParameter(f"{start!r}: use live, all, or a seq of 1 or more.", param_hint="--start")
    secret = sending_secret(secret)
    # Imported here: listen's client (httpx, httpx-sse) is for this command alone.
    from ..listen import CursorFile, Listener, ListenError, ListenSettings, default_state_path, run_until_stopped

    settings = ListenSettings(
        source=source,
        token=token,
        target=target,
        secret=secret,
        events=tuple(events),
        start=start,
        backoff=backoff,
        max_backoff=max(backoff, max_backoff),
        silence=silence,
        timeout=timeout,
        as_json=as_json,
    )
    listener = Listener(settings, CursorFile(state or default_state_path(source), source))
    try:
        run_until_stopped(listener)
    except ListenError as e:
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(e.exit_code) from e
    except MontraHooksError as e:
        raise click.UsageError(str(e)) from e
