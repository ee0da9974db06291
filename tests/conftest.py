"""Shared test helpers: a free loopback port, a real `montra-hooks serve` process, a signed POST.

Append new shared fixtures here; keep each one small and documented.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver import sign

# PostgreSQL fixtures (postgres_url, store_url) in a module of their own; tests/ is on sys.path like conftest.
pytest_plugins = ["postgres_support"]

MONTRA_HOOKS = Path(sys.executable).parent / "montra-hooks"
"""The venv's console script, as a user runs it (`python -m replay` runs the same CLI)."""

START_TIMEOUT = 20.0
"""Seconds a server may take to answer `/healthz` after it is started (longer under strace)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sse_frame(raw: bytes) -> dict[str, Any]:
    """One Server-Sent Events frame (no blank line) as a dict: `data` parsed as JSON, a comment as `comment`."""
    frame: dict[str, Any] = {}
    for line in raw.decode("ascii").split("\n"):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "":
            frame["comment"] = value
        elif field == "data":
            frame["data"] = json.loads(value)
        else:
            frame[field] = value
    return frame


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a store as a user would (sqlite-utils, Datasette): on a connection of our own, closed after."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def signed_post(
    url: str,
    body: bytes,
    secret: str,
    msg_id: str | None = None,
    *,
    client: httpx.Client | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `body` signed with `secret` (through `receiver.sign`) as `application/json`.

    `client` may be any httpx-style client, a Starlette `TestClient` included (then `url` can be a path);
    `headers` are added after the signature headers.
    """
    sent = {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id), **(headers or {})}
    if client is not None:
        return client.post(url, content=body, headers=sent)
    return httpx.post(url, content=body, headers=sent, timeout=10.0)


class ServerProcess:
    """A real `montra-hooks serve` on a free loopback port, run in `cwd`.

    >>> server = ServerProcess(["--secret", SECRET, "--db", "events.db"], cwd=tmp_path).start()
    >>> signed_post(server.url + "/webhooks", body, SECRET)
    >>> server.kill(); server.restart()

    Its stdout and stderr go to files in `cwd` (a pipe nobody reads could fill and block it);
    `output()` reads them. `wrapper` prefixes the command, e.g. `["strace", "-f", ...]`.
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path,
        *,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        port: int | None = None,
        name: str = "server",
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = {**os.environ, **(env or {})}
        self.wrapper = list(wrapper)
        self.port = port or free_port()
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321` (the webhook path is yours to add)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the process and wait until `GET /healthz` answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [*self.wrapper, str(MONTRA_HOOKS), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        # Appending keeps the output of every start: a restart must not hide why the last one died.
        with self.log_path.open("ab") as log:
            # A session of its own: kill() can end the whole group (a wrapper's child included) by its id.
            self.proc = subprocess.Popen(
                [*command, *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"montra-hooks serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"montra-hooks serve did not answer /healthz in {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs. The process group goes too (a wrapper's child)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful shutdown) and wait for the exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise
        return self.proc.returncode

    def restart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Stop it gracefully if it still runs, then start it again on the same port."""
        if self.running:
            self.terminate()
        return self.start(timeout)

    def output(self) -> str:
        """Everything the process (all its starts) wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `serve(*args, **kwargs)` starts a `ServerProcess` in tmp_path; all are killed at teardown.

    >>> server = serve("--secret", SECRET, "--db", "events.db")
    """
    servers: list[ServerProcess] = []

    def start(*args: str, **kwargs: object) -> ServerProcess:
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("name", f"server{len(servers)}")
        server = ServerProcess(args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()
