"""`montra-hooks watch`: re-send a fixture each time its file is saved; reload handler code on change.

The fixture folders (and their `scenarios/`) are watched with watchfiles. Saving `refund.created.json`
builds that type's event (a scenario file builds its steps) and sends it, to a receiver over HTTP or
to the handlers in-process. With `--app`, the handler module's folder is watched too: a saved `.py`
is re-imported (`importlib.reload`) and the last event runs again on the new code. Code that does
not import (a syntax error mid-edit) is shown, and the previous code keeps running until the next save.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from watchfiles import Change, awatch

from receiver.hooks import Hooks, import_hooks

from .fixtures import Catalogue
from .inprocess import AppTarget
from .paths import FixtureError
from .report import answer_line, sent_line
from .send import HttpTarget, Outgoing
from .sources import outgoing

__all__ = ["HandlerModule", "Watcher"]

Echo = Callable[..., None]

_SKIPPED_DIRS = {"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_READY_TIMEOUT_MS = 300  # watchfiles wakes us this often while nothing changes; the first wake means it is ready


class HandlerModule:
    """The module behind `--app MOD:HOOKS`, re-imported when its code changes."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.hooks = import_hooks(spec)
        self.module_name, _, self.attribute = spec.partition(":")

    def folders(self) -> list[Path]:
        """Where its code lives: a package's folders, or the folder of a plain module."""
        file = getattr(sys.modules[self.module_name], "__file__", None)
        if file is None:
            return []
        root = Path(file).resolve().parent
        if not hasattr(sys.modules[self.module_name], "__path__"):
            return [root]
        found = [root]
        for path in sorted(root.rglob("*")):
            if path.is_dir() and not _SKIPPED_DIRS.intersection(path.relative_to(root).parts):
                found.append(path)
        return found

    def reload(self, changed: Sequence[Path]) -> str | None:
        """Re-import the changed modules, then the hooks' module; the error's traceback if that fails."""
        changed_files = {path.resolve() for path in changed}
        main = sys.modules[self.module_name]
        try:
            for module in list(sys.modules.values()):
                file = getattr(module, "__file__", None)
                if module is not main and file and Path(file).resolve() in changed_files:
                    _forget_bytecode(file)
                    importlib.reload(module)
            if main.__file__:
                _forget_bytecode(main.__file__)
            main = importlib.reload(main)
            hooks = getattr(main, self.attribute, None)
            if not isinstance(hooks, Hooks):
                raise TypeError(f"{self.spec} is {type(hooks).__name__} after the reload, not a receiver.Hooks")
        except Exception:  # the merchant's code, mid-edit: show why, keep the previous hooks
            return traceback.format_exc()
        self.hooks = hooks
        return None


def _forget_bytecode(source: str) -> None:
    # Cached bytecode is trusted when the source's mtime (in whole seconds) and size are unchanged:
    # two saves within one second could otherwise reload the old code.
    with contextlib.suppress(OSError, ValueError, NotImplementedError):
        Path(importlib.util.cache_from_source(source)).unlink()


class Watcher:
    """Sends fixtures as their files are saved, and re-runs the last event when handler code changes."""

    def __init__(
        self,
        catalogue: Catalogue,
        folders: Sequence[Path],
        target: HttpTarget | AppTarget,
        *,
        code: HandlerModule | None = None,
        echo: Echo,
    ) -> None:
        self.catalogue = catalogue
        self.folders = [folder.resolve() for folder in folders]
        self.target = target
        self.code = code
        self.echo = echo
        self.last: list[Outgoing] = []

    def _watched(self) -> list[Path]:
        paths = [*self.folders, *(f / "scenarios" for f in self.folders if (f / "scenarios").is_dir())]
        if self.code is not None:
            paths.extend(self.code.folders())
        return list(dict.fromkeys(paths))

    def _fixture_name(self, path: Path) -> str | None:
        if path.suffix != ".json" or path.name.startswith("."):
            return None
        if path.parent in self.folders:
            return path.stem
        if path.parent.name == "scenarios" and path.parent.parent in self.folders:
            return path.stem
        return None

    def _wanted(self, change: Change, path: str) -> bool:
        file = Path(path)
        if change == Change.deleted:
            return False
        return self._fixture_name(file) is not None or (self.code is not None and file.suffix == ".py")

    async def run(self, *, stop_event: asyncio.Event | None = None) -> None:
        """Watch until `stop_event` is set (or the task is cancelled)."""
        watched = self._watched()
        ready = False
        async for changes in awatch(
            *watched,
            watch_filter=self._wanted,
            recursive=False,
            yield_on_timeout=True,
            rust_timeout=_READY_TIMEOUT_MS,
            stop_event=stop_event,
        ):
            if not ready:
                ready = True
                where = ", ".join(str(f) for f in self.folders)
                code = f"; reloading {self.code.spec} when its code changes" if self.code else ""
                self.echo(f"Watching {where} for fixture saves{code}. Ctrl-C stops.")
            if changes:
                # watchfiles reports paths under the folders as given, which are already resolved.
                await self.handle({Path(path) for _, path in changes})

    async def handle(self, paths: set[Path]) -> None:
        """React to one batch of saved files: reload code first, then send the fixtures saved."""
        code = sorted(p for p in paths if p.suffix == ".py")
        names = list(dict.fromkeys(n for p in sorted(paths) if (n := self._fixture_name(p)) is not None))
        reloaded = False
        if code and self.code is not None and isinstance(self.target, AppTarget):
            error = self.code.reload(code)
            if error is not None:
                self.echo(f"Could not reload {self.code.spec}; the previous code still runs:\n{error}", err=True)
            else:
                self.target.hooks = self.code.hooks
                self.echo(f"Reloaded {self.code.spec}: {', '.join(self.code.hooks.names) or 'no handlers'}")
                reloaded = True
        for name in names:
            try:
                self.last = [outgoing(envelope) for envelope in self.catalogue.build(name)]
            except FixtureError as e:
                self.echo(f"Not sent: {e}", err=True)
                continue
            await self.send(self.last)
        if reloaded and not names and self.last:
            self.echo("Running the last event again on the new code:")
            await self.send(self.last)

    async def send(self, events: Sequence[Outgoing]) -> bool:
        """Send events in order, printing each; stop at the first that is not accepted."""
        for event in events:
            self.echo(sent_line(event))
            result = await self.target.send(event)
            self.echo(answer_line(result))
            if result.detail:
                self.echo(result.detail.rstrip(), err=True)
            if not result.ok:
                return False
        return True
