"""Replay: re-send stored (or fixture) events to a receiver, or run them through handlers in-process.

Stored rows are streamed (a page at a time, up to the newest seq at the start) into `pump`, which
keeps at most `workers` in flight; results go straight to the summary and the output, so a replay
of a million events takes the memory of a replay of ten. `montra-hooks replay` (replay/cli/replay.py)
checks the options and prints through `echo`; this module knows nothing of the command line.

>>> run = Replay(AppTarget(hooks), "my handlers", workers=8, echo=print)
>>> ok = await run.from_store(store, EventFilter(types=["subscription.*"]))
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from receiver.stores.protocol import EventFilter, Store

from .inprocess import AppTarget
from .report import Summary, answer_line, result_json, sent_line
from .send import HttpTarget, Outgoing, Result, pump
from .sources import count_events, snapshot, stored_events

__all__ = ["DEFAULT_CONCURRENCY", "Echo", "ProgressBar", "Replay", "Target"]

DEFAULT_CONCURRENCY = 8
_FAILURES_SHOWN = 20  # then only the summary: a receiver that is down must not print a line per event

Target = HttpTarget | AppTarget
Echo = Callable[..., None]
"""Prints one line: `echo(text)`, or `echo(text, err=True)` for stderr (click.echo's signature)."""


class ProgressBar(Protocol):
    def update(self, n_steps: int) -> None: ...


Progress = Callable[[int | None], AbstractContextManager[ProgressBar]]
"""Opens a progress bar of that length (None: unknown)."""


class Replay:
    """One replay: feeds the events to the target and reports each result and the summary.

    `progress`, when given, opens a bar that advances once per result; `dry_run` lists what would
    be sent instead of sending.
    """

    def __init__(
        self,
        target: Target,
        label: str,
        *,
        workers: int = DEFAULT_CONCURRENCY,
        rate: float | None = None,
        dry_run: bool = False,
        as_json: bool = False,
        echo: Echo = print,
        progress: Progress | None = None,
    ) -> None:
        self.target = target
        self.label = label
        self.workers = workers
        self.rate = rate
        self.dry_run = dry_run
        self.as_json = as_json
        self.echo = echo
        self.progress = progress
        self.summary = Summary()
        self._failures_shown = 0

    async def from_store(self, store: Store, selection: EventFilter) -> bool:
        """Send the rows `selection` holds now, oldest first; close the store afterwards."""
        try:
            selection = await snapshot(store, selection)
            total = await count_events(store, selection) if self.progress and not self.dry_run else None
            return await self.send(stored_events(store, selection), total)
        finally:
            await store.close()

    async def from_list(self, events: list[Outgoing]) -> bool:
        return await self.send(events, len(events))

    async def send(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing], total: int | None) -> bool:
        """True when every event was accepted (always True for a dry run); closes an HTTP target."""
        try:
            if self.dry_run:
                return await self._dry_run(events)
            return await self._send(events, total)
        finally:
            if isinstance(self.target, HttpTarget):
                await self.target.aclose()

    async def _send(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing], total: int | None) -> bool:
        with self._bar(total) as bar:

            def on_result(result: Result) -> None:
                self.summary.add(result)
                self._report(result)
                if bar is not None:
                    bar.update(1)

            await pump(events, self.target.send, on_result=on_result, concurrency=self.workers, rate=self.rate)
        self.summary.finish()
        if self.as_json:
            self.echo(json.dumps(self.summary.as_json()))
        elif self.summary.total == 0:
            self.echo("No events match: nothing was sent.")
        else:
            for line in self.summary.lines(self.label):
                self.echo(line)
        return self.summary.failed == 0

    def _report(self, result: Result) -> None:
        if self.as_json:
            self.echo(json.dumps(result_json(result)))
        elif not result.ok:
            self._failures_shown += 1
            if self._failures_shown <= _FAILURES_SHOWN:
                self.echo(f"{sent_line(result.event, result.sent_as)}  {answer_line(result)}", err=True)
            elif self._failures_shown == _FAILURES_SHOWN + 1:
                self.echo("... more failures: the summary counts them all (--json lists each).", err=True)

    async def _dry_run(self, events: AsyncIterable[Outgoing] | Iterable[Outgoing]) -> bool:
        count = 0
        async for event in _aiter(events):
            count += 1
            if self.as_json:
                line: dict[str, Any] = {"id": event.id, "type": event.type, "seq": event.seq, "dry_run": True}
                self.echo(json.dumps(line))
            else:
                seq = f"seq {event.seq}: " if event.seq is not None else ""
                self.echo(f"{seq}{event.type} [{event.id}]{self._would(event)}")
        if not self.as_json:
            self.echo(f"Dry run: {count} event(s) would go to {self.label}; nothing was sent.")
        return True

    def _would(self, event: Outgoing) -> str:
        identity = "" if self.target.keep_id else " as a new id"
        if isinstance(self.target, AppTarget):
            names = [r.name for r in self.target.hooks.handlers_for(event.type)]
            return f"{identity} -> {', '.join(names) if names else 'no handler matches'}"
        return identity

    @contextlib.contextmanager
    def _bar(self, total: int | None) -> Iterator[ProgressBar | None]:
        if self.progress is None:
            yield None
            return
        with self.progress(total) as bar:
            yield bar


async def _aiter(events: AsyncIterable[Outgoing] | Iterable[Outgoing]) -> AsyncIterator[Outgoing]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event
