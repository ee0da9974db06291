"""`GET /stream`: every stored event as a Server-Sent Event, for `montra-hooks listen` on a laptop.

Frames are read from the store by `seq`, never from per-client queues: a stream resumed from
`Last-Event-ID` (or `?since=`) reads its backlog and then the live events through one loop, so
the two join with no gap and no duplicate, and events stored by another process flow too.

    id: 42
    event: montra.event
    data: {"seq": 42, "id": "msg_...", "type": "refund.created", "headers": {...}, "body": "{...}"}

A body that is not UTF-8 travels as `body_b64` instead of `body`. A `?types=` stream also sends
`event: cursor` frames (with an `id:`) so its client's cursor moves past the events it skips, and
every stream sends `event: gap` when its cursor is older than the oldest stored event (pruned)
or newer than the newest seq ever assigned (another database); both name where it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .errors import ConfigurationError, StoreUnavailable
from .patterns import validate_pattern
from .stores.protocol import EventFilter, Store, StoredEvent, redact

__all__ = ["DEFAULT_KEEPALIVE", "PAGE_SIZE", "RETRY_MS", "EventStream", "event_frame"]

log = logging.getLogger("montra.stream")

DEFAULT_KEEPALIVE = 15.0
"""Seconds between keep-alive comments on a quiet stream: proxies drop idle connections."""
_EXIT_CHECK = 0.1
POLL_INTERVAL = 1.0
"""Seconds between store reads when nothing pokes the stream: events stored by another process."""
PAGE_SIZE = 500
"""Events read, and written to the socket, at a time while a stream catches up."""
RETRY_MS = 2000
"""The `retry:` a stream announces: how long an EventSource waits before it reconnects."""

_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no", "connection": "keep-alive"}


class EventStream:
    """The `/stream` endpoint of one app: its token, and the signal that new events were stored.

    `notify()` wakes every open stream (the app calls it after it stores an event); `close()`
    ends them all (lifespan shutdown). Each stream also ends by itself when uvicorn starts to
    exit, because uvicorn waits for open connections before it runs the lifespan shutdown.
    """

    def __init__(self, store: Callable[[], Store], *, token: str | None, keepalive: float = DEFAULT_KEEPALIVE) -> None:
        if token is not None and not token.strip():
            raise ConfigurationError("The stream token is empty: pass a long random one, or none to turn /stream off.")
        if keepalive <= 0:
            raise ConfigurationError(f"The stream keep-alive must be positive, got {keepalive}.")
        self._store = store
        self._token = token.encode() if token is not None else None
        self.keepalive = keepalive
        self.poll = POLL_INTERVAL
        self._wakeup: asyncio.Event | None = None
        self._clients: set[_StreamResponse] = set()
        self._exit_watch: asyncio.Task[None] | None = None
        self.closed = False

    @property
    def enabled(self) -> bool:
        """Whether `GET /stream` is on (it has a token)."""
        return self._token is not None

    @property
    def clients(self) -> int:
        """Streams open now (`montra_stream_clients`)."""
        return len(self._clients)

    def slowest_cursor(self) -> int | None:
        """The lowest seq an open stream has been sent up to, or None with no stream open."""
        return min((client.cursor for client in self._clients), default=None)

    def open(self) -> None:
        """Start afresh (a new lifespan, maybe on a new event loop)."""
        self._wakeup = None
        self.closed = False

    def notify(self) -> None:
        """New events are stored: wake every stream waiting for them."""
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def close(self) -> None:
        """End every open stream now."""
        self.closed = True
        self.notify()

    def _waiter(self) -> asyncio.Event:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        return self._wakeup

    def _stopping(self) -> bool:
        return self.closed or _uvicorn_exiting()

    def _watch(self) -> None:
        if self._exit_watch is None or self._exit_watch.done():
            self._exit_watch = asyncio.get_running_loop().create_task(self._watch_exit(), name="montra-stream-exit")

    async def _watch_exit(self) -> None:
        # One watcher for all streams: a stream waiting for events learns of the exit within 0.1 s.
        # (A client that stopped reading leaves unsent bytes that uvicorn waits for: `serve` bounds that wait.)
        while self._clients and not self.closed:
            if _uvicorn_exiting():
                self.close()
                return
            await asyncio.sleep(_EXIT_CHECK)

    async def endpoint(self, request: Request) -> Response:
        """`GET /stream`: check the token and the cursor, then stream."""
        if self._token is None:
            message = "The event stream is off: start the receiver with --stream-token (or MONTRA_HOOKS_STREAM_TOKEN)."
            return _error(404, "not_found", message)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            message = "The stream needs 'Authorization: Bearer <stream token>', and that token did not match."
            return _error(401, "unauthorized", message, headers={"www-authenticate": "Bearer"})
        # An EventSource reconnecting sends Last-Event-ID with its first URL: the header is the newer cursor.
        raw_cursor = request.headers.get("last-event-id") or request.query_params.get("since")
        cursor: int | None = None
        if raw_cursor is not None and raw_cursor.strip():
            if not (raw_cursor.isascii() and raw_cursor.isdigit() and len(raw_cursor) <= 18):
                message = f"The cursor {raw_cursor[:40]!r} is not a seq: send a whole number (Last-Event-ID or since)."
                return _error(400, "invalid_cursor", message)
            cursor = int(raw_cursor)
        types: list[str] = []
        for value in request.query_params.getlist("types"):
            for pattern in filter(None, (p.strip() for p in value.split(","))):
                try:
                    types.append(validate_pattern(pattern))
                except ConfigurationError as e:
                    return _error(400, "invalid_types", str(e))
        live = cursor is None
        if cursor is None:
            # Fixed before the 200 goes out: whatever is stored once the client sees it comes after the cursor.
            try:
                _, cursor = await self._store().seq_bounds()
            except StoreUnavailable as e:
                return _error(503, "store_unavailable", str(e))
        return _StreamResponse(self, cursor=cursor, types=tuple(types), live=live)


class _StreamResponse(Response):
    """One client's stream. It ends when the client leaves, the app closes streams, or uvicorn exits."""

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream, *, cursor: int, types: tuple[str, ...], live: bool) -> None:
        # As StreamingResponse does: no `body`, so no Content-Length.
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS)
        self.stream = stream
        self.cursor = cursor
        self.types = types
        self.live = live

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def run(work: Callable[[], Any]) -> None:
                await work()
                group.cancel_scope.cancel()

            self.stream._clients.add(self)
            try:
                group.start_soon(run, lambda: self._stream(send))
                await run(lambda: _wait_for_disconnect(receive))
            finally:
                self.stream._clients.discard(self)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        self.stream._watch()
        try:
            await self._frames(send)
        except OSError:  # the client went away while we wrote: nothing more to do
            return
        except (StoreUnavailable, RuntimeError) as e:
            # RuntimeError: the store closed under us (shutdown). The client reconnects after `retry`.
            log.warning("stream ended: cannot read the store: %s", e)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _frames(self, send: Send) -> None:
        stream, cursor = self.stream, self.cursor
        out = [b"retry: %d\n\n" % RETRY_MS]
        if self.live:  # started at the live end: tell the client where that is, so it can resume from there
            out.append(_frame("cursor", cursor, {"seq": cursor}))
        last_write = 0.0

        async def flush() -> None:
            nonlocal last_write
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            out.clear()
            last_write = time.monotonic()
            self.cursor = cursor  # what this client has been sent, for montra_stream_lag_events

        while not stream._stopping():
            # Take the wake-up before reading: an event stored during the read then wakes the next wait.
            waiter = stream._waiter()
            store = stream._store()
            oldest, newest = await store.seq_bounds()
            if cursor > newest:
                out.append(_gap("ahead", cursor=cursor, resume=newest, oldest=oldest, newest=newest))
                cursor = newest
            elif cursor < oldest - 1:
                out.append(_gap("pruned", cursor=cursor, resume=oldest - 1, oldest=oldest, newest=newest))
                cursor = oldest - 1
            while cursor < newest and not stream._stopping():
                selection = EventFilter(after_seq=cursor, max_seq=newest, types=self.types, limit=PAGE_SIZE)
                rows = await store.list_events(selection)
                out.extend(event_frame(row) for row in rows)
                if len(rows) == PAGE_SIZE:
                    cursor = rows[-1].seq
                else:
                    # Everything up to `newest` is read: move the client's cursor past what it skipped.
                    if not rows or rows[-1].seq < newest:
                        out.append(_frame("cursor", newest, {"seq": newest}))
                    cursor = newest
                if out:
                    await flush()
            if out:
                await flush()
            elif time.monotonic() - last_write >= stream.keepalive:
                out.append(b": keep-alive\n\n")
                await flush()
            timeout = min(stream.poll, max(0.0, stream.keepalive - (time.monotonic() - last_write)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), timeout)


def event_frame(event: StoredEvent) -> bytes:
    """One stored event as an SSE frame: `id: seq`, `event: montra.event`, the exact body in `data`."""
    data: dict[str, Any] = {"seq": event.seq, "id": event.id, "type": event.type, "headers": redact(event.headers)}
    data.update(event.body_json())
    return _frame("montra.event", event.seq, data)


def _frame(name: str, seq: int, data: dict[str, Any]) -> bytes:
    # ASCII only: a client that splits lines as str.splitlines() does (on U+2028, U+0085...) still reads one line.
    payload = json.dumps(data, separators=(",", ":")).encode()
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, name.encode(), payload)


def _gap(reason: str, *, cursor: int, resume: int, oldest: int, newest: int) -> bytes:
    data = {"reason": reason, "cursor": cursor, "resume": resume, "oldest": oldest, "newest": newest}
    return _frame("gap", resume, data)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _uvicorn_exiting() -> bool:
    """True once uvicorn has been told to exit (SIGINT or SIGTERM).

    uvicorn installs its bound `Server.handle_exit` as the signal handler and waits for open
    connections to close before it runs the lifespan shutdown, so a stream must notice the
    exit by itself. sse-starlette finds the server the same way.
    """
    handler = signal.getsignal(signal.SIGTERM)
    should_exit = getattr(getattr(handler, "__self__", None), "should_exit", None)
    return should_exit is True
