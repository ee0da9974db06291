"""Sending events: over HTTP to a receiver, re-signed through `receiver.sign`, many at once but bounded.

`HttpTarget` posts events over a few single-connection `httpx.AsyncClient`s; `pump` feeds it (or the
in-process `AppTarget`) from any source with at most `concurrency` events in flight and at most
`rate` started per second. Nothing here grows with the number of events: the source is read only
as fast as slots free up, and each `Result` goes to a callback, not into a list.

>>> async with HttpTarget("http://127.0.0.1:8000/webhooks", secret=secret) as target:
...     await pump(events, target.send, concurrency=8, on_result=print)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from receiver.replays import REPLAY_OF_HEADER, original_id, replay_id
from receiver.verify import sign

if TYPE_CHECKING:
    import httpx

__all__ = ["REPLAY_OF_HEADER", "HttpTarget", "Outgoing", "Result", "pump", "replay_id"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event to send: its id, type and exact body bytes (and, from a store, its seq and headers)."""

    id: str
    type: str
    body: bytes
    seq: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def original_id(self) -> str:
        """The id this event was first sent under: a stored replay names it in `montra-replay-of`."""
        return original_id(self.id, self.headers)


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one event.

    `status` is the HTTP status (None when no answer came, and in-process); `answer` is the
    receiver's `status` on a 2xx (`stored`, `duplicate`), its `error` code otherwise, or, in-process,
    `handled`, `unhandled` or `failed`; `error` is one human line when it was not accepted.
    """

    event: Outgoing
    sent_as: str
    ok: bool
    status: int | None
    answer: str | None
    ms: float
    error: str | None = None
    handlers: tuple[str, ...] = ()
    detail: str | None = None
    """The handlers' tracebacks when they failed in-process."""


class HttpTarget:
    """Posts events to one URL, each signed with `secret` and a fresh timestamp, over one client.

    By default each event goes out under `replay_id(original)` with a `montra-replay-of` header;
    `keep_id=True` sends the original id (a receiver then answers `duplicate` for one it stored).
    Use it as an async context manager so its connections are closed.

    It holds `connections` clients of one connection each, and each send borrows an idle one:
    httpcore's pool scans every connection it holds on each request, so one client of 16
    connections spends about twice the CPU per event of 16 clients of one (bench/replay_perf.py).
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str,
        keep_id: bool = False,
        timeout: float = 30.0,
        connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # Imported here, not at the top: `replay --dry-run` and the read-only commands never load httpx.
        import httpx

        sign(b"", secret=secret)  # a bad secret fails here, once, as a ConfigurationError
        self.url = url
        self.keep_id = keep_id
        self._secret = secret
        if connections < 1:
            raise ValueError(f"connections must be at least 1, not {connections}")
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        # One TLS context for all: each client would otherwise load the CA bundle itself (~20 ms each).
        tls = httpx.create_ssl_context()
        self._clients = [
            httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, verify=tls)
            for _ in range(connections)
        ]
        self._idle: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for client in self._clients:
            self._idle.put_nowait(client)

    def __repr__(self) -> str:
        return f"HttpTarget({self.url!r}, keep_id={self.keep_id})"  # never the secret

    async def __aenter__(self) -> HttpTarget:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def send(self, event: Outgoing) -> Result:
        """POST one event and read the receiver's answer; transport errors become a Result too."""
        import httpx

        sent_as = event.id if self.keep_id else replay_id(event.original_id)
        headers = {"content-type": "application/json", **sign(event.body, secret=self._secret, msg_id=sent_as)}
        if sent_as != event.id:
            headers[REPLAY_OF_HEADER] = event.original_id
        client = await self._idle.get()
        started = time.perf_counter()
        try:
            response = await client.post(self.url, content=event.body, headers=headers)
        except httpx.TransportError as e:
            ms = (time.perf_counter() - started) * 1000
            return Result(event, sent_as, False, None, None, ms, error=_transport_error(e, self.url))
        finally:
            self._idle.put_nowait(client)
        ms = (time.perf_counter() - started) * 1000
        ok = response.is_success
        answer, message = _read_answer(response)
        return Result(event, sent_as, ok, response.status_code, answer, ms, error=None if ok else message)


def _read_answer(response: httpx.Response) -> tuple[str | None, str]:
    """(the answer's `status` or `error` code, its message) from a receiver's JSON body."""
    try:
        payload: Any = json.loads(response.content)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        text = response.text.strip().replace("\n", " ")
        return None, f"HTTP {response.status_code}: {text[:200] or 'empty body'}"
    key = "status" if response.is_success else "error"
    answer = payload.get(key)
    message = payload.get("message")
    return (
        answer if isinstance(answer, str) else None,
        message if isinstance(message, str) else f"HTTP {response.status_code}",
    )


def _transport_error(error: httpx.TransportError, url: str) -> str:
    import httpx

    if isinstance(error, httpx.ConnectError):
        return f"cannot connect to {url}: is the receiver running? ({error or type(error).__name__})"
    if isinstance(error, httpx.TimeoutException):
        return f"no answer from {url} in time ({type(error).__name__})"
    return f"{type(error).__name__}: {error}"


class _Pacer:
    """Spaces starts at least 1/rate seconds apart, across every worker."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def pump(
    events: AsyncIterable[Outgoing] | Iterable[Outgoing],
    send: Callable[[Outgoing], Awaitable[Result]],
    *,
    on_result: Callable[[Result], None],
    concurrency: int = 8,
    rate: float | None = None,
) -> None:
    """Send every event through `send`, `concurrency` at a time, calling `on_result` as each ends.

    Events start in the source's order; with `concurrency=1` each waits for the previous answer.
    `rate` caps starts per second. The source is read only as workers free up, so at most
    `2 x concurrency` events are held in memory whatever its length.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be a positive number of events per second, not {rate}")
    pacer = _Pacer(rate) if rate is not None else None
    queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(maxsize=concurrency)

    async def produce() -> None:
        if isinstance(events, AsyncIterable):
            async for event in events:
                await queue.put(event)
        else:
            for event in events:
                await queue.put(event)
        for _ in range(concurrency):
            await queue.put(None)

    async def work() -> None:
        while (event := await queue.get()) is not None:
            if pacer is not None:
                await pacer.wait()
            on_result(await send(event))

    # A TaskGroup, so that an error in one worker (or in on_result) stops the others and the source.
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            for _ in range(concurrency):
                group.create_task(work())
    except ExceptionGroup as group:
        # The others were cancelled because of the first: that one is the error to show.
        raise group.exceptions[0] from None
