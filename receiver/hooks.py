"""`Hooks`: the merchant's handlers, the event types they take, and how one is called."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import logging
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias, TypedDict, TypeVar, overload

from typing_extensions import Unpack

from .errors import ConfigurationError, UnknownEventTypeWarning
from .event import DeadCallback, Event, Handler
from .patterns import matches, unknown_type_hint, validate_pattern
from .types import (
    Checkout,
    CheckoutEventType,
    CheckoutLink,
    CheckoutLinkEventType,
    Customer,
    CustomerEventType,
    Discount,
    DiscountEventType,
    Entitlement,
    EntitlementEventType,
    Meter,
    MeterEventType,
    Payment,
    PaymentEventType,
    PricingModel,
    PricingModelEventType,
    Refund,
    RefundEventType,
    ScheduledChange,
    ScheduledChangeEventType,
    Subscription,
    SubscriptionEventType,
    UsageEventType,
    UsageRecord,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "HandlerTimeout",
    "Hooks",
    "OnOptions",
    "Registration",
    "import_hooks",
    "is_async_callable",
    "validate_ordering",
]

log = logging.getLogger("montra.dispatch")

DEFAULT_TIMEOUT = 60.0
"""Seconds a try may take before it counts as failed, unless `on(..., timeout=)` says otherwise."""

D = TypeVar("D", bound=DeadCallback)

P = TypeVar("P")
HandlerOf: TypeAlias = Callable[[Event[P]], Awaitable[None] | None]
"""A handler of events whose payload is `P`: `HandlerOf[Subscription]`."""

# What `hooks.on` accepts: any handler for patterns (`subscription.*`, `*`) and for types of several payloads;
# for the types of one payload, a handler of that payload (`Event[Subscription]`) or of a bare `Event`.
# One TypeVar per payload, since a TypeVar's bound cannot itself be generic; each keeps the decorated
# function's own type. tests/test_types.py checks there is one for each payload of receiver.types.
H = TypeVar("H", bound=HandlerOf[Any])
_OnCustomer = TypeVar("_OnCustomer", bound=HandlerOf[Customer] | Handler)
_OnMeter = TypeVar("_OnMeter", bound=HandlerOf[Meter] | Handler)
_OnUsage = TypeVar("_OnUsage", bound=HandlerOf[UsageRecord] | Handler)
_OnPricingModel = TypeVar("_OnPricingModel", bound=HandlerOf[PricingModel] | Handler)
_OnCheckoutLink = TypeVar("_OnCheckoutLink", bound=HandlerOf[CheckoutLink] | Handler)
_OnCheckout = TypeVar("_OnCheckout", bound=HandlerOf[Checkout] | Handler)
_OnPayment = TypeVar("_OnPayment", bound=HandlerOf[Payment] | Handler)
_OnSubscription = TypeVar("_OnSubscription", bound=HandlerOf[Subscription] | Handler)
_OnScheduledChange = TypeVar("_OnScheduledChange", bound=HandlerOf[ScheduledChange] | Handler)
_OnRefund = TypeVar("_OnRefund", bound=HandlerOf[Refund] | Handler)
_OnDiscount = TypeVar("_OnDiscount", bound=HandlerOf[Discount] | Handler)
_OnEntitlement = TypeVar("_OnEntitlement", bound=HandlerOf[Entitlement] | Handler)


class OnOptions(TypedDict, total=False):
    """The keyword options of `Hooks.on` (its typed overloads take them as `**options`)."""

    name: str | None
    max_attempts: int | None
    timeout: float | None
    ordered_by: str | None
    hold_on_dead: bool


class HandlerTimeout(TimeoutError):
    """A try ran past its handler's `timeout`: it counts as a failed try."""


def validate_ordering(ordered_by: object, hold_on_dead: object) -> None:
    """Raise ConfigurationError unless `ordered_by` is None or a resource kind, and `hold_on_dead` a bool
    (True only with `ordered_by`)."""
    if not isinstance(hold_on_dead, bool):
        raise ConfigurationError(f"hold_on_dead is True or False, got {hold_on_dead!r}.")
    if ordered_by is None:
        if hold_on_dead:
            raise ConfigurationError(
                "hold_on_dead=True needs ordered_by: name the resource whose runs it holds back, "
                "e.g. hooks.on('subscription.*', ordered_by='subscription', hold_on_dead=True)."
            )
        return
    # A kind is what event_refs stores: a type's prefix (`subscription`) or a `data.<kind>_id` field's stem.
    if not isinstance(ordered_by, str) or not _KIND.fullmatch(ordered_by):
        raise ConfigurationError(
            f"ordered_by names a resource kind, such as 'subscription' or 'customer' (the prefix of an event "
            f"type, or a data.<kind>_id field without '_id'), got {ordered_by!r}."
        )
    if ordered_by.endswith("_id"):
        raise ConfigurationError(
            f"ordered_by names a resource kind, not its id field: write ordered_by={ordered_by[:-3]!r}, "
            f"which orders by data.{ordered_by} (or data.id for {ordered_by[:-3]}.* events)."
        )


_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Registration:
    """One handler as registered: its stable name is the key of its runs in the store."""

    name: str
    patterns: tuple[str, ...]
    fn: Handler
    is_async: bool
    max_attempts: int | None
    timeout: float
    ordered_by: str | None = None
    """A resource kind (`subscription`): runs for events about one such resource go one at a time, in order."""
    hold_on_dead: bool = False
    """With `ordered_by`: a dead run keeps holding back the resource's later runs until it is retried."""

    async def call(self, event: Event, *, executor: Executor | None = None) -> None:
        """Run one try of this handler on `event`, within its timeout; raise HandlerTimeout past it.

        An async handler runs on this loop and is cancelled at its timeout. A sync handler runs in
        `executor`; its thread cannot be stopped, so past the timeout (or on cancellation) this
        waits for the thread to return before raising: a next try never overlaps this one.
        """
        if self.is_async:
            scope = asyncio.timeout(self.timeout)
            try:
                async with scope:
                    await _settle(self.fn(event))
            except TimeoutError as e:
                if scope.expired():
                    raise HandlerTimeout(f"{self.name} took longer than its timeout of {self.timeout:g} s.") from e
                raise
            return
        if executor is None:
            raise RuntimeError(f"{self.name} is a sync handler: call it with an executor to run its thread.")
        await self._call_in_thread(event, executor)

    async def _call_in_thread(self, event: Event, executor: Executor) -> None:
        started = time.monotonic()
        # Context variables (request ids, log context) reach the handler as asyncio.to_thread passes them.
        work = executor.submit(contextvars.copy_context().run, self.fn, event)
        done = asyncio.wrap_future(work)
        scope = asyncio.timeout(self.timeout)
        try:
            async with scope:
                result = await asyncio.shield(done)
        except TimeoutError as e:
            if not scope.expired():
                raise  # the handler's own TimeoutError, not ours
            log.warning("%s on %s: past its timeout; waiting for its thread to return", self.name, event.id)
            await _outlive(done)
            elapsed = time.monotonic() - started
            raise HandlerTimeout(
                f"{self.name} took longer than its timeout of {self.timeout:g} s "
                f"(its thread returned after {elapsed:.1f} s)."
            ) from e
        except asyncio.CancelledError:
            if not work.cancel():  # already running in a thread: leave only once it has returned
                await _outlive(done)
            raise
        await _settle(result)


async def _settle(result: object) -> None:
    # A "sync" callable may still return an awaitable (a wrapped coroutine function): run it too.
    if inspect.isawaitable(result):
        await result


async def _outlive(done: asyncio.Future[Any]) -> None:
    """Wait for a handler thread to return, whatever it returns; a second cancellation stops the wait."""
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        raise
    except BaseException:  # noqa: S110 (what a late thread raised, sys.exit included, is no longer this try's)
        pass


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
        self._threads: ThreadPoolExecutor | None = None
        self._warned: set[str] = set()

    # Typed overloads: the types of one payload take a handler of `Event[ThatPayload]` (or a bare `Event`).
    @overload
    def on(
        self, *patterns: CustomerEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnCustomer], _OnCustomer]: ...
    @overload
    def on(self, *patterns: MeterEventType, **options: Unpack[OnOptions]) -> Callable[[_OnMeter], _OnMeter]: ...
    @overload
    def on(self, *patterns: UsageEventType, **options: Unpack[OnOptions]) -> Callable[[_OnUsage], _OnUsage]: ...
    @overload
    def on(
        self, *patterns: PricingModelEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnPricingModel], _OnPricingModel]: ...
    @overload
    def on(
        self, *patterns: CheckoutLinkEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnCheckoutLink], _OnCheckoutLink]: ...
    @overload
    def on(
        self, *patterns: CheckoutEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnCheckout], _OnCheckout]: ...
    @overload
    def on(self, *patterns: PaymentEventType, **options: Unpack[OnOptions]) -> Callable[[_OnPayment], _OnPayment]: ...
    @overload
    def on(
        self, *patterns: SubscriptionEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnSubscription], _OnSubscription]: ...
    @overload
    def on(
        self, *patterns: ScheduledChangeEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnScheduledChange], _OnScheduledChange]: ...
    @overload
    def on(self, *patterns: RefundEventType, **options: Unpack[OnOptions]) -> Callable[[_OnRefund], _OnRefund]: ...
    @overload
    def on(
        self, *patterns: DiscountEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnDiscount], _OnDiscount]: ...
    @overload
    def on(
        self, *patterns: EntitlementEventType, **options: Unpack[OnOptions]
    ) -> Callable[[_OnEntitlement], _OnEntitlement]: ...
    @overload
    def on(self, *patterns: str, **options: Unpack[OnOptions]) -> Callable[[H], H]: ...

    def on(
        self,
        *patterns: str,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        ordered_by: str | None = None,
        hold_on_dead: bool = False,
    ) -> Callable[[Any], Any]:
        """Register a handler for event types: exact (`refund.created`), prefixes (`subscription.*`) or `*`.

        `name` defaults to `module.qualname` and must stay stable: runs are recorded under it.
        `max_attempts` (the first try included) and `timeout` (seconds) override the receiver's defaults.
        `ordered_by="subscription"`: this handler's runs for events about one subscription never overlap and
        start in `timestamp` order; a failed run holds back the later ones until it succeeds or is dead
        (`hold_on_dead=True`: until it is retried and succeeds).

        Typed: for the types of one payload, the handler may take `Event[ThatPayload]`
        (`@hooks.on("subscription.upgraded")` with `event: Event[Subscription]`). A type this version
        does not know warns once (`UnknownEventTypeWarning`, naming the closest known one) and registers.
        """
        if not patterns:
            raise ConfigurationError("hooks.on() needs at least one event type or pattern, e.g. hooks.on('*').")
        for pattern in patterns:
            validate_pattern(pattern)
            self._warn_if_unknown(pattern)
        validate_ordering(ordered_by, hold_on_dead)
        if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
            raise ConfigurationError(f"max_attempts must be a whole number, at least 1, got {max_attempts!r}.")
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}.")

        def register(fn: H) -> H:
            if not callable(fn):
                raise ConfigurationError(f"hooks.on(...) decorates a function, got {fn!r}.")
            handler_name = name or f"{fn.__module__}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
            if handler_name in self._handlers:
                raise ConfigurationError(
                    f"A handler named {handler_name!r} is already registered: pass name= to tell them apart."
                )
            self._handlers[handler_name] = Registration(
                name=handler_name,
                patterns=tuple(patterns),
                fn=fn,
                is_async=is_async_callable(fn),
                max_attempts=max_attempts,
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
                ordered_by=ordered_by,
                hold_on_dead=hold_on_dead,
            )
            self._by_type.clear()
            return fn

        return register

    def _warn_if_unknown(self, pattern: str) -> None:
        """Warn, once per pattern and Hooks, when `pattern` names no event type this version knows."""
        if pattern in self._warned or (hint := unknown_type_hint(pattern)) is None:
            return
        self._warned.add(pattern)
        # stacklevel 3: the line of the user's `@hooks.on(...)`, past this method and on().
        warnings.warn(hint, UnknownEventTypeWarning, stacklevel=3)

    def on_dead(self, fn: D) -> D:
        """Register `fn(event, handler_name, error)`, called once when a run becomes `dead`."""
        self._dead_callbacks.append(fn)
        return fn

    @property
    def names(self) -> list[str]:
        """The registered handlers' names, in registration order."""
        return list(self._handlers)

    @property
    def dead_callbacks(self) -> Sequence[DeadCallback]:
        """The `on_dead` callbacks, in registration order."""
        return tuple(self._dead_callbacks)

    def get(self, name: str) -> Registration | None:
        """The handler registered under `name`, if any."""
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

        For tests and in-process replay: nothing is stored and nothing is retried. Each error
        carries a note naming its handler.

        >>> await hooks.dispatch(Event.from_body("msg_1", b'{"type": "refund.created", "data": {}}'))
        """
        registrations = self.handlers_for(event.type)
        if not registrations:
            return
        if self._threads is None and not all(r.is_async for r in registrations):
            self._threads = ThreadPoolExecutor(thread_name_prefix="montra-hooks")
        threads = self._threads
        results = await asyncio.gather(
            *(r.call(event, executor=threads) for r in registrations), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and interrupts are not handler failures
        failed = [(r, e) for r, e in zip(registrations, results, strict=True) if isinstance(e, Exception)]
        if failed:
            for registration, error in failed:
                error.add_note(f"in handler {registration.name}")
            names = ", ".join(r.name for r, _ in failed)
            raise ExceptionGroup(
                f"{len(failed)} handler(s) failed on {event.type} [{event.id}]: {names}", [e for _, e in failed]
            )


def _import_failure(module_name: str, error: BaseException) -> str:
    """What an import that raised went through in the user's own code: its frames (not importlib's, not ours)."""
    internal = (__file__, importlib.__file__)
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename not in internal and not frame.filename.startswith("<frozen importlib")
    ]
    trace = "".join(traceback.format_list(frames))
    last = "".join(traceback.format_exception_only(error)).strip()
    return f"importing {module_name!r} failed:\n{trace}{last}"


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, partials of them and objects with an `async def __call__`."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def import_hooks(spec: str) -> Hooks:
    """Import `module:attribute` (the working directory importable, as uvicorn does) and return its Hooks.

    >>> hooks = import_hooks("examples.handlers:hooks")  # doctest: +SKIP

    Raises ConfigurationError when the spec is malformed, the module does not import, or the
    attribute is not a `Hooks`.
    """
    module_name, _, attribute = spec.partition(":")
    dotted = module_name.split(".")
    if not (all(part.isidentifier() for part in dotted) and attribute.isidentifier()):
        raise ConfigurationError(
            f"{spec!r} is not MODULE:HOOKS: a dotted module name (not a file path) and a name, "
            "e.g. examples.handlers:hooks."
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):  # the module itself, not one it imports
            raise ConfigurationError(f"cannot import {module_name!r}: no module named {e.name!r}.") from e
        raise ConfigurationError(_import_failure(module_name, e)) from e
    except Exception as e:  # the module's own code raised: show its frames, as `python -m` would
        raise ConfigurationError(_import_failure(module_name, e)) from e
    hooks = getattr(module, attribute, None)
    if not isinstance(hooks, Hooks):
        found = type(hooks).__name__ if hooks is not None else "nothing"
        raise ConfigurationError(f"{spec} is {found}, not a receiver.Hooks.")
    return hooks
