"""`Hooks`: patterns, names, registration errors, and `hooks.dispatch` (sync and async handlers, errors, timeouts)."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from typing import Any

import pytest

from receiver import ConfigurationError, Event, Hooks, NoRetry
from receiver.dispatch import BACKOFF_SCHEDULE, retry_delay
from receiver.hooks import DEFAULT_TIMEOUT, HandlerTimeout, is_async_callable
from receiver.patterns import matches, validate_pattern


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def event(event_type: str = "subscription.upgraded", event_id: str = "msg_1", **data: Any) -> Event:
    body = json.dumps({"type": event_type, "timestamp": "2026-11-25T17:00:00Z", "data": data}).encode()
    return Event.from_body(event_id, body, {"webhook-id": event_id})


# -- patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("subscription.upgraded", "subscription.upgraded", True),
        ("subscription.upgraded", "subscription.upgraded.extra", False),
        ("subscription.upgraded", "subscription.upgrade", False),
        ("subscription.upgraded", "subscription", False),
        ("subscription.*", "subscription.upgraded", True),
        ("subscription.*", "subscription.scheduled_change.created", True),  # any depth below
        ("subscription.*", "subscription", False),  # the prefix itself is not below it
        ("subscription.*", "subscriptions.created", False),
        ("subscription.*", "customer.subscription.created", False),
        ("subscription.scheduled_change.*", "subscription.scheduled_change.created", True),
        ("subscription.scheduled_change.*", "subscription.upgraded", False),
        ("*", "subscription.upgraded", True),
        ("*", "a", True),
        ("refund.created", "refund.created", True),
        ("refund.created", "refund_created", False),
    ],
)
def test_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert validate_pattern(pattern) == pattern
    assert matches(pattern, event_type) is expected


@pytest.mark.parametrize(
    "pattern", ["", ".*", "subscription*", "*.created", "sub.*.x", "**", "a..b", "a.", ".a", "a.**", " a", "a.b "]
)
def test_validate_pattern_refuses(pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Bad event pattern .*use an exact type"):
        validate_pattern(pattern)


def test_on_refuses_bad_patterns_and_options() -> None:
    hooks = Hooks()
    with pytest.raises(ConfigurationError, match=r"needs at least one event type"):
        hooks.on()
    with pytest.raises(ConfigurationError, match=r"Bad event pattern 'subscription\*'"):
        hooks.on("refund.created", "subscription*")
    with pytest.raises(ConfigurationError, match="max_attempts must be a whole number, at least 1, got 0"):
        hooks.on("*", max_attempts=0)
    with pytest.raises(ConfigurationError, match="timeout must be a positive number of seconds, got 0"):
        hooks.on("*", timeout=0)
    assert hooks.names == []


def test_on_without_parentheses_says_how() -> None:
    hooks = Hooks()

    def handler(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match=r"write @hooks.on\('subscription.upgraded'\), with the parentheses"):
        hooks.on(handler)  # type: ignore[arg-type]


# -- names and lookup ----------------------------------------------------------------------


async def grant(event: Event) -> None: ...


def audit(event: Event) -> None: ...


def test_names_default_to_module_and_qualname() -> None:
    hooks = Hooks()
    hooks.on("subscription.upgraded")(grant)
    hooks.on("subscription.*", "refund.created", max_attempts=3, timeout=10)(audit)

    def local(event: Event) -> None: ...

    hooks.on("*", name="billing.local")(local)
    assert hooks.names == [f"{__name__}.grant", f"{__name__}.audit", "billing.local"]
    registration = hooks.get(f"{__name__}.audit")
    assert registration is not None
    assert (registration.patterns, registration.max_attempts, registration.timeout, registration.is_async) == (
        ("subscription.*", "refund.created"),
        3,
        10,
        False,
    )
    grant_registration = hooks.get(f"{__name__}.grant")
    assert grant_registration is not None
    assert (grant_registration.max_attempts, grant_registration.timeout, grant_registration.is_async) == (
        None,
        DEFAULT_TIMEOUT,
        True,
    )
    assert hooks.get(f"{__name__}.nothing") is None


def test_nested_functions_get_their_qualname() -> None:
    hooks = Hooks()

    def inner(event: Event) -> None: ...

    hooks.on("*")(inner)
    assert hooks.names == [f"{__name__}.test_nested_functions_get_their_qualname.<locals>.inner"]


def test_duplicate_names_are_refused() -> None:
    hooks = Hooks()
    hooks.on("subscription.upgraded")(grant)
    with pytest.raises(ConfigurationError, match=rf"'{__name__}.grant' is already registered: pass name="):
        hooks.on("refund.created")(grant)
    hooks.on("refund.created", name="grant_on_refund")(grant)  # the same function under another name is fine
    with pytest.raises(ConfigurationError, match=r"'grant_on_refund' is already registered"):
        hooks.on("*", name="grant_on_refund")(audit)
    assert hooks.names == [f"{__name__}.grant", "grant_on_refund"]


def test_handlers_for_lists_every_match_in_registration_order() -> None:
    hooks = Hooks()
    hooks.on("*", name="all")(audit)
    hooks.on("subscription.upgraded", name="exact")(grant)
    hooks.on("subscription.*", name="prefix")(grant)
    hooks.on("refund.*", name="refunds")(grant)

    def names(event_type: str) -> list[str]:
        return [r.name for r in hooks.handlers_for(event_type)]

    assert names("subscription.upgraded") == ["all", "exact", "prefix"]
    assert names("subscription.scheduled_change.created") == ["all", "prefix"]
    assert names("refund.created") == ["all", "refunds"]
    assert names("customer.created") == ["all"]
    hooks.on("customer.created", name="late")(grant)  # a new registration is seen by the next lookup
    assert names("customer.created") == ["all", "late"]


def test_async_detection() -> None:
    class AsyncCallable:
        async def __call__(self, event: Event) -> None: ...

    class SyncCallable:
        def __call__(self, event: Event) -> None: ...

    assert is_async_callable(grant)
    assert is_async_callable(functools.partial(grant))
    assert is_async_callable(AsyncCallable())
    assert not is_async_callable(audit)
    assert not is_async_callable(SyncCallable())
    assert not is_async_callable(functools.partial(audit))


# -- Event ----------------------------------------------------------------------------------


def test_event_from_body() -> None:
    body = b'{"type": "subscription.upgraded", "timestamp": "2026-11-25T17:00:00Z", "data": {"id": "sub_1"}, '
    body += b'"previous_attributes": {"quantity": 1}}'
    parsed = Event.from_body("msg_1", body, {"webhook-id": "msg_1"}, attempt=3)
    assert (parsed.id, parsed.type, parsed.data, parsed.previous_attributes, parsed.attempt) == (
        "msg_1",
        "subscription.upgraded",
        {"id": "sub_1"},
        {"quantity": 1},
        3,
    )
    assert parsed.timestamp is not None and parsed.timestamp.isoformat() == "2026-11-25T17:00:00+00:00"
    assert parsed.body == body and parsed.headers == {"webhook-id": "msg_1"}
    bare = Event.from_body("msg_2", b'{"type": "refund.created", "timestamp": "soon", "data": [1]}')
    assert (bare.timestamp, bare.data, bare.attempt) == (None, {}, 1)


# -- hooks.dispatch -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_dispatch_runs_sync_and_async_handlers() -> None:
    hooks = Hooks()
    seen: list[tuple[str, str, bool]] = []
    loop_thread = threading.get_ident()

    @hooks.on("subscription.*")
    async def on_loop(event: Event) -> None:
        seen.append(("async", event.id, threading.get_ident() == loop_thread))

    @hooks.on("subscription.upgraded")
    def in_thread(event: Event) -> None:
        seen.append(("sync", event.id, threading.get_ident() == loop_thread))

    @hooks.on("refund.created")
    def never(event: Event) -> None:
        seen.append(("never", event.id, False))

    await hooks.dispatch(event("subscription.upgraded", "msg_7"))
    assert sorted(seen) == [("async", "msg_7", True), ("sync", "msg_7", False)]
    await hooks.dispatch(event("customer.created"))  # nothing matches: nothing runs, nothing raised
    assert len(seen) == 2


@pytest.mark.anyio
async def test_dispatch_raises_an_exception_group_of_the_failing_handlers() -> None:
    hooks = Hooks()
    ran: list[str] = []

    @hooks.on("*", name="ok")
    async def ok(event: Event) -> None:
        ran.append("ok")

    @hooks.on("*", name="broken_async")
    async def broken_async(event: Event) -> None:
        ran.append("broken_async")
        raise ValueError("no customer")

    @hooks.on("*", name="broken_sync")
    def broken_sync(event: Event) -> None:
        ran.append("broken_sync")
        raise NoRetry("not retryable")

    with pytest.raises(ExceptionGroup) as caught:
        await hooks.dispatch(event("refund.created", "msg_9"))
    group = caught.value
    assert str(group) == "2 handler(s) failed on refund.created [msg_9]: broken_async, broken_sync (2 sub-exceptions)"
    assert [type(e) for e in group.exceptions] == [ValueError, NoRetry]
    assert [str(e) for e in group.exceptions] == ["no customer", "not retryable"]
    assert [e.__notes__ for e in group.exceptions] == [["in handler broken_async"], ["in handler broken_sync"]]
    assert sorted(ran) == ["broken_async", "broken_sync", "ok"]  # one failing does not stop the others


@pytest.mark.anyio
async def test_dispatch_times_out_an_async_handler() -> None:
    hooks = Hooks()

    @hooks.on("*", name="slow", timeout=0.05)
    async def slow(event: Event) -> None:
        await asyncio.sleep(30)

    with pytest.raises(ExceptionGroup) as caught:
        await hooks.dispatch(event())
    (error,) = caught.value.exceptions
    assert isinstance(error, HandlerTimeout) and isinstance(error, TimeoutError)
    assert str(error) == "slow took longer than its timeout of 0.05 s."


@pytest.mark.anyio
async def test_a_handlers_own_timeout_error_is_not_reported_as_ours() -> None:
    hooks = Hooks()

    @hooks.on("*", name="own_async", timeout=5)
    async def own_async(event: Event) -> None:
        raise TimeoutError("the bank did not answer")

    @hooks.on("*", name="own_sync", timeout=5)
    def own_sync(event: Event) -> None:
        raise TimeoutError("the CRM did not answer")

    with pytest.raises(ExceptionGroup) as caught:
        await hooks.dispatch(event())
    assert [(type(e), str(e)) for e in caught.value.exceptions] == [
        (TimeoutError, "the bank did not answer"),
        (TimeoutError, "the CRM did not answer"),
    ]


@pytest.mark.anyio
async def test_a_timed_out_sync_handler_is_waited_for() -> None:
    hooks = Hooks()
    returned: list[float] = []

    @hooks.on("*", name="slow_sync", timeout=0.05)
    def slow_sync(event: Event) -> None:
        time.sleep(0.3)
        returned.append(time.monotonic())

    with pytest.raises(ExceptionGroup) as caught:
        await hooks.dispatch(event())
    (error,) = caught.value.exceptions
    assert isinstance(error, HandlerTimeout)
    assert str(error).startswith("slow_sync took longer than its timeout of 0.05 s (its thread returned after ")
    # The thread had returned when dispatch raised: a next try could never overlap it.
    assert len(returned) == 1


@pytest.mark.anyio
async def test_a_sync_callable_returning_a_coroutine_is_awaited() -> None:
    hooks = Hooks()
    ran: list[str] = []

    async def real(event: Event) -> None:
        ran.append(event.id)

    def wrapper(event: Event) -> Any:  # e.g. a decorator that forgot to be async
        return real(event)

    hooks.on("*", name="wrapped")(wrapper)
    await hooks.dispatch(event(event_id="msg_w"))
    assert ran == ["msg_w"]


def test_retry_delay_follows_the_schedule_with_jitter() -> None:
    assert BACKOFF_SCHEDULE == (1, 5, 30, 120, 600, 3600)
    for attempts, step in [(1, 1), (2, 5), (3, 30), (4, 120), (5, 600), (6, 3600), (7, 3600), (30, 3600)]:
        for _ in range(50):
            assert 0.8 * step * 2 <= retry_delay(attempts, 2.0) <= 1.2 * step * 2
    assert retry_delay(0, 1.0) <= 1.2  # never the longest wait by accident
    assert retry_delay(3, 0.0) == 0.0
