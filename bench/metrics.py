"""What `serve --metrics` costs ingest: the same receiver with metrics on against off, in the same run.

Two servers, each its own uvicorn process on a free loopback port, started once and kept running
through every round (as bench/ingest.py runs its contenders, with its load generator and checks):

- (a) `montra-hooks serve --secret S --db <tmp>`, no handlers;
- (b) the same with `--metrics`, scraped once a second during its runs, as Prometheus would.

Rounds alternate a, b, a, b... so machine noise falls on both alike; the figures are medians over
rounds, and every 2xx answer is checked to be a row in its store. Beside req/s, each server's own CPU
time per request (read from /proc on Linux) is measured: on a busy shared machine req/s swings with
what else runs, while the CPU a request costs does not, so `cpu_a_over_b` is the steadier figure.

Run `python bench/metrics.py [--rounds 5] [--seconds 5] [--connections 64] [--load wrk|python]`.
Target: (b)/(a) >= 0.95 (req/s, and CPU per request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import httpx
from ingest import SECRET, _implementation, _Runner, _Server, load_generator

TARGET = 0.95
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User and system CPU seconds the process has used (all its threads), or None without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime: fields 14 and 15 of proc(5)


def _measured(runner: _Runner, server: _Server, seconds: int) -> dict[str, float]:
    """One run's figures, with the server's CPU microseconds per request answered when /proc has them."""
    before = _cpu_seconds(server.process.pid)
    figures = runner.run(server, seconds)
    after = _cpu_seconds(server.process.pid)
    if before is not None and after is not None and figures["ok"]:
        figures["cpu_us"] = (after - before) / figures["ok"] * 1e6
    return figures


CONTENDERS = {"a": "serve", "b": "serve --metrics"}


class _Scraper:
    """Fetches `/metrics` once a second while the load runs, as a Prometheus server would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.scrapes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.wait(1.0):
                response = client.get(self.url)
                if response.status_code == 200 and b"montra_webhooks_received_total" in response.content:
                    self.scrapes += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the alternating rounds; print the table and return the medians and the ratio."""
    parser = argparse.ArgumentParser(prog="bench/metrics.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load per contender before round 1")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="load generator threads")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk", help="python: bench/_loadgen.py")
    args = parser.parse_args(argv or [])

    wrk, tool = load_generator(args.load, args.connections, args.threads)
    print(f"metrics: {tool}, {args.rounds} alternating rounds of {args.seconds} s after a {args.warmup} s warm-up")
    print(f"  servers: {_implementation()}; (b) scraped once a second while loaded", flush=True)

    serve = Path(sys.executable).with_name("montra-hooks")
    command = [str(serve)] if serve.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in CONTENDERS}
    scrapes, failures = 0, []
    with tempfile.TemporaryDirectory(prefix="montra-bench-") as tmp:
        workdir = Path(tmp)
        servers: dict[str, _Server] = {}
        try:
            for key, extra in (("a", []), ("b", ["--metrics"])):
                db = workdir / f"{key}.db"
                argv_ = [*command, "serve", "--secret", SECRET, "--db", str(db), "--port", "{port}", *extra]
                servers[key] = _Server(key, argv_, workdir, db)
            runner = _Runner(wrk, workdir, args.threads, args.connections)
            for server in servers.values():
                runner.run(server, args.warmup)
            runner.warnings.clear()  # the warm-up's figures and warnings are not the benchmark
            print(
                f"  {'round':>5} {'(a) req/s':>10} {'(b) req/s':>10} {'b/a':>6} {'(a) CPU/req':>12} {'(b) CPU/req':>12}"
            )
            for n in range(1, args.rounds + 1):
                samples["a"].append(_measured(runner, servers["a"], args.seconds))
                metrics_url = f"http://127.0.0.1:{servers['b'].port}/metrics"
                with _Scraper(metrics_url) as scraper:
                    samples["b"].append(_measured(runner, servers["b"], args.seconds))
                scrapes += scraper.scrapes
                failures += scraper.failures
                a, b = samples["a"][-1]["rps"], samples["b"][-1]["rps"]
                cpu = "".join(f" {samples[k][-1].get('cpu_us', 0):>9.0f} µs" for k in CONTENDERS)
                print(f"  {n:>5} {a:>10,.0f} {b:>10,.0f} {b / a:>6.2f}{cpu}", flush=True)
        finally:
            for server in servers.values():
                server.stop()

    figures: dict[str, float] = {}
    for key in CONTENDERS:
        for name in ("rps", "p50_ms", "p99_ms"):
            figures[f"{key}_{name}"] = statistics.median(s[name] for s in samples[key])
    figures["ratio_b_over_a"] = figures["b_rps"] / figures["a_rps"]
    if all("cpu_us" in sample for key in CONTENDERS for sample in samples[key]):
        for key in CONTENDERS:
            figures[f"{key}_cpu_us"] = statistics.median(s["cpu_us"] for s in samples[key])
        figures["cpu_a_over_b"] = figures["a_cpu_us"] / figures["b_cpu_us"]

    print(f"  median of {args.rounds} rounds:")
    for key, label in CONTENDERS.items():
        rps, p50, p99 = (figures[f"{key}_{name}"] for name in ("rps", "p50_ms", "p99_ms"))
        print(f"    ({key}) {label:<16} {rps:>8,.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    ratio = figures["ratio_b_over_a"]
    print(f"  (b)/(a) = {ratio:.3f} req/s (target >= {TARGET}: {'met' if ratio >= TARGET else 'MISSED'})")
    if "cpu_a_over_b" in figures:
        cpu = figures["cpu_a_over_b"]
        a_cpu, b_cpu = figures["a_cpu_us"], figures["b_cpu_us"]
        verdict = "met" if cpu >= TARGET else "MISSED"
        print(f"  CPU per request: (a) {a_cpu:.0f} µs, (b) {b_cpu:.0f} µs; (a)/(b) = {cpu:.3f}", end=" ")
        print(f"(target >= {TARGET}: {verdict})")
    print(f"  (b) answered {scrapes} scrapes during its runs; load average after: {os.getloadavg()[0]:.1f}")
    for warning in runner.warnings:
        print(f"  WARNING {warning}")
    if failures:
        print(f"  WARNING {len(failures)} scrape(s) failed, the first: {failures[0]}")
    if runner.lost:
        raise RuntimeError("acknowledged events are missing from the store: " + "; ".join(runner.lost))
    print("  stored: every run's 2xx answers are rows in (a)'s and (b)'s databases")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
