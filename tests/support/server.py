"""A real `montra-hooks serve` process on a free loopback port, for tests that need the whole program."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from support.net import free_port
from support.wait import wait_until

MONTRA_HOOKS = Path(sys.executable).parent / "montra-hooks"
"""The venv's console script, as a user runs it (`python -m replay` runs the same CLI)."""

START_TIMEOUT = 20.0
"""Seconds a server may take to answer `/healthz` after it is started (longer under strace)."""


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
        try:
            wait_until(self._healthy, timeout=timeout, what=f"montra-hooks serve to answer {self.url}/healthz")
        except AssertionError as e:
            self.kill()
            raise AssertionError(f"{e}\n{self.output()}") from None
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:  # no use waiting for a process that has died: say why it did
            raise RuntimeError(f"montra-hooks serve exited with {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

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
