"""Options that trigger, replay and watch share, and how each is turned into what the commands use.

Every check fails as a one-line `click.UsageError`/`click.BadParameter` (exit 2) that says what
to do; none of them ever prints a secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from receiver.app import secrets_from_env
from receiver.dev_secret import DEV_SECRET_FILE, load_dev_secret
from receiver.errors import ConfigurationError
from receiver.loopback import is_loopback
from receiver.verify import sign

from .fixtures import Catalogue
from .paths import FixtureError, parse_assignment
from .send import Outgoing
from .sources import outgoing

__all__ = [
    "DEFAULT_TO",
    "allow_remote_option",
    "build_events",
    "check_target",
    "fixtures_option",
    "open_catalogue",
    "secret_option",
    "signing_secret",
    "timeout_option",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TO = "http://127.0.0.1:8000/webhooks"
"""Where trigger sends by default: `montra-hooks serve` with its defaults."""


def fixtures_option(fn: F) -> F:
    return click.option(
        "--fixtures",
        "fixture_dirs",
        multiple=True,
        envvar="MONTRA_HOOKS_FIXTURES",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        metavar="DIR",
        help=f"A folder of your own fixtures, which win over the built-in ones; repeat for more "
        f"(env MONTRA_HOOKS_FIXTURES, folders separated by {os.pathsep!r}).",
    )(fn)


def secret_option(fn: F) -> F:
    return click.option(
        "--secret",
        metavar="S",
        help=f"Sign with this secret (default: the first of env MONTRA_HOOKS_SECRETS, else the dev "
        f"secret `serve` created in {DEV_SECRET_FILE}).",
    )(fn)


def allow_remote_option(fn: F) -> F:
    return click.option(
        "--allow-remote", is_flag=True, help="Allow a target that is not on loopback (127.0.0.1, ::1, localhost)."
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


def signing_secret(secret: str | None) -> str:
    """--secret, else the first of MONTRA_HOOKS_SECRETS, else the dev secret; checked by signing once."""
    if secret is None:
        configured = secrets_from_env()
        try:
            secret = configured[0] if configured else load_dev_secret()
        except ConfigurationError as e:  # a link planted where the dev secret is: never followed
            raise click.UsageError(str(e)) from e
    if secret is None:
        raise click.UsageError(
            f"No secret to sign with: pass --secret, or run `montra-hooks serve` once on loopback to create "
            f"the dev secret ({DEV_SECRET_FILE}) in this folder."
        )
    try:
        sign(b"", secret=secret)
    except ConfigurationError as e:  # its message never quotes the secret
        raise click.BadParameter(str(e), param_hint="--secret") from e
    return secret


def check_target(url: str, *, allow_remote: bool, option: str = "--to") -> str:
    """An http(s) URL whose host is loopback, unless `allow_remote`."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise click.BadParameter(f"{url!r} is not a URL: {e}.", param_hint=option) from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(
            f"{url!r} is not an http(s) URL: use e.g. http://127.0.0.1:8000/webhooks.", param_hint=option
        )
    if not allow_remote and not is_loopback(parsed.host):
        raise click.UsageError(
            f"{parsed.host} is not on loopback: pass --allow-remote to send events to {url} on purpose."
        )
    return url


def open_catalogue(fixture_dirs: Sequence[Path]) -> Catalogue:
    try:
        return Catalogue(fixture_dirs)
    except FixtureError as e:
        raise click.BadParameter(str(e), param_hint="--fixtures") from e


def build_events(
    catalogue: Catalogue, name: str, *, assignments: Sequence[str] = (), removals: Sequence[str] = ()
) -> list[Outgoing]:
    """Build a type's event (or a scenario's), `--set`/`--remove` applied, ready to send."""
    pairs = []
    for text in assignments:
        try:
            pairs.append(parse_assignment(text))
        except FixtureError as e:
            raise click.BadParameter(str(e), param_hint="--set") from e
    try:
        return [outgoing(envelope) for envelope in catalogue.build(name, set=pairs, remove=removals)]
    except FixtureError as e:
        raise click.UsageError(str(e)) from e
