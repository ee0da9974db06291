"""Loopback ports."""

from __future__ import annotations

import socket
import threading

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThreadClients:
    """An httpx client per thread, kept until `close()`: for tests that post from a thread pool.

    `httpx.post` builds a new SSL context per call, which costs more than the request, and one client
    shared by many threads under load failed with EBADF on a loaded CI.
    """

    def __init__(self) -> None:
        self._clients: list[httpx.Client] = []
        self._local = threading.local()

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=10.0)
            self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
