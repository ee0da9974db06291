"""`montra-hooks watch`: send a fixture each time its file is saved; reload handler code on change."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from receiver.errors import ConfigurationError

from ..fixtures import USER_DIR
from .options import (
    allow_remote_option,
    app_option,
    fixtures_option,
    open_catalogue,
    secret_option,
    sending_secret,
    target_url,
    timeout_option,
    to_option,
)

if TYPE_CHECKING:
    from ..inprocess import AppTarget
    from ..send import HttpTarget

__all__ = ["watch"]


@click.command()
@fixtures_option
@to_option(default=None, help="A receiver to POST each saved fixture to.")
@app_option(help="Run your handlers in-process, reloading their code.")
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

    Save DIR/TYPE.json (or DIR/scenarios/NAME.json) to send its event(s); DIR defaults to
    ./montra-fixtures when it exists. With --app, saving the
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
            f"Nothing to watch: pass --fixtures DIR (or set MONTRA_HOOKS_FIXTURES, or create ./{USER_DIR}), a folder "
            "of fixtures you edit; record a stored event there with `montra-hooks fixtures record ID`, or copy one "
            "with `montra-hooks fixtures show TYPE > DIR/TYPE.json`."
        )
    from ..inprocess import AppTarget
    from ..send import HttpTarget
    from ..watch import HandlerModule, Watcher

    catalogue = open_catalogue(fixture_dirs)
    code: HandlerModule | None = None
    target: HttpTarget | AppTarget
    if url is not None:
        target_url(url, allow_remote=allow_remote)
        target = HttpTarget(url, secret=sending_secret(secret), keep_id=True, timeout=timeout, connections=1)
    else:
        assert app_spec is not None
        try:
            code = HandlerModule(app_spec)
        except ConfigurationError as e:
            raise click.BadParameter(str(e), param_hint="--app") from e
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
