"""listen's HTTP/1.1 client for the local target, against small raw servers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from replay.forward import LocalTarget

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


async def _with_server(handler: Handler, work: Callable[[str], Awaitable[None]]) -> int:
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await work(f"http://127.0.0.1:{port}/webhooks")
    return connections


def test_answers_on_one_keep_alive_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await _read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    async def work(url: str) -> None:
        async with LocalTarget(url, timeout=5, user_agent="test") as target:
            assert await target.post(b"one", {"content-type": "application/json"}) == (200, "one")
            assert await target.post(b"two", {"content-type": "application/json"}) == (200, "two")

    assert asyncio.run(_with_server(handler, work)) == 1


def test_an_idle_connection_closed_by_the_target_is_reopened_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        await writer.drain()  # then close, as a keep-alive timeout would, without saying so

    async def work(url: str) -> None:
        async with LocalTarget(url, timeout=5, user_agent="test") as target:
            assert await target.post(b"{}", {}) == (202, "ok")
            await asyncio.sleep(0.05)
            assert await target.post(b"{}", {}) == (202, "ok")

    assert asyncio.run(_with_server(handler, work)) == 2


def test_no_listener_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def work() -> None:
        async with LocalTarget(f"http://127.0.0.1:{port}/webhooks", timeout=5, user_agent="test") as target:
            await target.post(b"{}", {})

    with pytest.raises(httpx.ConnectError):
        asyncio.run(work())


def test_no_answer_in_time_is_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def work(url: str) -> None:
        async with LocalTarget(url, timeout=0.2, user_agent="test") as target:
            with pytest.raises(httpx.ReadTimeout):
                await target.post(b"{}", {})

    asyncio.run(_with_server(handler, work))
