"""`Hooks`: the merchant's handlers, the event types they take, and how one is called."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from .errors import ConfigurationError
from .event import DeadCallback, Event, Handler

__all__ = ["DEFAULT_TIMEOUT", "Hooks", "Registration", "matches", "validate_pattern"]

DEFAULT_TIMEOUT = 60.0
"""Seconds a try may take before it counts as failed, unless `on(..., timeout=)` says otherwise."""

H = TypeVar("H", bound=Handler)
D = TypeVar("D", bound=DeadCallback)


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is an event type, `prefix.*` or `*`; raise ConfigurationError otherwise."""
    body = pattern[:-2] if pattern.endswith(".*") else pattern
    if pattern != "*" and (not body or "*" in body or body.startswith(".") or body.endswith(".")):
        raise ConfigurationError(
            f"Bad event pattern {pattern!r}: use an exact type ('subscription.upgraded'), "
            "a prefix ('subscription.*') or '*'."
        )
    return pattern


def matches(pattern: str, event_type: str) -> bool:
    """`*` matches every type, `prefix.*` every type below `prefix` at any depth, anything else itself."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


@dataclass(frozen=True, slots=True)
class Registration:
    """One handler as registered: its stable name is the key of its runs in the store."""

    name: str
    patterns: tuple[str, ...]
    fn: Handler
    is_async: bool
    max_attempts: int | None
    timeout: float

    async def call(
        self,
        event: Event,
        *,
        executor: Executor | None = None,
        on_thread: Callable[[asyncio.Future[None]], None] | None = None,
    ) -> None:
        """Run one try of this handler on `event`, within its timeout.

        A sync handler runs in `executor`. Its thread cannot be stopped, so a timeout leaves it
        running: `on_thread` receives its future, so the caller can wait for it before a next try.
        """
        if self.is_async:
            await asyncio.wait_for(cast(Awaitable[None], self.fn(event)), self.timeout)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().run_in_executor(
            executor, cast(Callable[[Event], None], self.fn), event
        )
        if on_thread is not None:
            on_thread(future)
        await asyncio.wait_for(asyncio.shield(future), self.timeout)


class Hooks:
    """The registry of handlers.

    >>> hooks = Hooks()
    >>> @hooks.on("subscription.upgraded")
    ... async def grant_pro(event: Event) -> None:
    ...     await grant(event.data["customer_id"], plan="pro")
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Registration] = {}
        self._dead_callbacks: list[DeadCallback] = []
        self._by_type: dict[str, tuple[Registration, ...]] = {}

    def on(
        self,
        *patterns: str,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> Callable[[H], H]:
        """Register a handler for event types: exact (`refund.created`), prefixes (`subscription.*`) or `*`.

        `name` defaults to `module.qualname` and must stay stable: runs are recorded under it.
        `max_attempts` (the first try included) and `timeout` (seconds) override the receiver's defaults.
        """
        if not patterns:
            raise ConfigurationError("hooks.on() needs at least one event type or pattern, e.g. hooks.on('*').")
        for pattern in patterns:
            validate_pattern(pattern)
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}.")
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout}.")

        def register(fn: H) -> H:
            handler_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if handler_name in self._handlers:
                raise ConfigurationError(
                    f"A handler named {handler_name!r} is already registered: pass name= to tell them apart."
                )
            self._handlers[handler_name] = Registration(
                name=handler_name,
                patterns=tuple(patterns),
                fn=fn,
                is_async=_is_async(fn),
                max_attempts=max_attempts,
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
            )
            self._by_type.clear()
            return fn

        return register

    def on_dead(self, fn: D) -> D:
        """Register `fn(event, handler_name, error)`, called when a run becomes `dead`."""
        self._dead_callbacks.append(fn)
        return fn

    @property
    def names(self) -> list[str]:
        return list(self._handlers)

    @property
    def dead_callbacks(self) -> Sequence[DeadCallback]:
        return tuple(self._dead_callbacks)

    def get(self, name: str) -> Registration | None:
        return self._handlers.get(name)

    def handlers_for(self, event_type: str) -> tuple[Registration, ...]:
        """Every handler whose patterns match `event_type`, in registration order."""
        found = self._by_type.get(event_type)
        if found is None:
            found = tuple(r for r in self._handlers.values() if any(matches(p, event_type) for p in r.patterns))
            if len(self._by_type) < 10_000:  # unknown types are unbounded; the cache is not
                self._by_type[event_type] = found
        return found

    async def dispatch(self, event: Event) -> None:
        """Run every matching handler once, now, on this loop; raise their errors as an ExceptionGroup.

        For tests and in-process replay: nothing is stored and nothing is retried.
        """
        registrations = self.handlers_for(event.type)
        results = await asyncio.gather(*(r.call(event) for r in registrations), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and interrupts are not handler failures
        errors = [e for e in results if isinstance(e, Exception)]
        if errors:
            failed = zip(registrations, results, strict=True)
            names = ", ".join(r.name for r, e in failed if isinstance(e, Exception))
            raise ExceptionGroup(f"{len(errors)} handler(s) failed on {event.type} [{event.id}]: {names}", errors)


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
