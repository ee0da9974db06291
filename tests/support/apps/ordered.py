"""Ordered handlers for the real-server ordering tests: each try appends JSON lines to `ordered.jsonl` beside it.

The tests copy this file into tmp_path and run `montra-hooks serve --app ordered:hooks` there.
`ordered` handles `subscription.*` ordered by subscription; `holding` handles `customer.*` ordered by customer
with `hold_on_dead=True`. What a try does is steered per event by `data.plan`:

- `block: FILE`            wait until FILE exists;
- `sleep: S`               sleep S seconds;
- `fail_while: FILE`       raise ValueError while FILE exists;
- `no_retry_while: FILE`   raise NoRetry (dead at once) while FILE exists.

Lines: `{"phase": "start" | "end", "event", "handler", "ref", "attempt", "superseded", "pid", "time", "outcome"}`.
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
LOG = HERE / "ordered.jsonl"

hooks = Hooks()


def _write(record: dict[str, Any]) -> None:
    # One write() of one line in append mode: lines from several processes never interleave.
    with LOG.open("a", encoding="utf-8") as log:
        log.write(json.dumps({**record, "pid": os.getpid(), "time": time.time()}) + "\n")


async def _run(event: Event, name: str, kind: str) -> None:
    record = {"event": event.id, "handler": name, "ref": event.refs.get(kind), "attempt": event.attempt}
    _write({**record, "phase": "start", "superseded": event.superseded})
    plan: dict[str, Any] = event.data.get("plan", {})
    outcome = "error"
    try:
        while plan.get("block") and not (HERE / plan["block"]).exists():  # noqa: ASYNC110 (the test makes it)
            await asyncio.sleep(0.01)
        await asyncio.sleep(plan.get("sleep", 0))
        if plan.get("no_retry_while") and (HERE / plan["no_retry_while"]).exists():
            raise NoRetry(f"{name} refused {event.id}")
        if plan.get("fail_while") and (HERE / plan["fail_while"]).exists():
            raise ValueError(f"{name} failed try {event.attempt} of {event.id}")
        outcome = "ok"
    finally:
        _write({**record, "phase": "end", "outcome": outcome})


@hooks.on("subscription.*", name="ordered", ordered_by="subscription")
async def ordered(event: Event) -> None:
    await _run(event, "ordered", "subscription")


@hooks.on("customer.*", name="holding", ordered_by="customer", hold_on_dead=True)
async def holding(event: Event) -> None:
    await _run(event, "holding", "customer")
