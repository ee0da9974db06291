"""The dispatcher: claims due handler runs from the store, runs them, records outcomes, retries.

Delivery is at least once. A run is claimed with a lease (an atomic update of `lease_owner`
and `lease_until`), the lease is renewed while the handler runs, and the outcome is written
only while the lease is still held. A process that dies leaves leases that expire; any
dispatcher on the same store then takes the runs over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import re
import secrets
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import NoRetry, StoreUnavailable
from .event import AttemptOutcome, Event, RunStatus
from .hooks import HandlerTimeout, Hooks, Registration, is_async_callable
from .pacing import AcknowledgementsFirst
from .stores.protocol import PROCESS_DIED, EventFilter, Run, Store, is_takeover

__all__ = ["BACKOFF_SCHEDULE", "DispatchSettings", "Dispatcher", "retry_delay"]

log = logging.getLogger("montra.dispatch")

BACKOFF_SCHEDULE = (1, 5, 30, 120, 600, 3600)
"""Multiples of `backoff` to wait after the 1st, 2nd, ... failed try; the last repeats."""

_MAX_ERROR_CHARS = 16_000
_DIED_IN = re.compile(r", process (.+)\)\.$")
"""The process named in the note a claim leaves in `last_error` when it takes over a dead process's try."""


def retry_delay(attempts: int, backoff: float) -> float:
    """Seconds to wait after `attempts` failed tries: `backoff x BACKOFF_SCHEDULE`, ±20% jitter."""
    step = BACKOFF_SCHEDULE[min(max(attempts, 1), len(BACKOFF_SCHEDULE)) - 1]
    return backoff * step * random.uniform(0.8, 1.2)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """How the dispatcher runs handlers. `create_app` and `serve` set the retry policy and concurrency."""

    max_attempts: int = 7
    """Tries per run, the first included, unless the handler sets its own."""
    backoff: float = 1.0
    """Seconds multiplied by BACKOFF_SCHEDULE between tries."""
    concurrency: int = 16
    """Runs in progress at once in this process."""
    threads: int = 8
    """Threads for sync handlers (and sync `on_dead` callbacks)."""
    lease: float = 30.0
    """Seconds a claim holds a run without renewal; renewed every third of it while the handler runs."""
    poll: float = 1.0
    """Seconds between looks at the store when nothing wakes the dispatcher (other processes' events)."""
    grace: float = 10.0
    """Seconds a shutdown lets running handlers finish before it interrupts them."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    error: str | None = None
    attempts: int | None = None
    """Tries made, when not the count the claim recorded (no try was started)."""
    tried: AttemptOutcome | None = None
    """How the try ended, when the status does not say (`timeout`)."""


class Dispatcher:
    """Runs the handlers of stored events in the background, with bounded concurrency."""

    def __init__(
        self,
        hooks: Hooks,
        store: Store,
        settings: DispatchSettings | None = None,
        *,
        on_try: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        self.hooks = hooks
        self.store = store
        self.settings = settings or DispatchSettings()
        self._on_try = on_try
        """Told (handler, outcome, seconds the handler ran or None) of every outcome recorded: /metrics."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._threads = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="montra-handler")
        self._running: set[asyncio.Task[None]] = set()
        self._slots = 0  # of `concurrency`: runs whose handler has not returned yet
        self._in_flight: set[tuple[str, str]] = set()  # (event_id, handler) of the runs this process executes
        self._held = 0  # runs this process holds a lease on (background and inline)
        self._wakeup = asyncio.Event()
        self._claimer: asyncio.Task[None] | None = None
        self._pacing = AcknowledgementsFirst()
        self._renewer: asyncio.Task[None] | None = None

    async def start(self, *, background: bool = True) -> None:
        """Report runs nobody can take; in the background, resume every due run (crash recovery) and keep going."""
        names = self.hooks.names
        orphans = await self.store.orphaned_runs(names)
        for handler, count in orphans.items():
            log.warning("%d unfinished run(s) of handler %r, which is not registered: left as they are", count, handler)
        if not names or not background:
            return
        self._claimer = asyncio.create_task(self._claim_loop(), name="montra-dispatch")
        self._ensure_renewing()

    def wake(self) -> None:
        """Look for due runs now (a new event was stored)."""
        self._pacing.arrived()
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop claiming; give running handlers `grace` seconds; put the rest back as pending."""
        if self._claimer is not None:
            # Cancelled, not awaited: it may be waiting for a slot, and the grace period starts now.
            # A claim it had in flight still commits; `release` below hands those runs back.
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
        running = set(self._running)
        if running:
            _, unfinished = await asyncio.wait(running, timeout=self.settings.grace)
            if unfinished:
                log.warning(
                    "shutdown: interrupting %d handler run(s) still running after %g s "
                    "(sync handlers' threads cannot be interrupted: waiting for them up to as long again)",
                    len(unfinished),
                    self.settings.grace,
                )
                for task in unfinished:
                    task.cancel()
                _, stuck = await asyncio.wait(unfinished, timeout=self.settings.grace)
                for task in stuck:  # a second cancellation stops waiting for a thread that does not return
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        try:
            released = await self.store.release(owner=self.owner)
        except Exception as e:  # the leases expire instead: another start takes the runs over then
            log.error("shutdown: could not hand back this process's runs (%s); they resume when their lease ends", e)
        else:
            if released:
                log.warning("shutdown: %d run(s) interrupted and left pending for the next start", released)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def run_inline(self, event_id: str) -> list[tuple[str, str]]:
        """Run every unfinished run of one event once, now; return (handler, error) for each not succeeded.

        A run that another delivery of the same event is still running has not succeeded either:
        the sender is told to try again rather than to stop.
        """
        self._ensure_renewing()
        names = self.hooks.names
        runs = await self.store.claim(
            owner=self.owner,
            handlers=names,
            now=time.time(),
            lease=self.settings.lease,
            limit=len(names),
            event_id=event_id,
            ordered=self._ordered(),
        )
        events = await self._load_events(runs)
        outcomes = await asyncio.gather(*(self._execute(run, events.get(run.event_id)) for run in runs))
        failures = [
            (r.handler, o.error or o.status) for r, o in zip(runs, outcomes, strict=True) if o.status != "succeeded"
        ]
        claimed = {run.handler for run in runs}
        for run in await self.store.get_runs(event_id):
            if run.status == "running" and run.handler not in claimed and run.handler in names:
                failures.append((run.handler, "Still running for an earlier delivery of this event."))
            elif run.status in ("pending", "failed") and run.handler not in claimed and run.handler in names:
                # Held back by an earlier event about the same resource (ordered_by): not done, so not a 2xx.
                waiting = await self.store.waiting_for(event_id, run.handler)
                about = f"event {waiting.event_id} ({waiting.status})" if waiting else "an earlier event"
                failures.append((run.handler, f"Waiting for {about} about the same resource to be handled first."))
        return failures

    def _ordered(self) -> bool:
        """True when a registered handler is `ordered_by` a resource: claims then check what holds runs back."""
        return any(r is not None and r.ordered_by is not None for r in map(self.hooks.get, self.hooks.names))

    def _ensure_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name="montra-lease-renewal")

    async def _claim_loop(self) -> None:
        backlog = False  # the last claim filled every free slot: more runs are waiting
        while True:
            self._wakeup.clear()
            free = self.settings.concurrency - self._slots
            if free <= 0:
                await self._wakeup.wait()  # a run that ends sets it
                continue
            if backlog and self._pacing.should_wait():  # webhooks arriving on a saturated core go first
                await asyncio.sleep(self._pacing.pause)
            runs: list[Run] = []
            try:
                runs = await self.store.claim(
                    owner=self.owner,
                    handlers=self.hooks.names,
                    now=time.time(),
                    lease=self.settings.lease,
                    limit=free,
                    ordered=self._ordered(),
                )
            except Exception as e:  # the store may be briefly unwritable: keep polling, never die
                log.error("could not claim handler runs: %s", e)
            starting = []
            for run in runs:
                if (run.event_id, run.handler) in self._in_flight:
                    # Our own lease lapsed (the loop was blocked for most of a lease) and we claimed the run
                    # again: it is still running here, and its outcome will be recorded as usual.
                    log.warning(
                        "%s on %s: lease lapsed while running here; not starting it twice", run.handler, run.event_id
                    )
                else:
                    starting.append(run)
            if starting:
                self._slots += len(starting)
                events = await self._load_events(starting)
                for run in starting:
                    task = asyncio.create_task(
                        self._execute_and_forget(run, events.get(run.event_id)), name=f"montra-run-{run.event_id}"
                    )
                    self._running.add(task)
            backlog = len(runs) == free
            if len(runs) < free:  # nothing else is due: sleep until the next run is, or something wakes us
                await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        delay = self.settings.poll
        try:
            due = await self.store.next_due(self.hooks.names)
        except Exception as e:  # reading failed: poll as usual
            log.error("could not read when the next handler run is due: %s", e)
            due = None
        if due is not None:
            # Retries due sooner than the poll (short backoffs) start on time, not on the next poll.
            delay = min(delay, max(0.0, due.timestamp() - time.time()))
        if delay > 0 and not self._wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            if self._held:
                try:
                    await self.store.renew(owner=self.owner, until=time.time() + self.settings.lease)
                except Exception as e:  # a missed renewal is retried; the lease has two more periods left
                    log.error("could not renew leases: %s", e)

    async def _load_events(self, runs: list[Run]) -> dict[str, Event | Exception]:
        """The events of these runs, read in one go and each parsed once, whatever number of its runs start.

        Parsed afresh for every claim: a retry never sees what an earlier try did to `event.data`.
        An event missing from the result is no longer stored; an exception says why it could not be had.
        """
        ids = list(dict.fromkeys(run.event_id for run in runs))
        try:
            stored = await self.store.list_events(EventFilter(ids=ids))
        except Exception as e:  # the store could not be read: each run fails this try and is retried
            return dict.fromkeys(ids, e)
        events: dict[str, Event | Exception] = {}
        for row in stored:
            try:
                events[row.id] = Event.from_body(row.id, row.body, row.headers)
            except Exception as e:  # a body someone rewrote in the database: that event's runs fail, no others
                events[row.id] = e
        return events

    async def _execute_and_forget(self, run: Run, event: Event | Exception | None) -> None:
        freed = False

        def free_slot() -> None:
            # Called once the handler has returned, before its outcome is written: the next claim
            # then shares a commit with these outcomes instead of waiting for one of its own.
            nonlocal freed
            if not freed:
                freed = True
                self._slots -= 1
                self._wakeup.set()

        try:
            await self._execute(run, event, handler_done=free_slot)
        except Exception:  # _execute handles the handler's errors; this is a bug of ours, kept from the loop
            log.exception("dispatching %s on %s failed unexpectedly", run.handler, run.event_id)
        finally:
            free_slot()
            self._running.discard(asyncio.current_task())

    async def _execute(
        self, run: Run, loaded: Event | Exception | None, *, handler_done: Callable[[], None] | None = None
    ) -> Outcome:
        started = time.time()
        key = (run.event_id, run.handler)
        self._held += 1
        self._in_flight.add(key)
        try:
            registration = self.hooks.get(run.handler)
            if registration is None:  # claims name registered handlers only; kept for a Store that does not
                outcome = Outcome("dead", "Not run: the handler is no longer registered.")
                await self._record(run, outcome, started, None)
                return outcome
            max_attempts = registration.max_attempts or self.settings.max_attempts
            if isinstance(loaded, Exception):
                outcome = self._failed(run, max_attempts, "Could not load the event.\n" + _describe(loaded))
                await self._record(run, outcome, started, None)
                return outcome
            event = (
                None if loaded is None else dataclasses.replace(loaded, attempt=run.attempts, superseded=run.superseded)
            )
            if event is None:
                outcome = Outcome("dead", "Not run: the event is no longer stored.")
            elif run.attempts > max_attempts and is_takeover(run):
                # A try counts when it starts: the process that died in the last allowed try used it up,
                # so a poison event (os._exit, a segfault, the OOM killer) cannot crash-loop the receiver.
                event = dataclasses.replace(event, attempt=run.attempts - 1)
                outcome = Outcome("dead", _died(run, max_attempts), attempts=event.attempt)
            else:
                outcome = await self._try(registration, event, run, max_attempts)
            if handler_done is not None:
                handler_done()
            await self._record(run, outcome, started, event)
            return outcome
        finally:
            self._held -= 1
            self._in_flight.discard(key)

    async def _try(self, registration: Registration, event: Event, run: Run, max_attempts: int) -> Outcome:
        try:
            await registration.call(event, executor=self._threads)
        except NoRetry as e:
            return Outcome("dead", _describe(e))
        except HandlerTimeout as e:
            failed = self._failed(run, max_attempts, _describe(e))
            # A timeout that leaves tries is recorded as one; the last try's row says `dead`, as its run does.
            return dataclasses.replace(failed, tried="timeout") if failed.status == "failed" else failed
        except BaseException as e:
            # The merchant's code: any error is this run's failure, recorded with its traceback. SystemExit and
            # KeyboardInterrupt too: raised out of a task they would stop the event loop, and the receiver with it.
            if _own_cancellation(e):  # our shutdown (stop) interrupting the handler: that must still cancel
                raise
            return self._failed(run, max_attempts, _describe(e))
        return Outcome("succeeded")

    def _failed(self, run: Run, max_attempts: int, error: str) -> Outcome:
        return Outcome("dead" if run.attempts >= max_attempts else "failed", error)

    async def _record(self, run: Run, outcome: Outcome, started: float, event: Event | None) -> None:
        finished = time.time()
        next_attempt = None
        if outcome.status == "failed":
            next_attempt = finished + retry_delay(run.attempts, self.settings.backoff)
        pause = 0.1
        while True:
            try:
                held = await self.store.finish(
                    owner=self.owner,
                    event_id=run.event_id,
                    handler=run.handler,
                    status=outcome.status,
                    error=outcome.error,
                    next_attempt_at=next_attempt,
                    finished_at=finished,
                    duration_ms=round((finished - started) * 1000, 3),
                    attempts=outcome.attempts,
                    outcome=outcome.tried,
                )
                break
            except StoreUnavailable as e:  # the store cannot write now: keep the lease and the outcome, try again
                log.error("could not record %s on %s (%s): trying again in %.1f s", run.handler, run.event_id, e, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.settings.lease / 3)
        tries = outcome.attempts if outcome.attempts is not None else run.attempts
        label = outcome.tried or outcome.status
        # For --log-format json: each of these lines carries the run it is about.
        fields = {"event_id": run.event_id, "handler": run.handler, "attempt": tries, "outcome": label}
        if event is not None:
            fields["type"] = event.type
        if not held:
            log.warning(
                "%s on %s: lease lost to another process; this outcome was not recorded",
                run.handler,
                run.event_id,
                extra={**fields, "outcome": "lease_lost"},
            )
            return
        if outcome.status in ("succeeded", "dead") and self._ordered():
            # The store let the next run of this resource go (`finish`): claim it now, not at the next poll.
            self._wakeup.set()
        if self._on_try is not None:
            ran = event is not None and outcome.attempts is None  # otherwise it was given up without a try
            self._on_try(run.handler, label, finished - started if ran else None)
        if outcome.status == "failed":
            log.warning(
                "%s failed on %s (try %d): %s; next try in %.1f s",
                run.handler,
                run.event_id,
                run.attempts,
                _last_line(outcome.error),
                (next_attempt or finished) - finished,
                extra=fields,
            )
        elif outcome.status == "dead":
            last_line = _last_line(outcome.error)
            log.error("%s gave up on %s after %d tries: %s", run.handler, run.event_id, tries, last_line, extra=fields)
            if event is not None:
                await self._on_dead(event, run.handler, outcome.error or "")

    async def _on_dead(self, event: Event, handler: str, error: str) -> None:
        loop = asyncio.get_running_loop()
        for callback in self.hooks.dead_callbacks:
            try:
                if is_async_callable(callback):
                    result = callback(event, handler, error)
                else:  # a sync callback (an email, an HTTP call) must not block the loop
                    result = await loop.run_in_executor(self._threads, callback, event, handler, error)
                if isinstance(result, Awaitable):
                    await result
            except BaseException as e:  # one broken alert must not stop the others, nor (sys.exit) the receiver
                if _own_cancellation(e):
                    raise
                fields = {"event_id": event.id, "type": event.type, "handler": handler, "outcome": "dead"}
                log.exception("on_dead callback %r failed", callback, extra=fields)


def _own_cancellation(error: BaseException) -> bool:
    """True for a CancelledError that cancels the current task (a shutdown); False for one a handler raised itself."""
    task = asyncio.current_task()
    return isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling() > 0


def _died(run: Run, max_attempts: int) -> str:
    """`last_error` of a run whose process died in its last allowed try (the claim's note names that process)."""
    process = _DIED_IN.search(run.last_error or "")
    return (
        f"{PROCESS_DIED} (try {run.attempts - 1} of {max_attempts}"
        f"{', process ' + process.group(1) if process else ''}): it ended without an outcome (os._exit, a signal, "
        "a segfault or the out-of-memory killer) and its lease expired. No try is left: fix the handler, "
        "then re-queue the run with `montra-hooks retry`."
    )


def _last_line(error: str | None) -> str:
    lines = (error or "").rstrip().splitlines()
    return lines[-1] if lines else ""


def _describe(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return (
        text
        if len(text) <= _MAX_ERROR_CHARS
        else text[: _MAX_ERROR_CHARS // 2] + "\n...\n" + text[-_MAX_ERROR_CHARS // 2 :]
    )
