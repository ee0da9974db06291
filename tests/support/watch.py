"""A real `montra-hooks watch` process whose output lines a test reads as they come."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

from support.server import MONTRA_HOOKS

WAIT = 20.0  # seconds: the most any step may take before the test fails


class WatchProcess:
    """`montra-hooks watch ...` running in `cwd`; its output lines are read as they come."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONTRA_HOOKS_FIXTURES": ""}
        self.proc = subprocess.Popen(
            [str(MONTRA_HOOKS), "watch", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str) -> re.Match[str]:
        """Wait for the next line matching `pattern` (lines before it are kept in `seen`)."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matched {pattern!r} in {WAIT} s; output so far:\n" + "\n".join(self.seen)
                ) from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)  # it ends at the pipe's end of file; then the pipe can be closed
        assert self.proc.stdout is not None
        self.proc.stdout.close()
