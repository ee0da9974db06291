"""Handlers that try to take the receiver down, for tests/test_containment.py.

The tests copy this file into tmp_path and run `montra-hooks serve --app crashing:hooks` there. What a
handler does is the event's `data.how`:

- `sys.exit`           `sys.exit(3)`;
- `KeyboardInterrupt`  raise KeyboardInterrupt;
- `BaseException`      raise a BaseException that is not an Exception;
- `CancelledError`     raise asyncio.CancelledError itself (nobody cancelled it);
- `os._exit`           end the process at once, as a segfault or the OOM killer would: no shutdown code runs;
- anything else        return (a try that succeeds).

`crash.async` events go to an async handler, `crash.sync` events to a sync one (in the dispatcher's
threads). Every try and every `on_dead` call appends a JSON line to `runs.jsonl` beside this file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from receiver import Event, Hooks
from receiver.errors import UnknownEventTypeWarning

HERE = Path(__file__).resolve().parent
LOG = HERE / "runs.jsonl"

# crash.async and crash.sync are made-up types on purpose: as documented, silence the warning about them.
warnings.filterwarnings("ignore", category=UnknownEventTypeWarning)
hooks = Hooks()


class Unusual(BaseException):
    """Neither an Exception nor one of the interpreter's own: handlers can raise those too."""


def _write(record: dict[str, Any]) -> None:
    # One write() of one line in append mode, flushed before a crash can lose it.
    with LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps({**record, "pid": os.getpid(), "time": time.time()}) + "\n")


def _misbehave(event: Event, name: str) -> None:
    how = event.data.get("how")
    _write({"phase": "start", "event": event.id, "handler": name, "attempt": event.attempt, "how": how})
    if how == "sys.exit":
        sys.exit(3)
    if how == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if how == "BaseException":
        raise Unusual(f"{name} raised a BaseException on try {event.attempt}")
    if how == "CancelledError":
        raise asyncio.CancelledError(f"{name} cancelled itself on try {event.attempt}")
    if how == "os._exit":
        os._exit(1)


@hooks.on("crash.async", name="async_handler")
async def async_handler(event: Event) -> None:
    await asyncio.sleep(0)
    _misbehave(event, "async_handler")


@hooks.on("crash.sync", name="sync_handler")
def sync_handler(event: Event) -> None:
    _misbehave(event, "sync_handler")


@hooks.on_dead
async def dead(event: Event, handler: str, error: str) -> None:
    _write({"phase": "dead", "event": event.id, "handler": handler, "attempt": event.attempt, "error": error})
