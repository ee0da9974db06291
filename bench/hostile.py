"""Ingest under attack: signed webhooks a second while a slowloris and a header flood run, against the same without.

Two servers, each its own process on a free loopback port, started once and kept running:

- (p) `montra-hooks serve --secret S --db <tmp>`: the receiver with its limits (`receiver.server`'s
  protocol class over uvicorn's httptools one);
- (u) the same app (`create_app`, same options) under plain `uvicorn.run(http="httptools")`: what the
  limits cost, if anything.

Rounds alternate p (quiet), p (attacked), u (quiet). In the attacked runs a separate process keeps
500 slowloris connections open (each sends a header line a second and reconnects when closed) and
sends header floods (`a:b` repeated 400,000 times), one at a time, 10 a second (`--floods-per-second`;
0 sends them back to back). Load and its checks are
`bench/ingest.py`'s (wrk, or `bench/_loadgen.py`): every 2xx must be a stored row.

Run `python bench/hostile.py [--rounds 3] [--seconds 5] [--connections 64] [--slowloris 500]
[--floods-per-second 10] [--load wrk|python]`. Ratios are the median of each round's own ratio.
`main()` returns the figures for `bench/run.py`. `python bench/hostile.py --attack PORT N FLOODS_PER_SECOND`
runs only the attacker (N slow connections), until SIGTERM. Targets: attacked/quiet >= 0.8; (p)/(u) >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest import SECRET, _Runner, _Server, load_generator

TARGET_UNDER_ATTACK = 0.8
TARGET_OVER_PLAIN = 0.95

_HERE = Path(__file__).resolve().parent
_FLOOD = b"POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"a:b\r\n" * 400_000 + b"\r\n"


class _Slow(asyncio.Protocol):
    """One slowloris connection: a request begun, then a header line each time `tick` runs; `closed` when cut."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    def tick(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"X-a: b\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _slowloris(port: int, count: int, stop: asyncio.Event) -> None:
    """Keep `count` slow connections open (reconnecting those the server cuts), one header line a second each.

    Plain protocols and one ticker, not a task per connection: the attacker must cost the shared CPUs little.
    """
    loop = asyncio.get_running_loop()
    open_ones: set[_Slow] = set()

    async def keep_one() -> None:
        while not stop.is_set():
            try:
                _, slow = await loop.create_connection(_Slow, "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            open_ones.add(slow)
            await asyncio.wait([slow.closed, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            open_ones.discard(slow)
            if slow.transport is not None:
                slow.transport.close()

    keepers = [asyncio.create_task(keep_one()) for _ in range(count)]
    while not stop.is_set():
        for slow in list(open_ones):
            slow.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    await asyncio.gather(*keepers)


async def _flood(port: int, stop: asyncio.Event, rate: float) -> None:
    while not stop.is_set():
        if rate:
            await asyncio.sleep(1 / rate)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_FLOOD)
            await asyncio.wait_for(reader.read(4096), timeout=30)  # the 431 (or the close)
            writer.close()
        except (OSError, TimeoutError):
            await asyncio.sleep(0.1)


async def _attack(port: int, slowloris: int, floods_per_second: float) -> None:
    """Run until SIGTERM: `slowloris` slow connections and header floods, one at a time (0: back to back)."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.gather(_slowloris(port, slowloris, stop), _flood(port, stop, floods_per_second))


def _plain(port: int, db: str) -> None:
    """(u): the receiver app under uvicorn's own httptools protocol, with no limits of ours."""
    import uvicorn

    from receiver import create_app

    app = create_app(db=db, secrets=[SECRET])
    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", access_log=False, lifespan="on")


def _servers(workdir: Path) -> dict[str, _Server]:
    serve = Path(sys.executable).with_name("montra-hooks")
    serve_command = [str(serve)] if serve.exists() else [sys.executable, "-c", "from replay.cli import main; main()"]
    me = str(Path(__file__).resolve())
    commands = {
        "p": [*serve_command, "serve", "--secret", SECRET, "--db", str(workdir / "p.db"), "--port", "{port}"],
        "u": [sys.executable, me, "--plain", "{port}", str(workdir / "u.db")],
    }
    servers: dict[str, _Server] = {}
    try:
        for key, command in commands.items():
            servers[key] = _Server(key, command, workdir, workdir / f"{key}.db")
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the alternating rounds; print the table and return the medians and ratios."""
    parser = argparse.ArgumentParser(prog="bench/hostile.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--slowloris", type=int, default=500, help="slow connections held open during attacks")
    # Back to back, the flood is a request flood that the attacker's own CPU drives: on a 2-core machine shared
    # with the server and wrk, the figure then measures the attacker as much as the receiver.
    parser.add_argument("--floods-per-second", type=float, default=10, help="header floods a second; 0: back to back")
    parser.add_argument("--load", choices=["wrk", "python"], default="wrk", help="python: bench/_loadgen.py")
    args = parser.parse_args(argv or [])

    wrk, tool = load_generator(args.load, args.connections)
    print(f"hostile: {tool}, {args.rounds} rounds of {args.seconds} s: (p) quiet, (p) attacked, (u) quiet")
    pace = f"{args.floods_per_second:g} a second" if args.floods_per_second else "back to back"
    print(f"  attack: {args.slowloris} slowloris connections; 400,000-line header floods, {pace}", flush=True)

    samples: dict[str, list[float]] = {"quiet": [], "attacked": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="montra-bench-") as tmp:
        workdir = Path(tmp)
        servers = _servers(workdir)
        try:
            runner = _Runner(wrk, workdir, 1, args.connections)
            for server in servers.values():
                runner.run(server, args.warmup)
            runner.warnings.clear()
            print(f"  {'round':>5} {'(p) quiet':>10} {'attacked':>10} {'(u) quiet':>10} {'att/q':>6} {'p/u':>6}")
            for n in range(1, args.rounds + 1):
                samples["quiet"].append(runner.run(servers["p"], args.seconds)["rps"])
                attack = [str(servers["p"].port), str(args.slowloris), str(args.floods_per_second)]
                attacker = subprocess.Popen([sys.executable, __file__, "--attack", *attack])
                try:
                    time.sleep(1.0)  # the slow connections open
                    samples["attacked"].append(runner.run(servers["p"], args.seconds)["rps"])
                finally:
                    attacker.terminate()
                    attacker.wait(timeout=15)
                samples["plain"].append(runner.run(servers["u"], args.seconds)["rps"])
                q, a, u = (samples[key][-1] for key in ("quiet", "attacked", "plain"))
                print(f"  {n:>5} {q:>10,.0f} {a:>10,.0f} {u:>10,.0f} {a / q:>6.2f} {q / u:>6.2f}", flush=True)
        finally:
            for server in servers.values():
                server.stop()

    figures = {f"{key}_rps": statistics.median(values) for key, values in samples.items()}
    # Ratios within each round (its runs are seconds apart, under the same noise), then their median.
    rounds = list(zip(samples["quiet"], samples["attacked"], samples["plain"], strict=True))
    figures["ratio_attacked_over_quiet"] = statistics.median(a / q for q, a, _ in rounds)
    figures["ratio_limits_over_plain"] = statistics.median(q / u for q, _, u in rounds)
    for name, target, label in (
        ("ratio_attacked_over_quiet", TARGET_UNDER_ATTACK, "attacked/quiet"),
        ("ratio_limits_over_plain", TARGET_OVER_PLAIN, "(p)/(u)"),
    ):
        print(f"  {label} = {figures[name]:.2f} (target >= {target}: {'met' if figures[name] >= target else 'MISSED'})")
    print(f"  load average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for warning in runner.warnings:
        print(f"  WARNING {warning}")
    if runner.lost:
        raise RuntimeError("acknowledged events are missing from the store: " + "; ".join(runner.lost))
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        asyncio.run(_attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    elif sys.argv[1:2] == ["--plain"]:
        _plain(int(sys.argv[2]), sys.argv[3])
    else:
        main(sys.argv[1:])
