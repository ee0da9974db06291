"""`LocalTarget`: the listener's HTTP/1.1 client for the local receiver, one keep-alive connection.

`listen` delivers one event at a time, in order, so a catch-up goes as fast as one request's
CPU plus the target's answer, event after event. A general client's connection pool, cancel
scopes and hooks cost more CPU than the request itself there, so this speaks HTTP/1.1 through
h11 (the parser uvicorn ships with) on a plain asyncio stream. Failures are raised as httpx's
transport errors, which the listener already knows how to describe and retry.
"""

from __future__ import annotations

import asyncio
import ssl

import h11
import httpx

__all__ = ["LocalTarget"]

_READ_SIZE = 65536


class LocalTarget:
    """POSTs to `url` and returns (status, answer text); raises httpx.TransportError when there is no answer."""

    def __init__(self, url: str, *, timeout: float, user_agent: str) -> None:
        self.url = httpx.URL(url)
        self._timeout = timeout
        self._fixed: list[tuple[bytes, bytes]] = [(b"host", self.url.netloc), (b"user-agent", user_agent.encode())]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def __aenter__(self) -> LocalTarget:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._close()

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        reused = self._writer is not None
        try:
            return await asyncio.wait_for(self._exchange(body, headers), self._timeout)
        except TimeoutError as e:
            self._close()
            raise httpx.ReadTimeout(f"no answer within {self._timeout:g} s") from e
        except (OSError, h11.ProtocolError, _ClosedBeforeAnswer) as e:
            self._close()
            if reused and not isinstance(e, h11.ProtocolError):
                # The target closed an idle keep-alive connection (uvicorn does after 5 s): once more, afresh.
                # Had it taken the request before it closed, the resend is a duplicate, answered as such.
                return await self.post(body, headers)
            if isinstance(e, OSError):
                raise httpx.ConnectError(str(e) or type(e).__name__) from e
            raise httpx.RemoteProtocolError(str(e) or "the connection closed without an answer") from e

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        request = h11.Request(
            method="POST",
            target=self.url.raw_path,
            headers=[
                *self._fixed,
                *((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        for message in (request, h11.Data(data=body), h11.EndOfMessage()):
            self._writer.write(self._conn.send(message) or b"")
        await self._writer.drain()
        status = 0
        answer = bytearray()
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ_SIZE)
                if not data and status == 0:
                    raise _ClosedBeforeAnswer
                self._conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _ClosedBeforeAnswer
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        else:  # the target closes after this answer (Connection: close)
            self._close()
        return status, answer.decode("utf-8", "replace")

    async def _connect(self) -> None:
        context = ssl.create_default_context() if self.url.scheme == "https" else None
        self._reader, self._writer = await asyncio.open_connection(
            self.url.host, self.url.port or (443 if context else 80), ssl=context
        )
        self._conn = h11.Connection(h11.CLIENT)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class _ClosedBeforeAnswer(Exception):
    """The connection ended before any answer."""
