"""How fast `montra-hooks replay` sends stored events, and how much memory it needs, against a plain httpx loop.

Both contenders send to one bare local endpoint (`bench/_baselines.py bare`: a Starlette route that
reads the body and answers a small JSON, under uvicorn in its own process), started once:

- ours: replay's own path, as the command runs it: rows streamed from a SQLite store
  (`stored_events`, a page at a time), `pump` with N workers, `HttpTarget.send` (a new webhook-id, a
  fresh signature through `receiver.sign`, the answer read as JSON), every result added to a `Summary`;
- baseline: a plain httpx loop: N workers on one `httpx.AsyncClient` posting the same bodies from a
  list in memory, each signed with `receiver.sign` just before it goes (a receiver needs a fresh
  signature), reading only the status code.

Same N, same bodies, alternating rounds, medians. Target: ours / baseline >= 0.9.

Memory: peak RSS (ru_maxrss) of a `montra-hooks replay --db DB --to URL` process replaying 10,000
and then 100,000 stored events to the same endpoint. Target: flat (the 100k run within 10% of the 10k
run) and under 150 MB.

Run `python bench/replay_perf.py [--rounds 5] [--events 4000] [--concurrency 16] [--memory-events 100000]`;
`main()` returns the figures for `bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _events import event_body as _body

from receiver import sign
from receiver.stores.protocol import EventFilter, iso
from receiver.stores.sqlite.store import SQLiteStore
from replay.report import Summary
from replay.send import HttpTarget, pump
from replay.sources import snapshot, stored_events

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TARGET_RATIO = 0.9
TARGET_PEAK_MB = 150.0
TARGET_GROWTH = 1.10

_HERE = Path(__file__).resolve().parent
_INSERT = "INSERT INTO events (id, type, occurred_at, received_at, headers, body) VALUES (?, ?, ?, ?, ?, ?)"
# Runs the real command in a child process and reports that process's own peak RSS in KiB. VmHWM, not
# ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and exec, so a child started by
# a big parent (bench/run.py after the ingest bench) would report the parent's figure.
_MEASURED_REPLAY = """
import resource, sys
from replay.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="montra-hooks", standalone_mode=False)
finally:
    try:
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("PEAK_KB", peak, file=sys.stderr)
"""


def write_store(path: Path, count: int) -> None:
    """`count` events in a store of the real schema, written in one transaction (not through HTTP: quicker)."""
    SQLiteStore(path)  # creates and migrates the file
    now = time.time()
    with sqlite3.connect(path) as conn:
        rows = []
        for n in range(count):
            body = _body(n)
            headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=f"msg_{n}")}
            rows.append((f"msg_{n}", "subscription.upgraded", None, iso(now), json.dumps(headers), body))
            if len(rows) == 5000:
                conn.executemany(_INSERT, rows)
                rows.clear()
        conn.executemany(_INSERT, rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_bare(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (workdir / "bare.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(_HERE / "_baselines.py"), "bare", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/webhooks"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.post(url, content=b"{}", timeout=1)
            return process, url
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"the bare endpoint did not start: see {workdir / 'bare.log'}") from None
            time.sleep(0.05)


async def ours(db: Path, url: str, concurrency: int) -> float:
    """Events per second through replay's own path, store to answer."""
    store = SQLiteStore(db)
    summary = Summary()
    try:
        selection = await snapshot(store, EventFilter())
        started = time.perf_counter()
        async with HttpTarget(url, secret=SECRET, connections=concurrency) as target:
            await pump(stored_events(store, selection), target.send, on_result=summary.add, concurrency=concurrency)
        elapsed = time.perf_counter() - started
    finally:
        await store.close()
    if summary.failed:
        raise RuntimeError(f"ours: {summary.failed} of {summary.total} events were not accepted")
    return summary.total / elapsed


async def baseline(bodies: list[bytes], url: str, concurrency: int) -> float:
    """Events per second of the plainest loop that can replay: sign, post, check the status."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    pending = iter(enumerate(bodies))
    failed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failed
        for n, body in pending:
            headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=f"msg_{n}_r0")}
            response = await client.post(url, content=body, headers=headers)
            failed += not response.is_success

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"baseline: {failed} events were not accepted")
    return len(bodies) / elapsed


def peak_mb(db: Path, url: str, concurrency: int) -> float:
    """The peak RSS of one `montra-hooks replay` process over the whole store, in MB."""
    command = [sys.executable, "-c", _MEASURED_REPLAY, "replay", "--db", str(db), "--to", url, "--secret", SECRET]
    done = subprocess.run(
        [*command, "--concurrency", str(concurrency)], capture_output=True, text=True, check=False, cwd=db.parent
    )
    if "All " not in done.stdout:
        raise RuntimeError(f"the replay did not deliver everything:\n{done.stdout}\n{done.stderr}")
    kib = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_KB"))
    return kib / 1024


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Time both contenders in alternating rounds, then measure replay's peak memory at 10k and 100k events."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--memory-events", type=int, default=100_000)
    args = parser.parse_args(argv if argv is not None else [])
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="montra-bench-replay-") as tmp:
        workdir = Path(tmp)
        bare, url = start_bare(workdir)
        try:
            throughput = workdir / "throughput.db"
            write_store(throughput, args.events)
            bodies = [_body(n) for n in range(args.events)]
            rates: dict[str, list[float]] = {"ours": [], "baseline": []}
            asyncio.run(ours(throughput, url, args.concurrency))  # warm-up: imports, connections, caches
            for _ in range(args.rounds):
                rates["ours"].append(asyncio.run(ours(throughput, url, args.concurrency)))
                rates["baseline"].append(asyncio.run(baseline(bodies, url, args.concurrency)))
            figures["ours_events_per_s"] = statistics.median(rates["ours"])
            figures["baseline_events_per_s"] = statistics.median(rates["baseline"])
            figures["ratio_ours_over_baseline"] = figures["ours_events_per_s"] / figures["baseline_events_per_s"]

            small = max(1, args.memory_events // 10)
            for count, key in ((small, "peak_mb_small"), (args.memory_events, "peak_mb_large")):
                db = workdir / f"memory-{count}.db"
                write_store(db, count)
                figures[key] = peak_mb(db, url, args.concurrency)
                db.unlink()
            figures["peak_growth"] = figures["peak_mb_large"] / figures["peak_mb_small"]
        finally:
            bare.kill()
            bare.wait()

    ratio, growth, peak = figures["ratio_ours_over_baseline"], figures["peak_growth"], figures["peak_mb_large"]
    print(
        f"replay {args.events:,} stored events to a bare local endpoint, {args.concurrency} in flight, "
        f"median of {args.rounds} alternating rounds"
    )
    print(f"  ours      montra-hooks replay (store, re-sign, summary)  {figures['ours_events_per_s']:8.0f} events/s")
    print(
        f"  baseline  plain httpx loop (sign, post)                  {figures['baseline_events_per_s']:8.0f} events/s"
    )
    print(
        f"  ours / baseline = {ratio:.2f}x (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})"
    )
    print(f"peak RSS of `montra-hooks replay`: {figures['peak_mb_small']:.1f} MB for {small:,} events, ", end="")
    print(f"{peak:.1f} MB for {args.memory_events:,}")
    flat = growth <= TARGET_GROWTH and peak < TARGET_PEAK_MB
    print(
        f"  growth {growth:.2f}x (target <= {TARGET_GROWTH}), peak {peak:.1f} MB (target < {TARGET_PEAK_MB:.0f}): "
        f"{'met' if flat else 'MISSED'}"
    )
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
