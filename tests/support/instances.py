"""Helpers for tests of several `montra-hooks serve` instances on one PostgreSQL database.

- `StreamTap`: one client of a real server's `GET /stream`, read by a task of its own, so a test can
  look at what arrived so far (and at what did not) while it does other things;
- `StalledWriter`: a transaction that takes a seq as a batch does and then neither commits nor rolls back;
- `RunHistory`: the recording app's `runs.jsonl` (tests/support/apps/recording.py) as tries per run;
- reading `handler_runs`, and a `--db` URL with a password in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from support.postgres import pg_query
from support.sse import sse_frame
from support.wait import wait_until, wait_until_async

STREAM_TOKEN = "stream-token-of-the-instances"
PASSWORD = "pw-that-must-not-show"


def with_password(url: str) -> str:
    """`url` with a password in it: the local server's peer authentication ignores it; skip where one is checked."""
    base, _, query = url.partition("?")
    parts = urlsplit(base)
    user = parts.username or pg_query(url, "SELECT current_user")[0][0]
    netloc = f"{quote(user)}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    with_pw = urlunsplit(parts._replace(netloc=netloc)) + (f"?{query}" if query else "")
    try:
        pg_query(with_pw, "SELECT 1")
    except psycopg.OperationalError:
        pytest.skip("the test server checks passwords: a made-up one cannot connect")
    return with_pw


class StreamTap:
    """`GET /stream` of a real server, read in the background; every frame lands in `frames`, in order.

    >>> async with StreamTap(client, server.url, since=0) as tap:
    ...     await tap.wait_for_seq(7)
    ...     assert tap.event_seqs() == [1, 2, ..., 7]
    """

    def __init__(self, client: httpx.AsyncClient, base_url: str, *, since: int | None = None) -> None:
        query = "" if since is None else f"?since={since}"
        self.url = f"{base_url}/stream{query}"
        self.name = base_url + query
        self._client = client
        self.frames: list[dict[str, Any]] = []
        self.status: int | None = None
        self.ended: BaseException | str | None = None
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StreamTap:
        self._task = asyncio.create_task(self._read(), name=f"tap {self.name}")
        await asyncio.wait_for(self._opened.wait(), 20.0)
        assert self.status == 200, f"{self.name} answered {self.status}: {self.ended}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _read(self) -> None:
        headers = {"authorization": f"Bearer {STREAM_TOKEN}"}
        try:
            async with self._client.stream("GET", self.url, headers=headers) as response:
                self.status = response.status_code
                self._opened.set()
                buffer = b""
                async for chunk in response.aiter_bytes():
                    buffer += chunk
                    while b"\n\n" in buffer:
                        raw, buffer = buffer.split(b"\n\n", 1)
                        self.frames.append(sse_frame(raw))
                self.ended = "the server ended the stream"
        except httpx.HTTPError as e:  # kept for the assertion that reads `ended`, not raised into the event loop
            self.ended = e
        finally:
            self._opened.set()

    def events(self) -> list[tuple[int, str]]:
        """(seq, event id) of every `montra.event` frame so far, in the order they arrived."""
        return [(int(f["id"]), f["data"]["id"]) for f in self.frames if f.get("event") == "montra.event"]

    def event_seqs(self) -> list[int]:
        return [seq for seq, _ in self.events()]

    async def first_frame(self) -> dict[str, Any]:
        """The first frame that names an event (`montra.event`, `cursor` or `gap`), once it has arrived."""

        def named() -> dict[str, Any] | None:
            return next((frame for frame in self.frames if "event" in frame), None)

        found = await wait_until_async(named, timeout=20.0, what=f"a first frame from {self.name}")
        assert found is not None  # the wait returns only a truthy value
        return found

    async def wait_for_seq(self, seq: int) -> None:
        """Wait until the event frame of `seq` has arrived."""

        def arrived() -> bool:
            if self.ended is not None:
                raise AssertionError(f"{self.name} ended ({self.ended}) before seq {seq}; frames {self.frames}")
            return seq in self.event_seqs()

        await wait_until_async(arrived, timeout=20.0, what=f"seq {seq} from {self.name} (has {self.event_seqs()})")


class StalledWriter:
    """A writer stalled between its INSERT and its COMMIT, as a batch whose instance hangs there would be.

    It does what `PostgresStore._ingest_batch` does: marks itself in flight (`montra_begin_batch()`), inserts
    an event (taking its seq), and then waits: until `commit()` or `rollback()`.
    """

    def __init__(self, url: str) -> None:
        self._conn = psycopg.connect(url)  # not autocommit: the INSERT opens a transaction that stays open

    def insert(self, event_id: str, event_type: str, body: bytes) -> int:
        """Store one event in the open transaction; return its seq."""
        self._conn.execute("SELECT montra_begin_batch()")
        row = self._conn.execute(
            "INSERT INTO events (id, type, received_at, headers, body) VALUES (%s, %s, now(), %s, %s) RETURNING seq",
            (event_id, event_type, json.dumps({"webhook-id": event_id}), body),
        ).fetchone()
        assert row is not None
        seq: int = row[0]
        return seq

    def commit(self) -> None:
        self._conn.commit()

    def rollback(self) -> None:
        self._conn.rollback()

    def close(self) -> None:
        """Roll back whatever is still open, and disconnect."""
        self._conn.rollback()
        self._conn.close()


@dataclass(frozen=True)
class Try:
    """One try of a run as the recording handlers logged it; `end` is None if its process died first."""

    attempt: int
    pid: int
    start: float
    end: float | None
    outcome: str | None


class RunHistory:
    """The recording app's log as the tries of each (event, handler), in the order they started."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        opened: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.tries: dict[tuple[str, str], list[Try]] = defaultdict(list)
        for line in log:
            key = (line["event"], line["handler"], line["attempt"], line["pid"])
            if line["phase"] == "start":
                assert key not in opened, f"try {key} started twice"
                opened[key] = line
            elif line["phase"] == "end":
                start = opened.pop(key)
                run = self.tries[line["event"], line["handler"]]
                run.append(Try(line["attempt"], line["pid"], start["time"], line["time"], line["outcome"]))
        for (event, handler, attempt, pid), start in opened.items():  # never ended: its process was killed
            self.tries[event, handler].append(Try(attempt, pid, start["time"], None, None))
        for run in self.tries.values():
            run.sort(key=lambda t: t.start)

    def overlaps(self, *, killed_at: float) -> list[tuple[str, str]]:
        """Runs two of whose tries ran at once; a try that never ended ran until `killed_at`."""
        found = []
        for key, run in self.tries.items():
            for before, after in itertools.pairwise(run):
                if after.start < (before.end if before.end is not None else killed_at):
                    found.append(key)
        return found


def run_rows(url: str) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """(status, attempts, lease_owner) of every handler run, keyed by (event_id, handler)."""
    rows = pg_query(url, "SELECT event_id, handler, status, attempts, lease_owner FROM handler_runs")
    return {(event_id, handler): (status, attempts, owner) for event_id, handler, status, attempts, owner in rows}


def statuses(url: str) -> dict[str, str]:
    """The status of each event's one run, keyed by event id."""
    return {event_id: status for (event_id, _), (status, _, _) in run_rows(url).items()}


def all_succeeded(url: str, expected: int) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """Wait until `expected` runs exist and all succeeded; return them."""

    def check() -> dict[tuple[str, str], tuple[str, int, str | None]]:
        rows = run_rows(url)
        return rows if len(rows) == expected and {row[0] for row in rows.values()} == {"succeeded"} else {}

    return wait_until(check, what=f"{expected} succeeded runs")
