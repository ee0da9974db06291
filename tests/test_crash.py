"""Durability with real processes: an acknowledged event survives SIGKILL, and acknowledgements wait for fsync.

A 200 `stored` promises the event is on disk. Kill the server mid-load (no shutdown code runs), start
it again, and every acknowledged event must be there, in a database that passes integrity_check. Under
strace, the WAL is fsynced, and fewer times than events were acknowledged: commits are grouped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support.db import query
from support.server import ServerProcess

from receiver import sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SENDERS = 20
MAX_PER_SENDER = 500  # bounds every load loop, whatever happens to the server


def body_of(msg_id: str) -> bytes:
    return b'{"type": "usage.reported", "data": {"event": "%s", "quantity": 1}}' % msg_id.encode()


async def load(
    url: str,
    prefix: str,
    *,
    senders: int = SENDERS,
    total: int | None = None,
    kill_after: int | None = None,
    kill: Callable[[], None] | None = None,
) -> list[str]:
    """`senders` concurrent senders post unique events; returns the ids answered 200 `stored`.

    They stop after `total` events, or when the server goes away: `kill()` is called once `kill_after`
    events are acknowledged, while the other senders' requests are in flight.
    """
    acked: list[str] = []
    killed = False
    numbers = itertools.count()
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def sender() -> None:
            nonlocal killed
            for _ in range(MAX_PER_SENDER):
                n = next(numbers)
                if killed or (total is not None and n >= total):
                    return
                msg_id = f"{prefix}_{n}"
                body = body_of(msg_id)
                headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=msg_id)}
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.TransportError:
                    return  # the server died with this request in flight: it was never acknowledged
                assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})
                acked.append(msg_id)
                if kill is not None and len(acked) == kill_after:
                    kill()
                    killed = True

        await asyncio.gather(*(sender() for _ in range(senders)))
    return acked


@pytest.mark.timeout(120)
def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    server = ServerProcess(["--secret", SECRET, "--db", str(db)], cwd=tmp_path).start()
    all_acked: list[str] = []
    try:
        for round_ in range(3):
            url = server.url + "/webhooks"
            acked = asyncio.run(load(url, f"r{round_}", kill_after=100 + 50 * round_, kill=server.kill))
            assert not server.running
            assert len(acked) >= 100 + 50 * round_, server.output()
            print(f"round {round_}: {len(acked)} acknowledged before SIGKILL")
            all_acked += acked

            server.start()
            assert query(db, "PRAGMA integrity_check") == [("ok",)]
            stored = {event_id for (event_id,) in query(db, "SELECT id FROM events")}
            assert set(all_acked) <= stored, f"lost {len(set(all_acked) - stored)} acknowledged event(s)"
            rows = query(db, "SELECT id, body FROM events WHERE id LIKE ?", (f"r{round_}_%",))
            assert all(body == body_of(event_id) for event_id, body in rows)
        assert server.terminate() in (0, -signal.SIGTERM)
    finally:
        server.kill()
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert server.starts == 4


# `-y` prints each fd's path, `-ttt` an epoch time: the WAL's syncs during the burst can be counted.
_SYNC = re.compile(r"^\d+\s+(?P<t>\d+\.\d+)\s+(?:fsync|fdatasync)\(\d+<(?P<path>[^>]*)>\)\s+=\s+0")


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True, check=False)
    return probe.returncode == 0  # ptrace may be forbidden in a container


@pytest.mark.timeout(120)
@pytest.mark.skipif(not _strace_works(), reason="strace is missing or cannot trace here")
def test_commits_are_fsynced_and_grouped(tmp_path: Path) -> None:
    burst = 200
    trace = tmp_path / "strace.txt"
    wrapper = [
        "strace",
        "-f",
        "-qq",
        "-y",
        "-ttt",
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "signal=none",
        "-o",
        str(trace),
    ]
    server = ServerProcess(["--secret", SECRET, "--db", "events.db"], cwd=tmp_path, wrapper=wrapper)
    server.start(timeout=60)
    assert server.proc is not None
    # strace forks the server; signal the server itself, so that strace exits with it.
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    assert len(children) == 1
    traced = int(children[0])
    try:
        began = time.time()
        # Every event at once, as a burst of webhooks arrives: they meet in the group commit.
        acked = asyncio.run(load(server.url + "/webhooks", "burst", senders=burst, total=burst))
        ended = time.time()
        os.kill(traced, signal.SIGTERM)
        server.proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(traced, signal.SIGKILL)
        server.kill()

    assert len(acked) == burst
    wal = str(tmp_path / "events.db-wal")
    syncs = [float(m["t"]) for m in map(_SYNC.match, trace.read_text().splitlines()) if m and m["path"] == wal]
    during = [t for t in syncs if began <= t <= ended]
    assert during, f"no fsync of the WAL while {burst} events were acknowledged"
    assert len(during) < burst  # one per batch, not one per event
    print(f"{len(during)} WAL fsyncs for {burst} acknowledged events ({len(syncs)} in the whole run)")
    assert query(tmp_path / "events.db", "SELECT count(*) FROM events") == [(burst,)]
