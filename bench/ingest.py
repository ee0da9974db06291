"""How many webhooks a second `montra-hooks serve` takes in, durably, against two baselines.

Three servers, each its own uvicorn process on a free loopback port (one worker, access log off,
the loop and HTTP implementation uvicorn picks by itself, exactly as `serve` runs), started once
and kept running through every round:

- (a) bare: a Starlette route that only reads the body: the most a Python ASGI endpoint does here;
- (b) naive: a plain Starlette receiver, same `Verifier`, same schema, but one COMMIT (one fsync)
  per request (`bench/_baselines.py`);
- (c) `montra-hooks serve --secret S --db <tmp>`, no handlers: the receiver as users run it.

One load generator for all three: wrk (Debian's package, installed when missing) with
`bench/ingest.lua`, every request a distinct event signed with `receiver.sign` just before its run
(fresh timestamps, unique `webhook-id`s, enough of them for the whole run: a run that runs out is
done again with more, so neither (b) nor (c) ever measures duplicates). Rounds alternate a, b, c, a, b, c... so
machine noise falls on all three alike; the figures are medians over rounds. After each (b) and (c)
run the rows in its database are counted against the 2xx answers: a receiver that acknowledged an
event it did not store would fail the benchmark.

`--against TREE` adds (d): `serve` from another checkout of montra-webhooks (run with this checkout's
.venv, by PYTHONPATH), in the same alternation, so a change's cost is its (c)/(a) against (d)/(a)
measured in one run; the median of the rounds' differences is printed too.

Run `python bench/ingest.py [--rounds 5] [--seconds 5] [--connections 64] [--threads 1]
[--naive inline|thread] [--load wrk|python] [--against TREE]`; `main()` returns the figures for
`bench/run.py`. Targets: (c)/(a) >= 0.5 and (c)/(b) >= 3.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _events import event_body as _body

from receiver import sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TARGET_OVER_BARE = 0.5
TARGET_OVER_NAIVE = 3.0
CONTENDERS = {"a": "bare Starlette", "b": "naive receiver", "c": "montra-hooks serve"}

_HERE = Path(__file__).resolve().parent
_RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)


def ensure_tool(command: str) -> str | None:
    """The path of `command`, installing Debian's package of that name when missing; None when it cannot be had."""
    found = shutil.which(command)
    if found or not shutil.which("apt-get"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        return None
    print(f"{command} not found: installing Debian's package (apt-get install -y {command})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", command]
    done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        print("  that failed; updating the package lists first (apt-get update), then again", flush=True)
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(f"  apt-get could not install {command}:\n{done.stderr.strip()}", flush=True)
    return shutil.which(command)


def ensure_wrk() -> str | None:
    return ensure_tool("wrk")


def load_generator(load: str, connections: int, threads: int = 1) -> tuple[str | None, str]:
    """wrk's path (None: bench/_loadgen.py drives the load) and how the load is made, in words.

    `load` is the benchmarks' `--load`: `wrk`, which falls back to the Python generator when wrk cannot be
    had (and says so), or `python`.
    """
    wrk = ensure_wrk() if load == "wrk" else None
    if not wrk and load == "wrk":
        print("wrk cannot be had here: falling back to bench/_loadgen.py (a Python load generator, slower than wrk)")
    return wrk, f"wrk -t{threads} -c{connections}" if wrk else f"bench/_loadgen.py, {connections} connections"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def settle(rows: Callable[[], int]) -> int:
    """Wait until the row count stops growing (requests in flight when the load stopped); return it."""
    last = rows()
    while True:
        time.sleep(0.25)
        now = rows()
        if now == last:
            return now
        last = now


class _Server:
    """One contender's uvicorn process, its log in the run's temporary folder."""

    def __init__(
        self, key: str, command: list[str], workdir: Path, db: Path | None, env: dict[str, str] | None = None
    ) -> None:
        self.key, self.db, self.port = key, db, free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks"
        self.log = workdir / f"{key}.log"
        with self.log.open("wb") as log:
            command = [part.replace("{port}", str(self.port)) for part in command]
            self.process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"({key}) exited at start:\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"({key}) did not listen on port {self.port} within 30 s:\n{self.log.read_text()[-2000:]}")

    def rows(self) -> int:
        """Events in this server's database (0 for the bare app, which stores nothing)."""
        if self.db is None:
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            count: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return count

    def settle(self) -> int:
        """Wait until requests still in flight when the load stopped are answered; return the row count."""
        return settle(self.rows)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_events(prefix: Path, count: int, threads: int, tag: str) -> None:
    """`count` signed events with unique ids, dealt round-robin into `prefix.1` .. `prefix.<threads>`."""
    files = [open(f"{prefix}.{i}", "w", encoding="utf-8") for i in range(1, threads + 1)]  # noqa: SIM115
    try:
        for n in range(count):
            body = _body(n)
            headers = sign(body, secret=SECRET, msg_id=f"msg_{tag}_{n:09d}")  # timestamp: now
            line = f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t{headers['webhook-signature']}\t"
            files[n % threads].write(line + body.decode() + "\n")
    finally:
        for file in files:
            file.close()


def _load(wrk: str | None, url: str, prefix: Path, threads: int, connections: int, seconds: int) -> dict[str, int]:
    if wrk:
        script = _HERE / "ingest.lua"
        command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
        command += [url, "--", str(prefix)]
    else:
        command = [sys.executable, str(_HERE / "_loadgen.py"), url, str(prefix), str(threads), str(connections)]
        command.append(str(seconds))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"the load generator failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {key: int(value) for key, value in (pair.split("=") for pair in match.group(1).split())}


class _Runner:
    """Runs one contender's load and checks what it stored; sizes each run's events from rates seen."""

    def __init__(self, wrk: str | None, workdir: Path, threads: int, connections: int) -> None:
        self.wrk, self.workdir, self.threads, self.connections = wrk, workdir, threads, connections
        self.best_rate: dict[str, float] = {}
        self.runs = 0
        self.warnings: list[str] = []
        self.lost: list[str] = []

    def run(self, server: _Server, seconds: int) -> dict[str, float]:
        # Until a contender's rate is known, assume a generous one; a run that runs out is done again.
        count = math.ceil(self.best_rate.get(server.key, 12_000) * seconds * 1.5) + 2_000
        while True:
            self.runs += 1
            prefix = self.workdir / f"events-{self.runs}"
            write_events(prefix, count, self.threads, f"r{self.runs}")
            before = server.settle()
            result = _load(self.wrk, server.url, prefix, self.threads, self.connections, seconds)
            for index in range(1, self.threads + 1):
                Path(f"{prefix}.{index}").unlink()
            if not result["wrapped"]:
                break
            count *= 2  # the events ran out, so some were sent twice: this run does not count
        stored = server.settle() - before
        ok = result["requests"] - result["non2xx"]
        rate = result["requests"] / (result["duration_us"] / 1e6)
        self.best_rate[server.key] = max(rate, self.best_rate.get(server.key, 0.0))
        errors = {k: result[k] for k in ("non2xx", "connect", "read", "write", "timeout") if result[k]}
        if errors:
            self.warnings.append(f"({server.key}) errors: {errors}")
        # Requests in flight when the load stopped may be stored without their answer being counted.
        if server.db is not None and not ok <= stored <= ok + self.connections:
            self.lost.append(f"({server.key}) stored {stored} events for {ok} 2xx answers")
        return {"rps": rate, "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000, "ok": ok}


def _servers(workdir: Path, naive: str, against: Path | None) -> dict[str, _Server]:
    baselines = str(_HERE / "_baselines.py")
    serve = Path(sys.executable).with_name("montra-hooks")
    serve_command = [str(serve)] if serve.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]

    def serving(key: str) -> list[str]:
        return [*serve_command, "serve", "--secret", SECRET, "--db", str(workdir / f"{key}.db"), "--port", "{port}"]

    commands: dict[str, tuple[list[str], Path | None, dict[str, str] | None]] = {
        "a": ([sys.executable, baselines, "bare", "{port}"], None, None),
        "b": (
            [sys.executable, baselines, "naive", "{port}", str(workdir / "b.db"), SECRET, naive],
            workdir / "b.db",
            None,
        ),
        "c": (serving("c"), workdir / "c.db", None),
    }
    if against is not None:  # the other checkout's receiver and replay packages come first on the path
        commands["d"] = (serving("d"), workdir / "d.db", {**os.environ, "PYTHONPATH": str(against)})
    servers: dict[str, _Server] = {}
    try:
        for key, (command, db, env) in commands.items():
            servers[key] = _Server(key, command, workdir, db, env)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _implementation() -> str:
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {http}/{loop}, 1 worker, access log off"


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the alternating rounds; print the table and return the medians and ratios."""
    parser = argparse.ArgumentParser(prog="bench/ingest.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load per contender before round 1")
    parser.add_argument("--connections", type=int, default=64)
    # One wrk thread drives ~50k req/s, far beyond these servers; on 2 cores a second would take CPU from them.
    parser.add_argument("--threads", type=int, default=1, help="load generator threads")
    parser.add_argument("--naive", choices=["inline", "thread"], default="inline", help="how (b) commits")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk", help="python: bench/_loadgen.py")
    parser.add_argument("--against", type=Path, help="(d): serve from this other checkout, in the same rounds")
    args = parser.parse_args(argv or [])
    contenders = dict(CONTENDERS)
    if args.against is not None:
        args.against = args.against.resolve()
        if not (args.against / "receiver" / "__init__.py").exists():
            parser.error(f"--against {args.against}: not a checkout of montra-webhooks (no receiver/ package)")
        contenders["d"] = f"serve from {args.against.name}"

    wrk, tool = load_generator(args.load, args.connections, args.threads)
    print(f"ingest: {tool}, {args.rounds} alternating rounds of {args.seconds} s after a {args.warmup} s warm-up")
    print(f"  servers: {_implementation()}; started once, kept running through all rounds", flush=True)
    print(
        f"  (b) commits {args.naive}; load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )

    samples: dict[str, list[dict[str, float]]] = {key: [] for key in contenders}
    with tempfile.TemporaryDirectory(prefix="montra-bench-") as tmp:
        workdir = Path(tmp)
        servers = _servers(workdir, args.naive, args.against)
        try:
            runner = _Runner(wrk, workdir, args.threads, args.connections)
            for server in servers.values():
                runner.run(server, args.warmup)
            runner.warnings.clear()  # the warm-up's figures and warnings are not the benchmark
            extra = f" {'(d) req/s':>10} {'d/a':>6}" if "d" in servers else ""
            print(f"  {'round':>5} {'(a) req/s':>10} {'(b) req/s':>10} {'(c) req/s':>10} {'c/a':>6} {'c/b':>6}{extra}")
            for n in range(1, args.rounds + 1):
                for key, server in servers.items():
                    samples[key].append(runner.run(server, args.seconds))
                a, b, c = (samples[key][-1]["rps"] for key in CONTENDERS)
                line = f"  {n:>5} {a:>10,.0f} {b:>10,.0f} {c:>10,.0f} {c / a:>6.2f} {c / b:>6.2f}"
                if "d" in servers:
                    d = samples["d"][-1]["rps"]
                    line += f" {d:>10,.0f} {d / a:>6.2f}"
                print(line, flush=True)
            stored_c = servers["c"].settle()
        finally:
            for server in servers.values():
                server.stop()

    figures: dict[str, float] = {}
    for key in contenders:
        for name in ("rps", "p50_ms", "p99_ms"):
            figures[f"{key}_{name}"] = statistics.median(s[name] for s in samples[key])
    figures["ratio_c_over_a"] = figures["c_rps"] / figures["a_rps"]
    figures["ratio_c_over_b"] = figures["c_rps"] / figures["b_rps"]
    if "d" in contenders:
        figures["ratio_d_over_a"] = figures["d_rps"] / figures["a_rps"]
        # Each round's (c)/(a) - (d)/(a): the two ran back to back, so most of the machine's noise cancels.
        rounds = zip(samples["a"], samples["c"], samples["d"], strict=True)
        figures["round_difference_c_minus_d"] = statistics.median(
            (c["rps"] - d["rps"]) / a["rps"] for a, c, d in rounds
        )

    print(f"  median of {args.rounds} rounds:")
    for key, label in contenders.items():
        rps, p50, p99 = (figures[f"{key}_{name}"] for name in ("rps", "p50_ms", "p99_ms"))
        print(f"    ({key}) {label:<20} {rps:>8,.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    for name, target, label in (
        ("ratio_c_over_a", TARGET_OVER_BARE, "(c)/(a)"),
        ("ratio_c_over_b", TARGET_OVER_NAIVE, "(c)/(b)"),
    ):
        print(f"  {label} = {figures[name]:.2f} (target >= {target}: {'met' if figures[name] >= target else 'MISSED'})")
    if "d" in contenders:
        print(
            f"  (d)/(a) = {figures['ratio_d_over_a']:.2f}; (c)/(a) - (d)/(a), median of the rounds' differences: "
            f"{figures['round_difference_c_minus_d']:+.3f}"
        )
    print(f"  load average after: {os.getloadavg()[0]:.1f} (other work on the machine makes every figure noisier)")
    for warning in runner.warnings:
        print(f"  WARNING {warning}")
    if runner.lost:
        # Figures from a receiver that acknowledged events it did not keep are worthless.
        raise RuntimeError("acknowledged events are missing from the store: " + "; ".join(runner.lost))
    print(f"  stored: every run's 2xx answers are rows in (b)'s and (c)'s databases; (c) holds {stored_c:,} events")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
