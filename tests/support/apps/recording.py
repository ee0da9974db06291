"""Handlers for the real-server dispatch tests: every try appends JSON lines to `runs.jsonl` beside this file.

The tests copy this file into tmp_path and run `montra-hooks serve --app recording:hooks` there.
What a handler does is steered per event by `data.plan`, keyed by handler name (`"*"` for all):

- `fail_until: N`   raise ValueError on tries before N (so N=3 fails tries 1 and 2);
- `no_retry_while: FILE`   raise NoRetry while FILE exists beside this module;
- `sleep_first: S`  sleep S seconds on try 1 only;
- `block: FILE`     wait until FILE exists;
- `sleep: S`        sleep S seconds on every try.

Lines: `{"phase": "start" | "end" | "dead", "event", "handler", "attempt", "pid", "time", "outcome"}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from receiver import Event, Hooks, NoRetry

HERE = Path(__file__).resolve().parent
LOG = HERE / "runs.jsonl"

hooks = Hooks()


def _write(record: dict[str, Any]) -> None:
    # One write() of one line in append mode: lines from several processes never interleave.
    with LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps({**record, "pid": os.getpid(), "time": time.time()}) + "\n")


def _plan(event: Event, name: str) -> dict[str, Any]:
    plans: dict[str, dict[str, Any]] = event.data.get("plan", {})
    return plans.get(name, plans.get("*", {}))


def _begin(event: Event, name: str) -> dict[str, Any]:
    record = {"event": event.id, "handler": name, "attempt": event.attempt}
    _write({**record, "phase": "start"})
    return record


def _check(event: Event, name: str, plan: dict[str, Any]) -> None:
    flag = plan.get("no_retry_while")
    if flag and (HERE / flag).exists():
        raise NoRetry(f"{name} refused {event.id} while {flag} exists")
    if event.attempt < plan.get("fail_until", 0):
        raise ValueError(f"{name} failed try {event.attempt} of {event.id}")


async def _run_async(event: Event, name: str) -> None:
    record, plan = _begin(event, name), _plan(event, name)
    outcome = "error"
    try:
        if event.attempt == 1:
            await asyncio.sleep(plan.get("sleep_first", 0))
        await asyncio.sleep(plan.get("sleep", 0))
        while plan.get("block") and not (HERE / plan["block"]).exists():  # noqa: ASYNC110 (another process makes it)
            await asyncio.sleep(0.01)
        _check(event, name, plan)
        outcome = "ok"
    finally:
        _write({**record, "phase": "end", "outcome": outcome})


def _run_sync(event: Event, name: str) -> None:
    record, plan = _begin(event, name), _plan(event, name)
    outcome = "error"
    try:
        time.sleep(plan.get("sleep", 0))
        _check(event, name, plan)
        outcome = "ok"
    finally:
        _write({**record, "phase": "end", "outcome": outcome})


@hooks.on("subscription.upgraded", name="exact")
async def exact(event: Event) -> None:
    await _run_async(event, "exact")


@hooks.on("subscription.*", name="prefix")
async def prefix(event: Event) -> None:
    await _run_async(event, "prefix")


@hooks.on("refund.created", name="refunds")
def refunds(event: Event) -> None:
    """A sync handler: it runs in the dispatcher's thread pool."""
    _run_sync(event, "refunds")


@hooks.on("payment.failed", name="limited", max_attempts=2)
async def limited(event: Event) -> None:
    await _run_async(event, "limited")


@hooks.on("*", name="everything")
async def everything(event: Event) -> None:
    await _run_async(event, "everything")


@hooks.on_dead
async def dead(event: Event, handler: str, error: str) -> None:
    _write({"phase": "dead", "event": event.id, "handler": handler, "attempt": event.attempt, "error": error})
