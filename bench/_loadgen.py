"""A small HTTP/1.1 keep-alive load generator, used by `bench/ingest.py` only where wrk cannot be had.

It does what `bench/ingest.lua` makes wrk do: N connections, each sending the next pre-signed event
as soon as the previous answer arrives, for a fixed time, then one `RESULT ...` line in wrk's units
(microseconds). It runs in its own process, on raw asyncio protocols (no HTTP client library), so it
costs the server as little CPU as a Python client can; wrk costs less, so figures from the two are
not comparable with each other, only within one run.

Usage: `python bench/_loadgen.py URL EVENTS_PREFIX THREADS CONNECTIONS SECONDS`
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial
from urllib.parse import urlsplit


class _Shared:
    def __init__(self, requests: list[bytes], deadline: float) -> None:
        self.requests = requests
        self.next_one = 0
        self.wrapped = 0
        self.deadline = deadline
        self.latencies: list[float] = []
        self.non2xx = 0
        self.read_errors = 0

    def take(self) -> bytes:
        if self.next_one == len(self.requests):
            self.next_one = 0
            self.wrapped += 1
        request = self.requests[self.next_one]
        self.next_one += 1
        return request


class _Connection(asyncio.Protocol):
    def __init__(self, shared: _Shared, closed: asyncio.Future[None]) -> None:
        self.shared = shared
        self.closed = closed
        self.buffer = b""
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.shared.deadline:
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.transport.write(self.shared.take())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        status = int(head.split(" ", 2)[1])
        self.shared.latencies.append(time.perf_counter() - self.started)
        if status > 399:  # as wrk counts them
            self.shared.non2xx += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.shared.read_errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


def _requests(url: str, prefix: str, threads: int) -> list[bytes]:
    parts = urlsplit(url)
    out: list[bytes] = []
    for index in range(1, threads + 1):
        with open(f"{prefix}.{index}", encoding="utf-8") as lines:
            for line in lines:
                msg_id, timestamp, signature, body = line.rstrip("\n").split("\t", 3)
                raw = body.encode()
                head = (
                    f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                    f"webhook-id: {msg_id}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n"
                    f"Content-Length: {len(raw)}\r\n\r\n"
                )
                out.append(head.encode() + raw)
    return out


async def _run(url: str, prefix: str, threads: int, connections: int, seconds: float) -> str:
    parts = urlsplit(url)
    requests = _requests(url, prefix, threads)
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    shared = _Shared(requests, start + seconds)
    closed: list[asyncio.Future[None]] = []
    for _ in range(connections):
        future: asyncio.Future[None] = loop.create_future()
        closed.append(future)
        await loop.create_connection(
            partial(_Connection, shared, future), parts.hostname or "127.0.0.1", parts.port or 80
        )
    await asyncio.gather(*closed)
    duration = time.perf_counter() - start
    latencies = sorted(shared.latencies) or [0.0]

    def percentile(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6)

    return (
        f"RESULT requests={len(shared.latencies)} duration_us={int(duration * 1e6)} non2xx={shared.non2xx} "
        f"connect=0 read={shared.read_errors} write=0 timeout=0 p50_us={percentile(50)} p99_us={percentile(99)} "
        f"wrapped={shared.wrapped}"
    )


if __name__ == "__main__":
    url, prefix, threads, connections, seconds = sys.argv[1:6]
    print(asyncio.run(_run(url, prefix, int(threads), int(connections), float(seconds))))
