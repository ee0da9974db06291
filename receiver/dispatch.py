"""The dispatcher: claims due handler runs from the store, runs them, records outcomes, retries.

Delivery is at least once. A run is claimed with a lease (an atomic update of `lease_owner`
and `lease_until`), the lease is renewed while the handler runs, and the outcome is written
only while the lease is still held. A process that dies leaves leases that expire; any
dispatcher on the same store then takes the runs over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
import traceback
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import NoRetry
from .event import Event, RunStatus
from .hooks import Hooks, Registration
from .store import Run, Store

__all__ = ["BACKOFF_SCHEDULE", "DispatchSettings", "Dispatcher", "retry_delay"]

log = logging.getLogger("montra.dispatch")

BACKOFF_SCHEDULE = (1, 5, 30, 120, 600, 3600)
"""Multiples of `backoff` to wait after the 1st, 2nd, ... failed try; the last repeats."""

_MAX_ERROR_CHARS = 16_000


def retry_delay(attempts: int, backoff: float) -> float:
    """Seconds to wait after `attempts` failed tries: `backoff x BACKOFF_SCHEDULE`, ±20% jitter."""
    step = BACKOFF_SCHEDULE[min(attempts, len(BACKOFF_SCHEDULE)) - 1]
    return backoff * step * random.uniform(0.8, 1.2)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts: int = 7
    backoff: float = 1.0
    concurrency: int = 16
    threads: int = 8
    lease: float = 30.0
    poll: float = 1.0
    grace: float = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    error: str | None = None


class Dispatcher:
    """Runs the handlers of stored events in the background, with bounded concurrency."""

    def __init__(self, hooks: Hooks, store: Store, settings: DispatchSettings | None = None) -> None:
        self.hooks = hooks
        self.store = store
        self.settings = settings or DispatchSettings()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._threads = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="montra-handler")
        self._running: set[asyncio.Task[None]] = set()
        self._busy_threads: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Report runs nobody can take, then resume every due run (crash recovery) and keep going."""
        names = self.hooks.names
        orphans = await self.store.orphaned_runs(names)
        for handler, count in orphans.items():
            log.warning("%d unfinished run(s) of handler %r, which is not registered: left as they are", count, handler)
        if not names:
            return
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="montra-dispatch"),
            asyncio.create_task(self._renew_loop(), name="montra-lease-renewal"),
        ]

    def wake(self) -> None:
        """Look for due runs now (a new event was stored)."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop claiming; give running handlers `grace` seconds; put the rest back as pending."""
        self._stopping = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.wait(self._tasks[:1])
        if self._running:
            _, unfinished = await asyncio.wait(self._running, timeout=self.settings.grace)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        released = await self.store.release(owner=self.owner)
        if released:
            log.warning("shutdown: %d run(s) interrupted and left pending for the next start", released)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def run_inline(self, event_id: str) -> list[tuple[str, str]]:
        """Run every unfinished run of one event once, now; return (handler, error) for each that failed."""
        runs = await self.store.claim(
            owner=self.owner,
            handlers=self.hooks.names,
            now=time.time(),
            lease=self.settings.lease,
            limit=len(self.hooks.names),
            event_id=event_id,
        )
        outcomes = await asyncio.gather(*(self._execute(run) for run in runs))
        return [
            (run.handler, o.error or o.status) for run, o in zip(runs, outcomes, strict=True) if o.status != "succeeded"
        ]

    async def _claim_loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            free = self.settings.concurrency - len(self._running)
            runs: list[Run] = []
            if free > 0:
                try:
                    runs = await self.store.claim(
                        owner=self.owner,
                        handlers=self.hooks.names,
                        now=time.time(),
                        lease=self.settings.lease,
                        limit=free,
                    )
                except Exception as e:  # the store may be briefly unwritable: keep polling, never die
                    log.error("could not claim handler runs: %s", e)
            for run in runs:
                task = asyncio.create_task(self._execute_and_forget(run), name=f"montra-run-{run.event_id}")
                self._running.add(task)
            if runs and len(runs) == free:
                await asyncio.sleep(0)  # more may be due: claim again when a slot frees
                if len(self._running) >= self.settings.concurrency:
                    await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not runs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.settings.poll)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            if self._running:
                try:
                    await self.store.renew(owner=self.owner, until=time.time() + self.settings.lease)
                except Exception as e:  # a missed renewal is retried; the lease has two more periods left
                    log.error("could not renew leases: %s", e)

    async def _execute_and_forget(self, run: Run) -> None:
        try:
            await self._execute(run)
        finally:
            self._running.discard(asyncio.current_task())
            self._wakeup.set()

    async def _execute(self, run: Run) -> Outcome:
        started = time.time()
        registration = self.hooks.get(run.handler)
        stored = await self.store.get_event(run.event_id)
        if registration is None or stored is None:
            missing = "handler is no longer registered" if registration is None else "event is no longer stored"
            outcome = Outcome("dead", f"Not run: the {missing}.")
            await self._record(run, outcome, started, None)
            return outcome
        event = Event.from_body(stored.id, stored.body, stored.headers, attempt=run.attempts)
        max_attempts = registration.max_attempts or self.settings.max_attempts
        if run.attempts > max_attempts:
            # Its process died during the last allowed try (its lease expired): no try is left.
            outcome = Outcome("dead", f"Gave up: the process running try {run.attempts - 1} stopped before it ended.")
        else:
            outcome = await self._try(registration, event, run, max_attempts)
        await self._record(run, outcome, started, event)
        return outcome

    async def _try(self, registration: Registration, event: Event, run: Run, max_attempts: int) -> Outcome:
        key = (run.event_id, run.handler)
        previous = self._busy_threads.pop(key, None)
        if previous is not None and not previous.done():
            log.warning(
                "%s on %s: waiting for the timed-out thread of the last try to return", run.handler, run.event_id
            )
            await asyncio.wait([previous])

        def keep_thread(future: asyncio.Future[None]) -> None:
            self._busy_threads[key] = future
            future.add_done_callback(
                lambda _: self._busy_threads.pop(key, None) if self._busy_threads.get(key) is future else None
            )

        try:
            await registration.call(event, executor=self._threads, on_thread=keep_thread)
        except NoRetry as e:
            return Outcome("dead", _describe(e))
        except TimeoutError as e:
            message = f"TimeoutError: the try took longer than {registration.timeout:g} s.\n"
            return self._failed(run, max_attempts, message + _describe(e))
        except Exception as e:  # the merchant's code: any error is this run's failure, recorded with its traceback
            return self._failed(run, max_attempts, _describe(e))
        return Outcome("succeeded")

    def _failed(self, run: Run, max_attempts: int, error: str) -> Outcome:
        return Outcome("dead" if run.attempts >= max_attempts else "failed", error)

    async def _record(self, run: Run, outcome: Outcome, started: float, event: Event | None) -> None:
        finished = time.time()
        next_attempt = None
        if outcome.status == "failed":
            next_attempt = finished + retry_delay(run.attempts, self.settings.backoff)
        held = await self.store.finish(
            owner=self.owner,
            event_id=run.event_id,
            handler=run.handler,
            status=outcome.status,
            error=outcome.error,
            next_attempt_at=next_attempt,
            finished_at=finished,
            duration_ms=round((finished - started) * 1000, 3),
        )
        if not held:
            log.warning(
                "%s on %s: lease lost to another process; this outcome was not recorded", run.handler, run.event_id
            )
            return
        if outcome.status == "dead" and event is not None:
            await self._on_dead(event, run.handler, outcome.error or "")

    async def _on_dead(self, event: Event, handler: str, error: str) -> None:
        for callback in self.hooks.dead_callbacks:
            try:
                result = callback(event, handler, error)
                if isinstance(result, Awaitable):
                    await result
            except Exception:  # one broken alert must not stop the others
                log.exception("on_dead callback %r failed", callback)


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return (
        text
        if len(text) <= _MAX_ERROR_CHARS
        else text[: _MAX_ERROR_CHARS // 2] + "\n...\n" + text[-_MAX_ERROR_CHARS // 2 :]
    )
