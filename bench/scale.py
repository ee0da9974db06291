"""A million events: is every path as fast on a full store as on an empty one?

A store of `--events` events (default 1,000,000), each with a finished handler run (one in a hundred
dead), is built once through the public schema (`bench/_bigstore.py`, about a minute) and cached in
`bench/.cache/`; each run works on a copy. Two `montra-hooks serve --inspect` processes, one on an
empty store and one on the copy, run side by side; rounds alternate between them, so machine noise
falls on both alike. Measured, medians over rounds:

- new-event ingest on both (target: full / empty >= 0.9);
- a duplicate storm on the full store, every request re-sending a stored id (target: >= 0.7 of
  new-event ingest on the empty store), and a mix with 30% duplicates;
- p99 acknowledgement latency of new events while `serve --retain 30d` prunes the older half of a
  copy of the full store, against the same without `--retain`;
- then, in this process, on both stores: claim throughput (2,000 runs claimed 50 at a time and
  finished), stream catch-up of the newest 100,000 events (pages of 500), and the latency of each
  `events list` filter and `events show` (the CLI, a process each, so start-up included) and of each
  inspector page (as a bearer of the inspect token).

Run `python bench/scale.py [--events 1000000] [--rounds 3] [--seconds 5] [--quick]`; `--quick` is
100,000 events, 1 round of 3 s. `main()` returns the figures for `bench/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import _bigstore
from _events import event_body
from ingest import SECRET, _load, _Server, load_generator, write_events

from receiver import sign
from receiver.stores.protocol import EventFilter, Incoming
from receiver.stores.sqlite.store import SQLiteStore

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TARGET_NEW = 0.9
TARGET_DUPLICATES = 0.7
CONNECTIONS = 64
LIST_FILTERS = {
    "all": [],
    "exact type": ["--type", "subscription.upgraded"],
    "prefix": ["--type", "subscription.*"],
    "prefix, none": ["--type", "nope.*"],
    "status dead": ["--status", "dead"],
    "since 2h": ["--since", "2h"],
}
PAGES = {
    "list": "/inspect",
    "list prefix": "/inspect?type=subscription.*",
    "list dead": "/inspect?status=dead",
}


def cached_store(events: int) -> Path:
    """The cached store of `events` events, built (once) when missing."""
    path = CACHE / f"scale-{events}.db"
    if not path.exists():
        CACHE.mkdir(exist_ok=True)
        partial = path.with_suffix(".building")
        for leftover in CACHE.glob(partial.name + "*"):
            leftover.unlink()
        print(f"  building {events:,} events in {path} (cached for the next run)...", flush=True)
        started = time.monotonic()
        _bigstore.build(str(partial), events)
        sqlite3.connect(partial).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
        partial.rename(path)
        print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    return path


def write_duplicates(prefix: Path, count: int, stored: int, share: float, tag: str) -> None:
    """`count` signed events, a `share` of them re-sending ids of the stored events, the rest new."""
    rng = random.Random(tag)
    with open(f"{prefix}.1", "w", encoding="utf-8") as out:
        for n in range(count):
            if rng.random() < share:
                k = rng.randrange(stored)
                msg_id, body = _bigstore.event_id(k), event_body(k)
            else:
                msg_id, body = f"msg_{tag}_{n:09d}", event_body(n)
            headers = sign(body, secret=SECRET, msg_id=msg_id)
            line = f"{headers['webhook-id']}\t{headers['webhook-timestamp']}\t{headers['webhook-signature']}\t"
            out.write(line + body.decode() + "\n")


class _Loads:
    def __init__(self, wrk: str | None, workdir: Path, seconds: int) -> None:
        self.wrk, self.workdir, self.seconds = wrk, workdir, seconds
        self.runs = 0

    def run(self, server: _Server, duplicates: float, stored: int) -> dict[str, float]:
        count = 15_000 * self.seconds
        while True:
            self.runs += 1
            prefix = self.workdir / f"load-{self.runs}"
            if duplicates:
                write_duplicates(prefix, count, stored, duplicates, f"s{self.runs}")
            else:
                write_events(prefix, count, 1, f"s{self.runs}")
            result = _load(self.wrk, server.url, prefix, 1, CONNECTIONS, self.seconds)
            Path(f"{prefix}.1").unlink()
            if not result["wrapped"] or duplicates == 1.0:
                break
            count *= 2
        server.settle()
        return {
            "rps": result["requests"] / (result["duration_us"] / 1e6),
            "p99_ms": result["p99_us"] / 1000,
            "errors": result["non2xx"] + result["read"] + result["timeout"],
        }


def _timed(fn: object, repeat: int = 3) -> float:
    """Median wall time of `fn()` in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _cli(db: Path, *args: str) -> None:
    script = Path(sys.executable).with_name("montra-hooks")
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]
    done = subprocess.run([*command, *args, "--db", str(db)], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"montra-hooks {' '.join(args)} failed: {done.stderr.decode()[-500:]}")


INSPECT_TOKEN = "bench-inspector-token-0123456789"


def _get(url: str) -> None:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {INSPECT_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


async def _claims(db: Path, count: int) -> float:
    """Runs claimed and finished a second: `count` fresh events for one handler, 50 a claim."""
    store = SQLiteStore(db)
    try:
        now = time.time()
        for n in range(count):
            body = event_body(n)
            event = Incoming(f"msg_claim_{n}", "invoice.paid", None, now, {}, body, handlers=["bench.claim"])
            await store.ingest(event)
        started = time.perf_counter()
        done = 0
        while True:
            runs = await store.claim(owner="bench", handlers=["bench.claim"], now=time.time(), lease=60, limit=50)
            if not runs:
                break
            for run in runs:
                await store.finish(
                    owner="bench",
                    event_id=run.event_id,
                    handler=run.handler,
                    status="succeeded",
                    error=None,
                    next_attempt_at=None,
                    finished_at=time.time(),
                    duration_ms=0.1,
                )
            done += len(runs)
        return done / (time.perf_counter() - started)
    finally:
        await store.close()


async def _catch_up(db: Path, count: int) -> tuple[int, float]:
    """(events read, events a second) streaming the newest `count` events in pages of 500."""
    store = SQLiteStore(db)
    try:
        newest = (await store.seq_bounds())[1]
        started = time.perf_counter()
        read = 0
        async for _ in store.iter_events(EventFilter(after_seq=max(newest - count, 0)), page=500):
            read += 1
        return read, read / (time.perf_counter() - started)
    finally:
        await store.close()


def prune_latency(cached: Path, wrk: str | None, seconds: int) -> dict[str, float]:
    """p99 ack latency of new events while `serve --retain 30d` prunes half of a copy of `cached`, and without."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="montra-prune-") as tmp:
        workdir = Path(tmp)
        for key, extra in (("quiet", []), ("pruning", ["--retain", "30d"])):
            db = workdir / f"{key}.db"
            shutil.copyfile(cached, db)
            command = ["serve", "--secret", SECRET, "--port", "{port}", "--db", str(db), *extra]
            server = _Server(key, [str(Path(sys.executable).with_name("montra-hooks")), *command], workdir, db)
            try:
                result = _Loads(wrk, workdir, seconds).run(server, 0.0, 0)
            finally:
                server.stop()
            with sqlite3.connect(db) as conn:
                left = conn.execute("SELECT count(*) FROM events WHERE received_at < ?", (_days_ago(30),)).fetchone()
            figures[f"prune_{key}_rps"] = result["rps"]
            figures[f"prune_{key}_p99_ms"] = result["p99_ms"]
            figures[f"prune_{key}_old_left"] = left[0]
    return figures


def _days_ago(days: float) -> str:
    from receiver.stores.protocol import iso

    return iso(time.time() - days * 86400)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="100,000 events, 1 round of 3 s")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk")
    parser.add_argument("--skip-prune", action="store_true", help="skip the ack latency during a prune")
    parser.add_argument("--ingest-only", action="store_true", help="only the ingest rounds")
    args = parser.parse_args(argv or [])
    if args.quick:
        args.events, args.rounds, args.seconds = 100_000, 1, 3
    wrk, tool = load_generator(args.load, CONNECTIONS)
    print(f"scale: {args.events:,} stored events vs an empty store; {args.rounds} rounds of {args.seconds} s")
    print(f"  load: {tool}", flush=True)
    cached = cached_store(args.events)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in ("new_empty", "new_full", "dup_full", "mixed_full")}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="montra-scale-") as tmp:
        workdir = Path(tmp)
        full_db, empty_db = workdir / "full.db", workdir / "empty.db"
        shutil.copyfile(cached, full_db)
        serve = Path(sys.executable).with_name("montra-hooks")
        command = [
            str(serve),
            "serve",
            "--secret",
            SECRET,
            "--port",
            "{port}",
            "--inspect-token",
            INSPECT_TOKEN,
            "--db",
        ]
        servers = {"empty": _Server("empty", [*command, str(empty_db)], workdir, empty_db)}
        try:
            servers["full"] = _Server("full", [*command, str(full_db)], workdir, full_db)
            loads = _Loads(wrk, workdir, args.seconds)
            loads.run(servers["empty"], 0.0, args.events)  # warm-up
            loads.run(servers["full"], 0.0, args.events)
            header = f"  {'round':>5} {'new empty':>10} {'new full':>10} {'dup full':>10} {'30% dup':>10}  req/s"
            print(header, flush=True)
            for n in range(1, args.rounds + 1):
                samples["new_empty"].append(loads.run(servers["empty"], 0.0, args.events))
                samples["new_full"].append(loads.run(servers["full"], 0.0, args.events))
                samples["dup_full"].append(loads.run(servers["full"], 1.0, args.events))
                samples["mixed_full"].append(loads.run(servers["full"], 0.3, args.events))
                row = " ".join(f"{samples[k][-1]['rps']:>10,.0f}" for k in samples)
                print(f"  {n:>5} {row}", flush=True)
            for key, runs in samples.items():
                figures[f"{key}_rps"] = statistics.median(r["rps"] for r in runs)
                figures[f"{key}_p99_ms"] = statistics.median(r["p99_ms"] for r in runs)
                if errors := sum(r["errors"] for r in runs):
                    print(f"  WARNING {key}: {errors:.0f} errors")
            if args.ingest_only:
                _print_ingest(figures)
                return figures
            base = {key: server.url[: -len("/webhooks")] for key, server in servers.items()}
            some_id = {"empty": "msg_s1_000000001", "full": _bigstore.event_id(args.events // 2)}
            for name, path in {**PAGES, "event": "/inspect/events/{id}"}.items():
                for key in ("empty", "full"):
                    url = base[key] + urllib.parse.quote(path.format(id=some_id[key]), safe="/?=*")
                    figures[f"page_{name}_{key}_ms".replace(" ", "_")] = _timed(lambda url=url: _get(url), 5)
        finally:
            for server in servers.values():
                server.stop()
        for key, db in (("empty", empty_db), ("full", full_db)):
            for name, extra in LIST_FILTERS.items():
                ms = _timed(lambda db=db, extra=extra: _cli(db, "events", "list", *extra))
                figures[f"cli_list_{name}_{key}_ms".replace(" ", "_").replace(",", "")] = ms
            shown = some_id[key]
            figures[f"cli_show_{key}_ms"] = _timed(lambda db=db, shown=shown: _cli(db, "events", "show", shown))
            figures[f"catch_up_{key}_per_s"] = asyncio.run(_catch_up(db, 100_000))[1]
            figures[f"claims_{key}_per_s"] = asyncio.run(_claims(db, 2_000))

    if not args.skip_prune:
        figures.update(prune_latency(cached, wrk, args.seconds))
    figures["ratio_new_full_over_empty"] = figures["new_full_rps"] / figures["new_empty_rps"]
    figures["ratio_dup_full_over_new_empty"] = figures["dup_full_rps"] / figures["new_empty_rps"]
    figures["ratio_mixed_full_over_new_empty"] = figures["mixed_full_rps"] / figures["new_empty_rps"]
    figures["ratio_claims_full_over_empty"] = figures["claims_full_per_s"] / figures["claims_empty_per_s"]
    _print(figures)
    return figures


def _print_ingest(figures: dict[str, float]) -> None:
    print("  ingest, median req/s (p99 ms):")
    for key in ("new_empty", "new_full", "dup_full", "mixed_full"):
        print(f"    {key:<12} {figures[key + '_rps']:>9,.0f}  ({figures[key + '_p99_ms']:.1f} ms)")
    for key in ("new_full", "dup_full", "mixed_full"):
        print(f"  {key} / new_empty = {figures[key + '_rps'] / figures['new_empty_rps']:.2f}")


def _print(figures: dict[str, float]) -> None:
    print("  ingest, median req/s (p99 ms):")
    for key in ("new_empty", "new_full", "dup_full", "mixed_full"):
        print(f"    {key:<12} {figures[key + '_rps']:>9,.0f}  ({figures[key + '_p99_ms']:.1f} ms)")
    targets = (("ratio_new_full_over_empty", TARGET_NEW), ("ratio_dup_full_over_new_empty", TARGET_DUPLICATES))
    for name, target in targets:
        verdict = "met" if figures[name] >= target else "MISSED"
        print(f"  {name} = {figures[name]:.2f} (target >= {target}: {verdict})")
    print(f"  ratio_mixed_full_over_new_empty = {figures['ratio_mixed_full_over_new_empty']:.2f}")
    print(f"  {'':<28} {'empty':>9} {'full':>9}")
    names = sorted({key.rsplit("_", 2)[0] for key in figures if key.endswith(("_empty_ms", "_full_ms"))})
    for name in names:
        print(f"  {name + ' (ms)':<28} {figures[name + '_empty_ms']:>9.1f} {figures[name + '_full_ms']:>9.1f}")
    if "prune_quiet_p99_ms" in figures:
        for key in ("quiet", "pruning"):
            rps, p99, left = (figures[f"prune_{key}_{n}"] for n in ("rps", "p99_ms", "old_left"))
            print(f"  ingest {key:<8} {rps:>9,.0f} req/s, p99 {p99:.1f} ms; events older than 30d left: {left:,.0f}")
    for name in ("claims", "catch_up"):
        empty, full = figures[f"{name}_empty_per_s"], figures[f"{name}_full_per_s"]
        print(f"  {name + ' (per s)':<28} {empty:>9,.0f} {full:>9,.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
