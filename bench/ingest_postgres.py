"""How many webhooks a second `serve` takes in on PostgreSQL, with one and two instances, against SQLite here.

Four `montra-hooks serve` processes, each on a free loopback port (uvicorn, one worker, access log
off, as users run it), started once and kept running through every round:

- (a) `serve --db <tmp>/a.db`: the SQLite store, on this machine's disk;
- (b) one `serve --db postgresql://...`, on a schema of its own;
- (c) two `serve` instances on one other schema of the same database, the load split evenly: one
  load generator per instance, each with half the connections, both running at once. Their req/s
  add up; (c)'s p50 is the halves' mean (by requests) and its p99 the higher one: two histograms.

The load is bench/ingest.py's: wrk (Debian's package) with bench/ingest.lua, or bench/_loadgen.py,
every request a distinct event signed just before its run. Rounds alternate a, b, c, a, b, c... so
machine noise falls on all three alike; the figures are medians over rounds. After each run the rows
in its store are counted against its 2xx answers (in PostgreSQL with psycopg): an acknowledged
event missing from the store fails the benchmark. During each run the CPU time of the servers, of
PostgreSQL's processes and of the load generator is read from /proc (`bench/_cpu.py`), so a figure
that does not scale says where the cores went.

The server: `--postgres URL`, else env MONTRA_BENCH_POSTGRES_URL, else a local server on its Unix
socket (`postgresql:///montra_test`, then `postgresql:///postgres`). The run's two schemas
(`bench_<hex>_b`, `bench_<hex>_c`) are created fresh and dropped at the end. With no server this
prints how to get one and returns no figures: a skip, not a failure.

Run `python bench/ingest_postgres.py [--rounds 3] [--seconds 5] [--connections 64] [--postgres URL]
[--load wrk|python]`; `main()` returns the figures for `bench/run.py`. No target: on 2 cores, two
instances, PostgreSQL and the load generator share the same two cores, so (c)/(b) says what this
machine allows, not what a deployment on separate hosts gets.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

HERE = Path(__file__).resolve().parent
for _folder in (str(HERE), str(HERE.parent)):  # runnable alone, as bench/run.py runs it
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import _cpu  # noqa: E402

# ingest.py's server process and load run, reused so both benchmarks drive their servers alike.
from ingest import SECRET, _load, _Server, load_generator, settle, write_events  # noqa: E402

from receiver.stores.open import is_postgres_url, redact_url  # noqa: E402

ENV = "MONTRA_BENCH_POSTGRES_URL"
LOCAL_URLS = ("postgresql:///montra_test", "postgresql:///postgres")
HOW_TO_GET_ONE = (
    f"set {ENV}=postgresql://USER@HOST/DB, or run .ci/run (on Debian it installs and starts one), or on Debian: "
    "`sudo apt-get install postgresql && sudo -u postgres createuser --superuser $USER "
    "&& sudo -u postgres createdb montra_test`"
)
CONTENDERS = {"a": "serve, SQLite", "b": "serve, PostgreSQL", "c": "2 x serve, PostgreSQL"}
RATIOS = (("b", "a"), ("c", "a"), ("c", "b"))
_CPU_GROUPS = ("serve", "postgres", "load", "other", "idle", "iowait")


def find_server(explicit: str | None = None) -> tuple[str | None, str]:
    """(the PostgreSQL URL that connects, or None; why none did): `explicit`, else env, else the local socket."""
    import psycopg

    chosen = explicit or os.environ.get(ENV)
    failures = []
    for url in [chosen] if chosen else LOCAL_URLS:
        try:
            with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return url, ""
        except psycopg.Error as e:
            lines = str(e).strip().splitlines()  # libpq's first line says it; the rest are hints
            failures.append(f"{redact_url(url)}: {lines[0] if lines else type(e).__name__}")
    return None, "; ".join(failures)


def with_search_path(url: str, schema: str) -> str:
    """`url` whose every connection uses `schema` (`options=-csearch_path=<schema>`; other options kept)."""
    # Not urlsplit/urlunsplit: they turn `postgresql:///db` (the default socket, an empty host) into `postgresql:/db`.
    base, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    params["options"] = f"{params.get('options', '')} -csearch_path={schema}".lstrip()
    return f"{base}?{urlencode(params, quote_via=quote, safe='')}"


class _Contender:
    """One store and the servers in front of it; rows are counted in the store, whichever server took them."""

    def __init__(self, key: str, db: str, servers: list[_Server]) -> None:
        self.key, self.db, self.servers = key, db, servers

    def rows(self) -> int:
        if is_postgres_url(self.db):
            import psycopg

            with psycopg.connect(self.db, connect_timeout=3, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM events").fetchone()
            return int(row[0]) if row else 0
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as conn:
            count: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return count

    def settle(self) -> int:
        """Wait until requests still in flight when the load stopped are stored; return the row count."""
        return settle(self.rows)


class _Runner:
    """Runs one contender's load (one generator per server, the connections split), checks its rows, reads CPU."""

    def __init__(self, wrk: str | None, workdir: Path, connections: int) -> None:
        self.wrk, self.workdir, self.connections = wrk, workdir, connections
        self.best_rate: dict[str, float] = {}
        self.runs = 0
        self.warnings: list[str] = []
        self.lost: list[str] = []

    def run(self, contender: _Contender, seconds: int) -> dict[str, float]:
        servers = contender.servers
        shares = [self.connections // len(servers) + (i < self.connections % len(servers)) for i in range(len(servers))]
        # Until a rate is known, assume a generous one; a run whose events ran out is done again with more.
        count = math.ceil(self.best_rate.get(contender.key, 12_000) * seconds * 1.5 / len(servers)) + 2_000
        pids = {"serve": [server.process.pid for server in servers]}
        while True:
            prefixes = []
            for _ in servers:
                self.runs += 1
                prefixes.append(self.workdir / f"events-{self.runs}")
                write_events(prefixes[-1], count, 1, f"r{self.runs}")
            before = contender.settle()
            with _cpu.Recorder(pids) as recorder, ThreadPoolExecutor(len(servers)) as pool:
                loads = [
                    pool.submit(_load, self.wrk, server.url, prefix, 1, share, seconds)
                    for server, prefix, share in zip(servers, prefixes, shares, strict=True)
                ]
                results = [load.result() for load in loads]
            # Over the load's own measured window: its start-up (wrk reading its events) is not the servers' work.
            cores = recorder.usage(last=min(result["duration_us"] for result in results) / 1e6)
            for prefix in prefixes:
                Path(f"{prefix}.1").unlink()
            if not any(result["wrapped"] for result in results):
                break
            count *= 2  # some events were sent twice: this run does not count
        stored = contender.settle() - before
        requests = sum(result["requests"] for result in results)
        ok = requests - sum(result["non2xx"] for result in results)
        rate = sum(result["requests"] / (result["duration_us"] / 1e6) for result in results)
        self.best_rate[contender.key] = max(rate, self.best_rate.get(contender.key, 0.0))
        errors = {k: sum(r[k] for r in results) for k in ("non2xx", "connect", "read", "write", "timeout")}
        if any(errors.values()):
            self.warnings.append(f"({contender.key}) errors: { {k: v for k, v in errors.items() if v} }")
        # Requests in flight when the load stopped may be stored without their answer being counted.
        if not ok <= stored <= ok + self.connections:
            self.lost.append(f"({contender.key}) stored {stored} events for {ok} 2xx answers")
        p50 = sum(r["p50_us"] * r["requests"] for r in results) / max(requests, 1) / 1000
        p99 = max(r["p99_us"] for r in results) / 1000
        figures = {"rps": rate, "p50_ms": p50, "p99_ms": p99, "ok": ok}
        figures |= {f"cpu_{name}": cores.get(name, 0.0) for name in _CPU_GROUPS}
        return figures


def _serve(db: str) -> list[str]:
    script = Path(sys.executable).with_name("montra-hooks")
    base = [str(script)] if script.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]
    return [*base, "serve", "--secret", SECRET, "--db", db, "--port", "{port}"]


def _contenders(workdir: Path, urls: dict[str, str]) -> dict[str, _Contender]:
    sqlite_db = str(workdir / "a.db")
    plan = {"a": (sqlite_db, ["a"]), "b": (urls["b"], ["b"]), "c": (urls["c"], ["c1", "c2"])}
    contenders: dict[str, _Contender] = {}
    started: list[_Server] = []
    try:
        for key, (db, names) in plan.items():
            servers = []
            for name in names:  # one after another: the first one creates (migrates) the schema
                servers.append(_Server(name, _serve(db), workdir, None))
                started.append(servers[-1])
            contenders[key] = _Contender(key, db, servers)
    except BaseException:
        for server in started:
            server.stop()
        raise
    return contenders


def _describe(base: str) -> str:
    import psycopg

    with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), "
            "current_setting('synchronous_commit'), coalesce(host(inet_server_addr()), 'the local socket')"
        ).fetchone()
    assert row is not None
    version, fsync, synchronous_commit, where = row
    return f"PostgreSQL {version} on {where}, fsync={fsync}, synchronous_commit={synchronous_commit}"


def _schemas(base: str, names: list[str], *, create: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        for name in names:
            template = "CREATE SCHEMA {}" if create else "DROP SCHEMA IF EXISTS {} CASCADE"
            conn.execute(sql.SQL(template).format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the alternating rounds; print the table and return the medians and ratios ({} without a server)."""
    parser = argparse.ArgumentParser(prog="bench/ingest_postgres.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="length of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load per contender before round 1")
    parser.add_argument("--connections", type=int, default=64, help="in all; (c) gives each instance half")
    parser.add_argument("--postgres", metavar="URL", help=f"the server (default: env {ENV}, else the local socket)")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk", help="python: bench/_loadgen.py")
    args = parser.parse_args(argv or [])

    try:
        import psycopg  # noqa: F401
    except ImportError:
        print("ingest_postgres: skipped: psycopg is not installed (pip install 'montra-webhooks[postgres]')")
        return {}
    base, why = find_server(args.postgres)
    if base is None:
        print(f"ingest_postgres: skipped: no PostgreSQL server ({why}); to get one: {HOW_TO_GET_ONE}")
        return {}
    wrk, tool = load_generator(args.load, args.connections)
    half = args.connections // 2
    print(f"ingest_postgres: {tool} ((c): two of them, -c{half} each, one per instance)")
    print(f"  {args.rounds} alternating rounds of {args.seconds} s after a {args.warmup} s warm-up")
    run_schema = f"bench_{secrets.token_hex(4)}"
    schemas = {key: f"{run_schema}_{key}" for key in ("b", "c")}
    print(f"  {_describe(base)}; (a)'s SQLite file in this machine's temporary folder")
    print(f"  schemas {schemas['b']} for (b) and {schemas['c']} for (c), dropped at the end")
    print(f"  load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    samples: dict[str, list[dict[str, float]]] = {key: [] for key in CONTENDERS}
    _schemas(base, list(schemas.values()), create=True)
    try:
        with tempfile.TemporaryDirectory(prefix="montra-bench-pg-") as tmp:
            workdir = Path(tmp)
            contenders = _contenders(workdir, {key: with_search_path(base, name) for key, name in schemas.items()})
            try:
                runner = _Runner(wrk, workdir, args.connections)
                for contender in contenders.values():
                    runner.run(contender, args.warmup)
                runner.warnings.clear()  # the warm-up's figures and warnings are not the benchmark
                head = "".join(f"{f'({key}) req/s':>11}" for key in CONTENDERS)
                print(f"  {'round':>5}{head}" + "".join(f"{f'{x}/{y}':>6}" for x, y in RATIOS))
                for n in range(1, args.rounds + 1):
                    for key, contender in contenders.items():
                        samples[key].append(runner.run(contender, args.seconds))
                    rates = {key: samples[key][-1]["rps"] for key in CONTENDERS}
                    line = "".join(f"{rates[key]:>11,.0f}" for key in CONTENDERS)
                    print(f"  {n:>5}{line}" + "".join(f"{rates[x] / rates[y]:>6.2f}" for x, y in RATIOS), flush=True)
                stored = {key: contender.settle() for key, contender in contenders.items()}
            finally:
                for contender in contenders.values():
                    for server in contender.servers:
                        server.stop()
    finally:
        _schemas(base, list(schemas.values()), create=False)

    figures: dict[str, float] = {}
    for key in CONTENDERS:
        for name in ("rps", "p50_ms", "p99_ms"):
            figures[f"{key}_{name}"] = statistics.median(s[name] for s in samples[key])
    for x, y in RATIOS:
        figures[f"ratio_{x}_over_{y}"] = figures[f"{x}_rps"] / figures[f"{y}_rps"]

    print(f"  median of {args.rounds} rounds:")
    for key, label in CONTENDERS.items():
        rps, p50, p99 = (figures[f"{key}_{name}"] for name in ("rps", "p50_ms", "p99_ms"))
        print(f"    ({key}) {label:<22} {rps:>8,.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    print("  " + ", ".join(f"({x})/({y}) = {figures[f'ratio_{x}_over_{y}']:.2f}" for x, y in RATIOS))
    if _cpu.available():
        _print_cpu(samples)
    print(f"  load average after: {os.getloadavg()[0]:.1f} (other work on the machine makes every figure noisier)")
    for warning in runner.warnings:
        print(f"  WARNING {warning}")
    if runner.lost:
        # Figures from a receiver that acknowledged events it did not keep are worthless.
        raise RuntimeError("acknowledged events are missing from the store: " + "; ".join(runner.lost))
    held = ", ".join(f"({key}) {count:,}" for key, count in stored.items())
    print(f"  stored: every run's 2xx answers are rows in its store; events held: {held}")
    return figures


def _print_cpu(samples: dict[str, list[dict[str, float]]]) -> None:
    """Mean cores busy per contender over its rounds, and CPU milliseconds per request of serve and PostgreSQL."""
    print(f"  CPU during the runs, in cores of {os.cpu_count()} (mean over rounds; iowait is part of idle):")
    print("      " + "".join(f"{name:>9}" for name in _CPU_GROUPS) + f"{'serve ms/req':>14}{'pg ms/req':>11}")
    for key in CONTENDERS:
        mean = {name: statistics.fmean(s[f"cpu_{name}"] for s in samples[key]) for name in _CPU_GROUPS}
        rps = statistics.fmean(s["rps"] for s in samples[key])
        per_request = f"{mean['serve'] / rps * 1000:>14.3f}{mean['postgres'] / rps * 1000:>11.3f}"
        print(f"    ({key})" + "".join(f"{mean[name]:>9.2f}" for name in _CPU_GROUPS) + per_request)


if __name__ == "__main__":
    main(sys.argv[1:])
