"""Run the receiver under uvicorn with the limits a public endpoint needs (DESIGN: Receiver HTTP contract, Limits).

uvicorn offers `limit_concurrency` and a keep-alive timeout; under httptools it bounds neither the
bytes of a request's headers nor the time they or a body may take. `LimitedHttpToolsProtocol` adds
those in the protocol layer, as bytes arrive, before any per-request Python work:

- header bytes are counted as they are fed to the parser; past `max_header_bytes` the answer is
  431 `headers_too_large` at once and the connection is closed;
- a request's headers must be whole within `header_timeout` of its first byte, and its body within
  `body_timeout` of its headers, else the connection is closed (the app sees a disconnect, so
  nothing half-received is stored);
- a connection that sends nothing is closed after the keep-alive timeout, as an idle keep-alive is;
- past `max_connections`, requests get a JSON 503 (uvicorn's own would be plain text).

>>> run_server(app, host="127.0.0.1", port=8000, max_connections=1000)
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from asyncio.events import TimerHandle
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["DEFAULT_MAX_CONNECTIONS", "LimitedHttpToolsProtocol", "Limits", "run_server"]

log = logging.getLogger("montra.receiver")

DEFAULT_MAX_CONNECTIONS = 1000
_LINGER = 1.0
"""Seconds a refused connection stays half-open (not read) so that its client can read the 431."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one connection may cost. Defaults are DESIGN's."""

    max_header_bytes: int = 32 * 1024
    max_header_lines: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS


def _json_response(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": code, "message": message}).encode()
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


async def _service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
    body = json.dumps(
        {
            "error": "too_many_connections",
            "message": "The receiver has too many open connections right now; send it again in a moment.",
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Coalesced:
    """The transport as a request's response cycle sees it: what it writes in one turn of the loop goes out in one send.

    uvicorn writes a response's head and its body with a send each: two syscalls and, on TCP, two segments for
    every webhook answered. Held until the turn ends (or the response is complete), they leave together.
    """

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)  # a head whose body comes later (a stream) is not kept waiting
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()


class _TooManyHeaderLines(Exception):
    pass


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header-size, header-time and body-time limits (see the module doc).

    A subclass made by `with_limits` carries its `Limits`; uvicorn builds one instance per connection.
    """

    limits = Limits()

    @classmethod
    def with_limits(cls, limits: Limits) -> type[LimitedHttpToolsProtocol]:
        subclass: type[LimitedHttpToolsProtocol] = type(cls.__name__, (cls,), {"limits": limits})
        return subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = self.app
        # The capacity check is ours (to answer it in JSON): uvicorn's own must not run first.
        self.limit_concurrency = None
        self._reading_headers = True  # until the current request's headers are whole
        self._header_bytes = 0
        self._header_lines = 0
        self._refused = False
        self._in_body = False  # between a request's headers and the end of its body
        self._deadline: TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._out = _Coalesced(transport, self.loop)
        # A connection that never sends a byte is as idle as a keep-alive one: it must not hold a socket.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._out.flush()  # what a response wrote goes before anything this read makes us write
        fits = self._header_bytes + len(data) < self.limits.max_header_bytes
        if fits and self._reading_headers and not self._refused:
            # The usual read: it fits in what the header limit leaves (so it cannot exceed it), and is fed whole.
            self._header_bytes += len(data)
            self._feed(data)
        else:
            self._receive(data)
        # A deadline is armed only for a request still incomplete when this read is done: a webhook that
        # arrives in one read, the usual case, costs no timer. The header deadline so runs from the read
        # that brought the request's first byte, the body's from the read that completed its headers.
        if self._deadline is None and not self._refused:
            if self._reading_headers:
                if self._header_bytes:
                    self._arm(self.limits.header_timeout)
            elif self._in_body:
                self._arm(self.limits.body_timeout)

    def _receive(self, data: bytes) -> None:
        """Feed a read that may reach the header limit, in pieces that stop at it."""
        if self._refused:  # answered 431; what was read with it is dropped
            return
        limit = self.limits.max_header_bytes
        view = memoryview(data)  # slices of a view copy nothing: a flood's 256 KiB read is not copied to be dropped
        while view and self._reading_headers:
            room = limit - self._header_bytes
            if room <= 0:
                self._refuse_headers()
                return
            # Feed at most what the limit leaves: if the headers are not whole after that, they are too large,
            # and the parser never holds more than `limit` bytes of them.
            piece, view = view[:room], view[room:]
            self._header_bytes += len(piece)
            self._feed(piece)
            if self._refused or self.parser is None or self.transport.is_closing():
                return
            if self._reading_headers and self._header_bytes >= limit:
                self._refuse_headers()
                return
        if view:
            self._feed(view)

    def _feed(self, data: bytes | memoryview) -> None:
        """uvicorn's data_received, but a request refused from a parser callback is answered by us."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            # httptools wraps what a callback raised, keeping it as the context.
            if isinstance(e.__context__, _TooManyHeaderLines):
                self._refuse_headers()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks ------------------------------------------------------------------
    # They run for every request (on_header for every line): the base class's are called by name, since a
    # zero-argument super() costs about a thousand instructions a call here (CPython 3.11, counted).

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._reading_headers = True
        self._header_lines = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        # 32 KiB of `a:b` lines is 5,000 callbacks into Python: a line count stops a flood of them after a few.
        self._header_lines += 1
        if self._header_lines > self.limits.max_header_lines:
            raise _TooManyHeaderLines
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._in_body = True
        self._disarm()  # the header deadline; the body's is armed after this read if the body is not whole
        limit = self.limits.max_connections
        if len(self.connections) >= limit or len(self.tasks) >= limit:
            self.app = _service_unavailable
            try:
                HttpToolsProtocol.on_headers_complete(self)
            finally:
                self.app = self._app
        else:
            HttpToolsProtocol.on_headers_complete(self)
        if self.cycle is not None:
            self.cycle.transport = self._out  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self._out.flush()
        HttpToolsProtocol.on_response_complete(self)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_body = False
        self._reading_headers = True
        self._header_bytes = 0
        HttpToolsProtocol.on_message_complete(self)

    # -- limits ----------------------------------------------------------------------------

    def idle(self) -> bool:
        """No request on this connection: nothing sent yet, or a keep-alive between requests."""
        return (
            self._reading_headers and self._header_bytes == 0 and (self.cycle is None or self.cycle.response_complete)
        )

    def _arm(self, seconds: float) -> None:
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        # Headers or body too slow: close. The app, if it was reading the body, sees a disconnect and stores nothing.
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_headers(self) -> None:
        self._disarm()
        if self._refused or self.transport.is_closing():
            return
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier request on this connection is still being answered: its answer must not be cut into.
            self.transport.close()
            return
        message = (
            f"The request headers are larger than {self.limits.max_header_bytes} bytes; send fewer or shorter ones."
        )
        self.transport.write(_json_response(431, "headers_too_large", message))
        # What the parser gathered so far (thousands of small tuples in a flood) goes now, not with the connection.
        if self.headers:  # None when only blank lines came (the parser skips them before a request)
            self.headers.clear()
        # Closing now, with the client's bytes unread, would reset the connection and could discard the answer
        # before the client reads it: stop reading (no more work), end our side, and close a moment later.
        self.flow.pause_reading()
        # Answered: it no longer counts against --max-connections (back-to-back floods would fill it with these).
        self.connections.discard(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline = self.loop.call_later(_LINGER, self._expire)


class _Server(uvicorn.Server):
    """uvicorn's server, with a loop exception handler that keeps running out of file descriptors quiet."""

    _last_warning = float("-inf")
    _last_shed = float("-inf")

    async def startup(self, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        default = loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == "socket.accept() out of system resource":
                self._out_of_descriptors()
                return
            if default is not None:
                default(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handle)
        await super().startup(sockets)

    def _out_of_descriptors(self) -> None:
        # asyncio reports this once per queued connection (thousands a second): one line every 10 s says it,
        # and shedding connections that have sent nothing makes room for the next webhook at once.
        now = time.monotonic()
        if now - self._last_shed < 0.1:  # asyncio calls this up to `backlog` times in one go
            return
        self._last_shed = now
        shed = 0
        for connection in list(self.server_state.connections):
            if isinstance(connection, LimitedHttpToolsProtocol) and connection.idle():
                connection.transport.close()
                shed += 1
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "out of file descriptors: closed %d idle connection(s); raise `ulimit -n` or lower --max-connections",
                shed,
            )


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one (idle sockets are files); return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # some systems cap it below RLIM_INFINITY: keep what there is
            return soft
    return hard


def run_server(
    app: Any,
    *,
    host: str,
    port: int,
    limits: Limits | None = None,
    access_log: bool = False,
    timeout_graceful_shutdown: int = 10,
    log_config: dict[str, Any] | None = None,
) -> None:
    """Serve `app` under uvicorn (httptools) with `limits` until SIGINT or SIGTERM.

    `log_config` is a `logging.config.dictConfig` for uvicorn's loggers (default: uvicorn's own).
    """
    limits = limits or Limits()
    raise_descriptor_limit()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=LimitedHttpToolsProtocol.with_limits(limits),
        access_log=access_log,
        log_level="info",
        lifespan="on",
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=max(1, round(limits.keep_alive)),
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        log_config=log_config or uvicorn.config.LOGGING_CONFIG,
    )
    _Server(config).run()
