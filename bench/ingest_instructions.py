"""Instructions per webhook `montra-hooks serve` executes, counted by valgrind: a figure machine noise cannot move.

Throughput on a shared 2-core machine varies by a fifth between runs of the same code, so a change worth a
few percent cannot be seen in `bench/ingest.py`. This counts instead: `serve` runs under callgrind with its
instrumentation off; after a warm-up of 300 webhooks it is switched on for the next `--requests` (16
keep-alive connections, each webhook signed and distinct, as `bench/ingest.py` sends them), then off, and
the program's total is divided by the count. Every thread of the server counts (the commit thread's
SQLite work too); the kernel's work (syscalls, fsync) does not, and neither does the client. Counts of
one tree vary by about 1% (group-commit batches differ in size from run to run).

`python bench/ingest_instructions.py [--requests 1000] [--runs 2] [TREE...]` counts this checkout, or each
TREE given (another checkout of montra-webhooks, run with this checkout's .venv by PYTHONPATH), so two
versions are compared in one run: the figures are medians over runs, with each tree's ratio to the first.
valgrind (Debian's package) is installed when missing; without it the benchmark says so and is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _events import event_body
from ingest import SECRET, ensure_tool, free_port

from receiver import sign

WARMUP = 300
CONNECTIONS = 16
_HERE = Path(__file__).resolve().parent
_TOTAL = re.compile(r"^([\d,]+) \S+\s+PROGRAM TOTALS", re.MULTILINE)


def requests(count: int, tag: str, port: int) -> list[bytes]:
    """`count` distinct signed webhooks as raw HTTP/1.1 requests (the headers wrk sends in bench/ingest.py)."""
    out = []
    for n in range(count):
        body = event_body(n)
        signed = sign(body, secret=SECRET, msg_id=f"msg_{tag}_{n:09d}")
        head = (
            f"POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"webhook-id: {signed['webhook-id']}\r\nwebhook-timestamp: {signed['webhook-timestamp']}\r\n"
            f"webhook-signature: {signed['webhook-signature']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def _send(port: int, batch: list[bytes]) -> int:
    """Send `batch` over CONNECTIONS keep-alive connections, one request at a time each; return the 200s."""
    answered = 0

    async def connection(share: list[bytes]) -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for request in share:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
            await reader.readexactly(length)
            answered += head.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(connection(batch[k::CONNECTIONS]) for k in range(CONNECTIONS)))
    return answered


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def instructions_per_webhook(valgrind: str, tree: Path, count: int) -> float:
    """Instructions per webhook of `serve` from `tree`, over `count` webhooks after the warm-up."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="montra-instructions-") as work:
        out = Path(work) / "callgrind.out"
        serve = "import sys; from replay.cli import main; sys.argv[0] = 'montra-hooks'; main()"
        command = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        command += [sys.executable, "-c", serve, "serve", "--secret", SECRET, "--db", f"{work}/events.db"]
        command += ["--port", str(port)]
        log = Path(work) / "serve.log"
        with log.open("wb") as output:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            server = subprocess.Popen(command, cwd=tree, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            webhooks = requests(WARMUP + count, f"i{port}", port)
            deadline = time.monotonic() + 180
            while not _listening(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not start under valgrind:\n{log.read_text()}")
                time.sleep(0.5)
            asyncio.run(_send(port, webhooks[:WARMUP]))
            control = [shutil.which("callgrind_control") or "callgrind_control"]
            subprocess.run([*control, "--instr=on", str(server.pid)], capture_output=True, check=True)
            answered = asyncio.run(_send(port, webhooks[WARMUP:]))
            subprocess.run([*control, "--instr=off", str(server.pid)], capture_output=True, check=True)
            subprocess.run([*control, "--dump", str(server.pid)], capture_output=True, check=True)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
        if answered != count:
            raise RuntimeError(f"{count - answered} of {count} webhooks were not answered 200")
        dump = next(Path(work).glob("callgrind.out.*"))  # the dump taken while counting (the exit's counts nothing)
        annotated = subprocess.run(["callgrind_annotate", str(dump)], capture_output=True, text=True, check=True)
        total = _TOTAL.search(annotated.stdout)
        if total is None:
            raise RuntimeError(f"callgrind_annotate printed no total:\n{annotated.stdout[:2000]}")
        return int(total.group(1).replace(",", "")) / count


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="bench/ingest_instructions.py", description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, help="checkouts to count (default: this one)")
    parser.add_argument("--requests", type=int, default=1000, help="webhooks counted per run")
    parser.add_argument("--runs", type=int, default=2, help="runs per tree, alternating")
    args = parser.parse_args(argv or [])
    valgrind = ensure_tool("valgrind")
    if valgrind is None:
        print("ingest instructions: valgrind cannot be had here: skipped")
        return {}
    trees = [tree.resolve() for tree in args.trees] or [_HERE.parent]
    print(f"ingest instructions: callgrind, {args.requests} webhooks a run after {WARMUP}, {args.runs} runs a tree")
    seen: dict[Path, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.runs):
        for tree in trees:
            seen[tree].append(instructions_per_webhook(valgrind, tree, args.requests))
    figures: dict[str, float] = {}
    first = statistics.median(seen[trees[0]])
    for tree in trees:
        median = statistics.median(seen[tree])
        runs = ", ".join(f"{n:,.0f}" for n in seen[tree])
        print(f"  {tree!s:40} {median:9,.0f} instructions a webhook ({runs}); {median / first:.3f}x the first")
        figures[f"instructions per webhook ({tree.name})"] = median
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
