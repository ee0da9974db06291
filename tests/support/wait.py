"""The one way a test waits: poll for a state until it holds, never sleep for a duration.

>>> rows = wait_until(lambda: query(db, "SELECT id FROM events"), what="a stored event")
>>> await wait_until_async(lambda: 7 in tap.event_seqs(), what="seq 7")

`check` returns something truthy once the state holds, and that is what the wait returns. With `until`, the
wait returns `check()`'s value once `until(value)` holds:

>>> rows = wait_until(lambda: query(db, SQL), until=lambda rows: len(rows) >= 3, what="3 events")

After `timeout` seconds the wait fails with an AssertionError that names `what` and the last value `check`
returned, so a failure says what was awaited and how far it got. An exception from `check` ends the wait at
once (a process that died need not be waited out).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT = 30.0
"""Seconds a wait lasts unless told: far above what any awaited state takes, so only a bug reaches it."""

POLL = 0.02
"""Seconds between two checks: short, as most states arrive within milliseconds."""


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")


def wait_until(
    check: Callable[[], T],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = TIMEOUT,
    what: str = "the condition",
) -> T:
    """Call `check` until `until` holds for what it returns (by default: until it is truthy) and return that.

    Fails naming `what`, and the last value seen, after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, result)
        time.sleep(POLL)


# ASYNC109: `timeout` is the same keyword as `wait_until`'s, so a sync and an async wait read alike at the call site.
@overload
async def wait_until_async(
    check: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = TIMEOUT,  # noqa: ASYNC109
    what: str = "the condition",
) -> T: ...


@overload
async def wait_until_async(
    check: Callable[[], T],
    *,
    until: Callable[[T], object] = bool,
    timeout: float = TIMEOUT,  # noqa: ASYNC109
    what: str = "the condition",
) -> T: ...


async def wait_until_async(
    check: Callable[[], Any],
    *,
    until: Callable[[Any], object] = bool,
    timeout: float = TIMEOUT,  # noqa: ASYNC109
    what: str = "the condition",
) -> Any:
    """`wait_until` inside an event loop: sleeps with asyncio, so the loop's other tasks run between checks.

    `check` may be a coroutine function (e.g. one that asks a store): its result is awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, result)
        await asyncio.sleep(POLL)
