"""How fast `montra-hooks serve` hands stored events to handlers, and what dispatch costs ingest.

Three measurements, each on real `montra-hooks serve --app MOD:hooks` processes (uvicorn, one
worker, access log off, exactly as users run it), with handler modules written into a temporary
folder:

1. Latency: events sent one at a time over one keep-alive connection; a handler writes the time it
   starts. Reported: handler start minus the moment the client had its 200 (ack-to-handler-start), p50
   and p99. Negative means the handler started before the answer reached the client; the order is
   still store, commit, answer, then dispatch.
2. Throughput: N events stored with pending runs of a no-op handler (through `SQLiteStore.ingest`),
   then a server started on that file resumes them all at once (crash recovery): runs per second,
   from the moment 10% had succeeded to the moment 90% had.
3. Ingest cost: wrk (bench/ingest.lua, each request a distinct signed event) against `serve` with no
   handlers (n) and `serve --app` with a no-op handler on the event type (h), in alternating rounds;
   the figure is the median req/s of (h) over that of (n). Target: >= 0.8. After the last round,
   the server-side receipt-to-handler-start latency under that load (p50/p99, from the stored
   `received_at` and `started_at`) and how long the backlog took to drain are reported too.

4. Ordering cost: the same N events about R subscriptions (2,000 over 50 by default), stored with
   pending runs of a no-op handler, resumed by a server whose handler is `ordered_by="subscription"`
   and by one whose handler is not, in alternating rounds: runs per second (10% to 90%) of each, and
   the median ordered/unordered ratio, with the server's CPU per run (steadier on a shared machine).
   One subscription's runs go one at a time, so at most R of the `concurrency` slots can be busy; the
   ratio is what the per-resource checks of the claim (and the release at each finish) cost.

Run `python bench/dispatch.py [--rounds 3] [--seconds 5] [--events 300] [--runs 10000]
[--ordered-events 2000] [--resources 50]`; `main()` returns the figures for `bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
for _folder in (str(HERE), str(HERE.parent)):  # runnable alone, as bench/run.py runs it
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from _events import event_body as _body  # noqa: E402
from ingest import SECRET, ensure_wrk, write_events  # noqa: E402
from metrics import _cpu_seconds  # noqa: E402

from receiver import sign  # noqa: E402
from receiver.stores.protocol import Incoming  # noqa: E402
from receiver.stores.sqlite.store import SQLiteStore  # noqa: E402

TARGET_RATIO = 0.8
EVENT_TYPE = "subscription.upgraded"  # the type of bench/ingest.py's events

NOOP_HANDLERS = f'''
from receiver import Event, Hooks

hooks = Hooks()


@hooks.on("{EVENT_TYPE}", name="noop")
async def noop(event: Event) -> None:
    pass
'''

TIMED_HANDLERS = f'''
import time
from pathlib import Path

from receiver import Event, Hooks

hooks = Hooks()
_starts = (Path(__file__).parent / "starts.txt").open("a", buffering=1)


@hooks.on("{EVENT_TYPE}", name="timed")
async def timed(event: Event) -> None:
    _starts.write(f"{{event.id}} {{time.time()}}\\n")
'''


ORDERED_HANDLERS = f'''
from receiver import Event, Hooks

hooks = Hooks()


@hooks.on("{EVENT_TYPE}", name="noop", ordered_by="subscription")
async def noop(event: Event) -> None:
    pass
'''


_RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)


class _Server:
    """One `montra-hooks serve` process on a free loopback port, its output in the work folder."""

    def __init__(self, name: str, command: list[str], workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/webhooks"
        self.log = workdir / f"{name}.log"
        command = [part.replace("{port}", str(self.port)) for part in command]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _wrk(wrk: str | None, url: str, prefix: Path, connections: int, seconds: int) -> dict[str, int]:
    """One load run with bench/ingest.lua (or bench/_loadgen.py without wrk): its RESULT line's figures."""
    if wrk:
        command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(HERE / "ingest.lua")]
        command += [url, "--", str(prefix)]
    else:
        command = [sys.executable, str(HERE / "_loadgen.py"), url, str(prefix), "1", str(connections), str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"the load generator failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}


def _serve_command(*options: str) -> list[str]:
    script = Path(sys.executable).with_name("montra-hooks")
    base = [str(script)] if script.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]
    return [*base, "serve", "--secret", SECRET, "--port", "{port}", *options]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def measure_latency(workdir: Path, events: int) -> dict[str, float]:
    """Ack-to-handler-start, in ms, for events sent one at a time."""
    (workdir / "timed_handlers.py").write_text(TIMED_HANDLERS)
    db = workdir / "latency.db"
    server = _Server("latency", _serve_command("--app", "timed_handlers:hooks", "--db", str(db)), workdir)
    acks: dict[str, float] = {}
    try:
        with httpx.Client(timeout=10.0) as client:
            for n in range(events + 20):
                body = _body(n)
                headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=f"msg_lat_{n:06d}")}
                response = client.post(server.url, content=body, headers=headers)
                if n >= 20:  # the first ones warm the server up
                    acks[headers["webhook-id"]] = time.time()
                response.raise_for_status()
                time.sleep(0.005)  # one at a time: the dispatcher is idle when each one arrives
        starts_file = workdir / "starts.txt"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            starts = dict(line.split() for line in starts_file.read_text().splitlines() if line)
            if all(msg_id in starts for msg_id in acks):
                break
            time.sleep(0.05)
    finally:
        server.stop()
    delays = [(float(starts[msg_id]) - ack) * 1000 for msg_id, ack in acks.items() if msg_id in starts]
    return {
        "latency_p50_ms": statistics.median(delays),
        "latency_p99_ms": _percentile(delays, 99),
        "latency_lost": float(len(acks) - len(delays)),
    }


async def _store_pending(db: Path, count: int) -> None:
    store = SQLiteStore(db)
    try:
        for first in range(0, count, 1000):  # concurrent ingests share commits (group commit)
            batch = [
                Incoming(f"msg_run_{n:07d}", EVENT_TYPE, None, time.time(), {}, _body(n), ["noop"])
                for n in range(first, min(first + 1000, count))
            ]
            await asyncio.gather(*(store.ingest(incoming) for incoming in batch))
    finally:
        await store.close()


def _pending(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count: int = conn.execute("SELECT count(*) FROM handler_runs WHERE status != 'succeeded'").fetchone()[0]
    return count


def _succeeded(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count: int = conn.execute("SELECT count(*) FROM handler_runs WHERE status = 'succeeded'").fetchone()[0]
    return count


def measure_throughput(workdir: Path, count: int) -> dict[str, float]:
    """No-op handler runs per second, as a starting server resumes `count` pending runs."""
    (workdir / "noop_handlers.py").write_text(NOOP_HANDLERS)
    db = workdir / "throughput.db"
    asyncio.run(_store_pending(db, count))
    server = _Server("throughput", _serve_command("--app", "noop_handlers:hooks", "--db", str(db)), workdir)
    samples: list[tuple[float, int]] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), _succeeded(db)))
            if samples[-1][1] >= count:
                break
            time.sleep(0.02)
    finally:
        server.stop()
    low = next(t for t, done in samples if done >= count * 0.1)
    high = next(t for t, done in samples if done >= count * 0.9)
    # A poll apart at least: a small count can pass both marks between two samples.
    return {"runs_per_s": count * 0.8 / max(high - low, 0.02)}


async def _store_about(db: Path, count: int, resources: int, *, ordered: bool) -> None:
    """`count` events about `resources` subscriptions, occurred in arrival order, each with a pending `noop` run."""
    store = SQLiteStore(db)
    start = time.time() - count
    try:
        for first in range(0, count, 1000):
            batch = []
            for n in range(first, min(first + 1000, count)):
                ref = f"sub_bench_{n % resources:04d}"
                batch.append(
                    Incoming(
                        f"msg_ord_{n:07d}",
                        EVENT_TYPE,
                        None,
                        time.time(),
                        {},
                        _body(n),
                        ["noop"],
                        refs=[("subscription", ref)],
                        ordering={"noop": (ref, False)} if ordered else {},
                        order_at=start + n,
                    )
                )
            await asyncio.gather(*(store.ingest(incoming) for incoming in batch))
    finally:
        await store.close()


def _resume_rate(workdir: Path, name: str, module: str, db: Path, count: int) -> tuple[float, float | None]:
    """Runs per second (10% to 90% succeeded) of a server started on `db`, which holds `count` pending runs, and
    the server's CPU microseconds per run over that window (None without /proc): steadier on a shared machine."""
    server = _Server(name, _serve_command("--app", f"{module}:hooks", "--db", str(db)), workdir)
    samples: list[tuple[float, int, float | None]] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            samples.append((time.monotonic(), _succeeded(db), _cpu_seconds(server.process.pid)))
            if samples[-1][1] >= count:
                break
            time.sleep(0.02)
    finally:
        server.stop()
    if samples[-1][1] < count:
        raise RuntimeError(f"{name}: only {samples[-1][1]} of {count} runs succeeded in 300 s")
    low = next(sample for sample in samples if sample[1] >= count * 0.1)
    high = next(sample for sample in samples if sample[1] >= count * 0.9)
    done = max(high[1] - low[1], 1)
    cpu = None if low[2] is None or high[2] is None else (high[2] - low[2]) / done * 1e6
    return done / max(high[0] - low[0], 0.02), cpu


def measure_ordering(workdir: Path, count: int, resources: int, rounds: int) -> dict[str, float]:
    """Ordered against unordered dispatch of the same events, resumed from a store, in alternating rounds."""
    (workdir / "noop_handlers.py").write_text(NOOP_HANDLERS)
    (workdir / "ordered_handlers.py").write_text(ORDERED_HANDLERS)
    rates: dict[str, list[float]] = {"unordered": [], "ordered": []}
    cpu: dict[str, list[float]] = {"unordered": [], "ordered": []}
    print(f"  {'round':>5} {'unordered/s':>12} {'ordered/s':>10} {'o/u':>6} {'CPU/run u':>10} {'o':>8}", flush=True)
    for n in range(1, rounds + 1):
        for kind, module in (("unordered", "noop_handlers"), ("ordered", "ordered_handlers")):
            db = workdir / f"{kind}-{n}.db"
            asyncio.run(_store_about(db, count, resources, ordered=kind == "ordered"))
            rate, cpu_us = _resume_rate(workdir, f"{kind}-{n}", module, db, count)
            rates[kind].append(rate)
            if cpu_us is not None:
                cpu[kind].append(cpu_us)
        line = f"  {n:>5} {rates['unordered'][-1]:>12,.0f} {rates['ordered'][-1]:>10,.0f} "
        line += f"{rates['ordered'][-1] / rates['unordered'][-1]:>6.2f}"
        if len(cpu["ordered"]) == n and len(cpu["unordered"]) == n:
            line += f" {cpu['unordered'][-1]:>7,.0f} µs {cpu['ordered'][-1]:>5,.0f} µs"
        print(line, flush=True)
    figures = {
        "unordered_runs_per_s": statistics.median(rates["unordered"]),
        "ordered_runs_per_s": statistics.median(rates["ordered"]),
    }
    figures["ratio_ordered_over_unordered"] = statistics.median(
        o / u for o, u in zip(rates["ordered"], rates["unordered"], strict=True)
    )
    if len(cpu["ordered"]) == rounds and len(cpu["unordered"]) == rounds:
        figures["unordered_cpu_us_per_run"] = statistics.median(cpu["unordered"])
        figures["ordered_cpu_us_per_run"] = statistics.median(cpu["ordered"])
        figures["cpu_ratio_ordered_over_unordered"] = statistics.median(
            o / u for o, u in zip(cpu["ordered"], cpu["unordered"], strict=True)
        )
    return figures


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp + "+0000", "%Y-%m-%dT%H:%M:%S.%fZ%z").timestamp()


def measure_ingest_cost(workdir: Path, rounds: int, seconds: int, connections: int) -> dict[str, float]:
    """Median req/s of serve with a no-op handler over serve with none, wrk in alternating rounds."""
    (workdir / "noop_handlers.py").write_text(NOOP_HANDLERS)
    wrk = ensure_wrk()
    servers = {
        "n": _Server("n", _serve_command("--db", str(workdir / "n.db")), workdir),
        "h": _Server("h", _serve_command("--app", "noop_handlers:hooks", "--db", str(workdir / "h.db")), workdir),
    }
    rates: dict[str, list[float]] = {"n": [], "h": []}
    errors: list[str] = []
    runs = 0

    def run(key: str, length: int) -> float:
        nonlocal runs
        runs += 1
        prefix = workdir / f"events-{runs}"
        count = 15_000 * length  # more than either server takes in: no event is sent twice
        write_events(prefix, count, 1, f"r{runs}")
        result = _wrk(wrk, servers[key].url, prefix, connections, length)
        Path(f"{prefix}.1").unlink()
        if result["wrapped"] or result["non2xx"] or result["timeout"]:
            errors.append(f"({key}) run {runs}: {result}")
        return result["requests"] / (result["duration_us"] / 1e6)

    try:
        for key in servers:
            run(key, 2)  # warm-up
        print(f"  {'round':>5} {'(n) req/s':>10} {'(h) req/s':>10} {'h/n':>6}", flush=True)
        for n in range(1, rounds + 1):
            for key in servers:
                rates[key].append(run(key, seconds))
            print(f"  {n:>5} {rates['n'][-1]:>10,.0f} {rates['h'][-1]:>10,.0f} {rates['h'][-1] / rates['n'][-1]:>6.2f}")
        load_ended = time.monotonic()
        h_db = workdir / "h.db"
        while _pending(h_db) and time.monotonic() - load_ended < 120:
            time.sleep(0.05)
        drained = time.monotonic() - load_ended
    finally:
        for server in servers.values():
            server.stop()
    with sqlite3.connect(f"file:{h_db}?mode=ro", uri=True) as conn:
        pairs = conn.execute(
            "SELECT e.received_at, r.started_at FROM handler_runs r JOIN events e ON e.id = r.event_id "
            "WHERE r.status = 'succeeded'"
        ).fetchall()
    under_load = [(_seconds(started) - _seconds(received)) * 1000 for received, started in pairs]
    for error in errors:
        print(f"  WARNING {error}")
    figures = {
        "ingest_no_handlers_rps": statistics.median(rates["n"]),
        "ingest_noop_handler_rps": statistics.median(rates["h"]),
        "loaded_start_p50_ms": statistics.median(under_load),
        "loaded_start_p99_ms": _percentile(under_load, 99),
        "drain_after_load_s": drained,
        "problems": float(len(errors)),
    }
    figures["ratio_h_over_n"] = figures["ingest_noop_handler_rps"] / figures["ingest_no_handlers_rps"]
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the three measurements; print them and return the figures."""
    parser = argparse.ArgumentParser(prog="bench/dispatch.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the ingest comparison")
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=300, help="events sent one at a time for latency")
    parser.add_argument("--runs", type=int, default=10_000, help="pending runs for the throughput figure")
    parser.add_argument("--ordered-events", type=int, default=2000, help="events for the ordering comparison")
    parser.add_argument("--resources", type=int, default=50, help="subscriptions those events are about")
    parser.add_argument("--only-ordering", action="store_true", help="run the ordering comparison alone")
    args = parser.parse_args(argv or [])

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="montra-bench-dispatch-") as tmp:
        workdir = Path(tmp)
        print(
            f"dispatch: ordering cost, {args.ordered_events:,} events over {args.resources} subscriptions, "
            f"{args.rounds} alternating rounds",
            flush=True,
        )
        figures |= measure_ordering(workdir, args.ordered_events, args.resources, args.rounds)
        print(
            f"  median: unordered {figures['unordered_runs_per_s']:,.0f} runs/s, "
            f"ordered {figures['ordered_runs_per_s']:,.0f} runs/s, "
            f"ordered/unordered = {figures['ratio_ordered_over_unordered']:.2f}"
        )
        if "cpu_ratio_ordered_over_unordered" in figures:
            print(
                f"  server CPU per run: unordered {figures['unordered_cpu_us_per_run']:,.0f} µs, "
                f"ordered {figures['ordered_cpu_us_per_run']:,.0f} µs, "
                f"ordered/unordered = {figures['cpu_ratio_ordered_over_unordered']:.2f} (steadier on a busy machine)"
            )
        if args.only_ordering:
            return figures
        print(f"dispatch: latency over {args.events} events sent one at a time", flush=True)
        figures |= measure_latency(workdir, args.events)
        print(
            f"  ack-to-handler-start  p50 {figures['latency_p50_ms']:.2f} ms   p99 {figures['latency_p99_ms']:.2f} ms"
        )
        print(f"dispatch: throughput, a server resuming {args.runs:,} pending runs of a no-op handler", flush=True)
        figures |= measure_throughput(workdir, args.runs)
        print(f"  {figures['runs_per_s']:,.0f} runs/s")
        print(f"dispatch: ingest cost, {args.rounds} alternating rounds of {args.seconds} s", flush=True)
        figures |= measure_ingest_cost(workdir, args.rounds, args.seconds, args.connections)
    ratio = figures["ratio_h_over_n"]
    print(
        f"  median: (n) no handlers {figures['ingest_no_handlers_rps']:,.0f} req/s, "
        f"(h) no-op handler {figures['ingest_noop_handler_rps']:,.0f} req/s"
    )
    print(f"  (h)/(n) = {ratio:.2f} (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})")
    print(
        f"  under that load: receipt-to-handler-start p50 {figures['loaded_start_p50_ms']:.1f} ms, "
        f"p99 {figures['loaded_start_p99_ms']:.1f} ms; backlog drained {figures['drain_after_load_s']:.1f} s after"
    )
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
