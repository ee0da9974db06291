"""Helpers for the tunnel tests: a `montra-hooks listen` process, a scriptable local target, store reads.

`montra-hooks serve` processes come from `support.server.ServerProcess`; this module adds the other two
processes a tunnel has. Their waits poll for an exact state (never for a duration) with `support.wait`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from support.net import free_port
from support.server import MONTRA_HOOKS, START_TIMEOUT
from support.signing import signed_post
from support.wait import wait_until

RELAY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOCAL_SECRET = "whsec_dHVubmVsLWxvY2FsLXNlY3JldC1ieXRlcw=="
TOKEN = "stream-token-for-tests"
FAST = ("--backoff", "0.05", "--max-backoff", "0.2")
"""Short backoffs, so a test waits for states rather than for sleeps."""

TARGET_SCRIPT = Path(__file__).resolve().parent / "apps" / "tunnel_target.py"


def stored(db: Path) -> list[tuple[int, str, str, bytes]]:
    """(seq, id, type, body) of every event in a store, in seq order; [] before it exists."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [
            (s, i, t, bytes(b)) for s, i, t, b in conn.execute("SELECT seq, id, type, body FROM events ORDER BY seq")
        ]
    except sqlite3.OperationalError:  # created, not migrated yet
        return []
    finally:
        conn.close()


def stored_ids(db: Path) -> list[str]:
    return [row[1] for row in stored(db)]


def event_body(event_type: str, n: int) -> bytes:
    return json.dumps({"type": event_type, "data": {"n": n, "note": "café\u2028 \n"}}, indent=1).encode()


def send(relay_url: str, event_type: str, n: int, msg_id: str | None = None) -> str:
    """Send one signed event to the relay; return its id."""
    event_id = msg_id or f"msg_{event_type.replace('.', '_')}_{n}"
    response = signed_post(relay_url + "/webhooks", event_body(event_type, n), RELAY_SECRET, event_id)
    assert response.status_code == 200, response.text
    return event_id


class Process:
    """A child process with its output in a file (a pipe nobody reads could fill and block it)."""

    def __init__(self, command: Sequence[str], cwd: Path, name: str) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.name}.log"

    def start(self) -> Process:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until `text` appears `count` times in the output (all starts together)."""

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return self.output().count(text) >= count

        try:
            wait_until(seen, timeout=timeout, what=f"{text!r} x{count} from {self.name}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {self.name} output ---\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL: no cleanup code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)


def listen_process(cwd: Path, relay_url: str, target_url: str, *extra: str, name: str = "listen") -> Process:
    """`montra-hooks listen` from the relay to `target_url`, re-signing with LOCAL_SECRET, fast backoffs."""
    command = [str(MONTRA_HOOKS), "listen", "--from", relay_url, "--token", TOKEN, "--forward-to", target_url]
    return Process([*command, "--secret", LOCAL_SECRET, *FAST, *extra], cwd, name)


class Target(Process):
    """`tests/support/apps/tunnel_target.py`: a local target that verifies with LOCAL_SECRET and records what it took.

    It answers 500 while the file `fail` exists in its folder and 400 for ids listed in `reject`;
    accepted events go to `received.jsonl`, one `{"id", "body"}` line each (body as latin-1 text).
    """

    def __init__(self, cwd: Path) -> None:
        self.port = free_port()
        self.folder = cwd / "target"
        self.folder.mkdir(exist_ok=True)
        command = [sys.executable, str(TARGET_SCRIPT), str(self.port), LOCAL_SECRET, str(self.folder)]
        super().__init__(command, cwd, "target")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    def start(self) -> Target:
        super().start()
        try:
            wait_until(self._answers, timeout=START_TIMEOUT, what=f"the target to answer on port {self.port}")
        except AssertionError as e:
            raise AssertionError(f"the target did not start: {e}\n{self.output()}") from None
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the target exited with {self.proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2.0)
        except httpx.TransportError:
            return False
        return True

    def received(self) -> list[tuple[str, bytes]]:
        path = self.folder / "received.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [(line["id"], line["body"].encode("latin-1")) for line in lines]

    def fail(self, on: bool) -> None:
        flag = self.folder / "fail"
        if on:
            flag.write_text("500")
        elif flag.exists():
            os.remove(flag)

    def reject(self, *ids: str) -> None:
        (self.folder / "reject").write_text("\n".join(ids))


_RELAY_CODE = """
import sys, uvicorn
from receiver import create_app
db, port, keepalive = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
app = create_app(db=db, secrets=[{secret!r}], stream_token={token!r}, stream_keepalive=keepalive)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", lifespan="on")
"""


class QuickRelay(Process):
    """A relay like `serve --stream-token`, but with a short keep-alive, so a silence is an anomaly."""

    def __init__(self, cwd: Path, keepalive: float) -> None:
        self.port = free_port()
        code = _RELAY_CODE.format(secret=RELAY_SECRET, token=TOKEN)
        command = [sys.executable, "-c", code, str(cwd / "relay.db"), str(self.port), str(keepalive)]
        super().__init__(command, cwd, "quick-relay")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> QuickRelay:
        super().start()
        wait_until(self._healthy, timeout=START_TIMEOUT, what="the relay to answer /healthz")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the relay exited:\n{self.output()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the connections stay open and nothing comes through (a laptop's network gone quiet)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
