"""How fast the tunnel carries events: relay, `montra-hooks listen`, local receiver, all real processes.

Two measures, each on loopback with three processes started as users start them:

- latency: a relay (`montra-hooks serve --stream-token T`) and a local receiver (`serve`), with
  `listen --forward-to` between them at the live end. Events are sent to the relay one at a time;
  for each, the time from the relay's 200 (its ack, after its fsync) to the moment the local
  receiver took it in (`received_at` in the local store, the same clock). Figures: p50 and p99.
- catch-up: a relay whose store already holds 10,000 events (written through `SQLiteStore.ingest`
  before it starts) and a listener started with `--start all` into a fresh local receiver; events
  per second from the first local receipt to the last, and from the listener's start (imports and
  connection included). Every event must arrive, in seq order, each once. Target >= 1,000 events/s.

Run `python bench/tunnel.py [--events 10000] [--latency-events 300]`; `main()` returns the figures
for `bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
from _events import event_body as _body

from receiver import sign
from receiver.stores.protocol import Incoming
from receiver.stores.sqlite.store import SQLiteStore

RELAY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOCAL_SECRET = "whsec_bG9jYWwtc2VjcmV0LWZvci10aGUtYmVuY2g="
TOKEN = "bench-stream-token"
TARGET_EVENTS_PER_S = 1000.0

_BIN = Path(sys.executable).parent / "montra-hooks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Process:
    def __init__(self, args: list[str], cwd: Path, name: str) -> None:
        self.log = (cwd / f"{name}.log").open("wb")
        self.proc = subprocess.Popen([str(_BIN), *args], cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _serve(cwd: Path, name: str, db: str, secret: str, *extra: str) -> tuple[_Process, str]:
    port = _free_port()
    process = _Process(["serve", "--port", str(port), "--db", db, "--secret", secret, *extra], cwd, name)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.proc.poll() is not None:
            process.stop()
            raise RuntimeError(f"{name} did not start: {(cwd / f'{name}.log').read_text()}")
        time.sleep(0.05)


def _listen(cwd: Path, relay: str, local: str, *extra: str) -> _Process:
    args = ["listen", "--from", relay, "--token", TOKEN, "--forward-to", local + "/webhooks"]
    return _Process([*args, "--secret", LOCAL_SECRET, "--json", "--backoff", "0.05", *extra], cwd, "listen")


def _received(db: Path) -> dict[str, float]:
    """Each event id in a local store with the Unix time it was received."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, received_at FROM events ORDER BY seq").fetchall()
    return {event_id: datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() for event_id, stamp in rows}


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _wait_for(db: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _count(db) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{db} holds {_count(db)} events after {timeout} s, not {count}")
        time.sleep(0.01)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_latency(work: Path, events: int) -> dict[str, float]:
    relay, relay_url = _serve(work, "relay", "relay.db", RELAY_SECRET, "--stream-token", TOKEN)
    local, local_url = _serve(work, "local", "local.db", LOCAL_SECRET)
    listener = _listen(work, relay_url, local_url)
    acks: dict[str, float] = {}
    try:
        with httpx.Client(timeout=10) as client:
            # It starts at the live end: wait until it is connected, then until a first event reaches the target.
            deadline = time.monotonic() + 20
            while b"connected to" not in (work / "listen.log").read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError("listen did not connect: " + (work / "listen.log").read_text())
                time.sleep(0.02)
            warmup = _body(-1)
            client.post(relay_url + "/webhooks", content=warmup, headers=sign(warmup, secret=RELAY_SECRET))
            _wait_for(work / "local.db", 1, 20)
            for i in range(events):
                body = _body(i)
                headers = {"content-type": "application/json", **sign(body, secret=RELAY_SECRET, msg_id=f"lat_{i}")}
                response = client.post(relay_url + "/webhooks", content=body, headers=headers)
                acks[f"lat_{i}"] = time.time()
                assert response.status_code == 200, response.text
                _wait_for(work / "local.db", i + 2, 20)
    finally:
        listener.stop()
        relay.stop()
        local.stop()
    received = _received(work / "local.db")
    latencies = [(received[event_id] - acked) * 1000 for event_id, acked in acks.items()]
    return {"latency_p50_ms": _percentile(latencies, 0.5), "latency_p99_ms": _percentile(latencies, 0.99)}


async def _fill(db: Path, events: int) -> None:
    store = SQLiteStore(db)
    try:
        for start in range(0, events, 1000):
            batch = [
                Incoming(
                    id=f"cu_{i:06d}",
                    type="subscription.upgraded",
                    occurred_at=None,
                    received_at=time.time(),
                    headers={"content-type": "application/json", "webhook-id": f"cu_{i:06d}"},
                    body=_body(i),
                )
                for i in range(start, min(start + 1000, events))
            ]
            await asyncio.gather(*(store.ingest(incoming) for incoming in batch))
    finally:
        await store.close()


def measure_catch_up(work: Path, events: int) -> dict[str, float]:
    asyncio.run(_fill(work / "backlog.db", events))
    relay, relay_url = _serve(work, "backlog-relay", "backlog.db", RELAY_SECRET, "--stream-token", TOKEN)
    local, local_url = _serve(work, "catch-up", "catch-up.db", LOCAL_SECRET)
    started = time.time()
    local_cpu = _cpu_seconds(local.proc.pid)
    listener = _listen(work, relay_url, local_url, "--start", "all", "--state", "catch-up-cursor.json")
    try:
        _wait_for(work / "catch-up.db", events, 600)
        # CPU per event of each process (startup included for listen): where the time goes, whatever the noise.
        cpu = {
            "catch_up_listen_cpu_ms_per_event": _cpu_seconds(listener.proc.pid) / events * 1000,
            "catch_up_local_cpu_ms_per_event": (_cpu_seconds(local.proc.pid) - local_cpu) / events * 1000,
        }
    finally:
        listener.stop()
        relay.stop()
        local.stop()
    received = _received(work / "catch-up.db")
    expected = [f"cu_{i:06d}" for i in range(events)]
    if list(received) != expected:
        raise RuntimeError("the local receiver did not get every backlog event once, in seq order")
    times = list(received.values())
    return {
        "catch_up_events": float(events),
        "catch_up_events_per_s": (events - 1) / (times[-1] - times[0]),
        "catch_up_events_per_s_with_start": events / (times[-1] - started),
        **cpu,
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Measure tunnel latency and backlog catch-up; print and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="backlog size for catch-up")
    parser.add_argument("--latency-events", type=int, default=300)
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="montra-bench-tunnel-") as tmp:
        work = Path(tmp)
        os.environ.pop("MONTRA_HOOKS_STREAM_TOKEN", None)
        figures = measure_latency(work, args.latency_events)
        figures.update(measure_catch_up(work, args.events))
    rate = figures["catch_up_events_per_s"]
    verdict = "met" if rate >= TARGET_EVENTS_PER_S else "MISSED"
    print("tunnel: relay serve -> listen -> local serve, on loopback")
    print(f"  latency, relay ack -> local receipt ({args.latency_events} events, one at a time):")
    print(f"    p50 {figures['latency_p50_ms']:6.2f} ms   p99 {figures['latency_p99_ms']:6.2f} ms")
    print(f"  catch-up of a {args.events:,}-event backlog (--start all):")
    print(f"    {rate:,.0f} events/s between first and last receipt (target >= {TARGET_EVENTS_PER_S:,.0f}: {verdict})")
    print(f"    {figures['catch_up_events_per_s_with_start']:,.0f} events/s from the listener's start")
    print(
        f"    CPU per event: listen {figures['catch_up_listen_cpu_ms_per_event']:.2f} ms, "
        f"local receiver {figures['catch_up_local_cpu_ms_per_event']:.2f} ms "
        f"(one event in flight at a time: each waits for the one before, fsync included)"
    )
    print(f"    load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
