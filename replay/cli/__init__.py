"""`montra-hooks`: the one command line of the project, a click group with one module per command.

Each command module imports only click and the light parts of the library at the top; what a
command needs beyond that (uvicorn and Starlette for `serve`, httpx for the senders) it imports
when it runs, so `montra-hooks events list` starts without the web stack.
"""

from __future__ import annotations

import click

from .drift import drift_command
from .events import events
from .fixtures import fixtures
from .listen import listen
from .prune import prune
from .rejections import rejections
from .replay import replay
from .retry import retry
from .serve import serve
from .tail import tail
from .trigger import trigger
from .watch import watch

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="montra-webhooks")
def cli() -> None:
    """Receive, store, dispatch, replay and tunnel Montra webhooks."""


events.add_command(tail)  # its own module: events.py holds the listing and showing
for _command in (serve, events, rejections, retry, prune, trigger, replay, watch, listen, fixtures, drift_command):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="montra-hooks")
