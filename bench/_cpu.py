"""Where the machine's CPU went while a benchmark's load ran, read from /proc (Linux; elsewhere nothing is measured).

A `Recorder` takes a snapshot every 0.1 s in a thread while the load runs; `usage(last=seconds)` then
gives the cores busy per group over the final `seconds` before the load ended: the load generator's
own measured window (its start-up, such as wrk reading its events, is left out). The groups: the
servers named by pid, every local `postgres` process (server, backends, WAL writer...), `load` (this
process's other children: wrk or bench/_loadgen.py), and `other` (the rest of the busy time: other
work on a shared machine, this process). `idle` is the cores' idle time; `iowait` is the part of it
spent with disk I/O outstanding (fsyncs waiting), counted inside `idle`, not beside it.

    with Recorder({"serve": [pid]}) as recorder:
        ...                                   # run the load for 5 s
    cores = recorder.usage(last=5.0)          # {"serve": 0.9, "postgres": 0.6, "load": 0.1, ...}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
INTERVAL = 0.1
"""Seconds between snapshots: how far off a window's start can be."""


@dataclass(frozen=True)
class Snapshot:
    """Cumulative CPU seconds at one moment: the machine's, and each group's per process."""

    at: float
    busy: float
    idle: float
    iowait: float
    groups: dict[str, dict[int, float]]


def available() -> bool:
    """True where /proc/stat can be read (Linux)."""
    return (_PROC / "stat").is_file()


def snapshot(groups: Mapping[str, Sequence[int]]) -> Snapshot:
    """The machine's and each group's CPU seconds now; `postgres` and `load` are found by name and parent."""
    busy = idle = iowait = 0.0
    named = {pid for members in groups.values() for pid in members}
    pids: dict[str, dict[int, float]] = {"postgres": {}, "load": {}}
    if available():
        # cpu  user nice system idle iowait irq softirq steal (guest time is inside user)
        fields = [int(value) / _TICK for value in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        busy = user + nice + system + irq + softirq + steal
        me = os.getpid()
        for pid, name, parent, seconds in _processes():
            if name == "postgres":
                pids["postgres"][pid] = seconds
            elif parent == me and pid not in named:
                pids["load"][pid] = seconds
    for group, members in groups.items():
        pids[group] = {pid: _seconds(pid) for pid in members}
    return Snapshot(time.monotonic(), busy, idle + iowait, iowait, pids)


def usage(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Cores busy per group between two snapshots (1.0 = one core all the time), plus other, idle and iowait."""
    wall = max(after.at - before.at, 1e-9)
    cores: dict[str, float] = {}
    for name, seconds in after.groups.items():
        # A process born in between counts from zero; one that ended in between is lost (a closed backend).
        start = before.groups.get(name, {})
        cores[name] = sum(max(0.0, now - start.get(pid, 0.0)) for pid, now in seconds.items()) / wall
    busy = (after.busy - before.busy) / wall
    cores["other"] = max(0.0, busy - sum(cores.values()))
    cores["idle"] = (after.idle - before.idle) / wall
    cores["iowait"] = (after.iowait - before.iowait) / wall
    return cores


class Recorder:
    """Snapshots every INTERVAL seconds from `with` to its end, in a thread of its own."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self._groups = groups
        self._snapshots: list[Snapshot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._record, name="cpu-recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._snapshots.append(snapshot(self._groups))

    def _record(self) -> None:
        while True:
            self._snapshots.append(snapshot(self._groups))
            if self._stop.wait(INTERVAL):
                return

    def usage(self, *, last: float) -> dict[str, float]:
        """Cores busy per group over the final `last` seconds recorded (from the snapshot nearest their start)."""
        end = self._snapshots[-1]
        start = min(self._snapshots[:-1] or [end], key=lambda s: abs(end.at - last - s.at))
        # A process that ended before the last snapshot (the load generator, always) counts up to its last sample.
        groups: dict[str, dict[int, float]] = {}
        for taken in self._snapshots[self._snapshots.index(start) :]:
            for name, seconds in taken.groups.items():
                groups.setdefault(name, {}).update(seconds)
        return usage(start, replace(end, groups=groups))


def _processes() -> list[tuple[int, str, int, float]]:
    """(pid, name, parent pid, CPU seconds) of every process that can be read."""
    out = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended while we looked
                continue
            name, fields = _parse(stat)
            out.append((int(entry.name), name, int(fields[1]), _cpu_seconds(fields)))
    return out


def _seconds(pid: int) -> float:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:  # gone
        return 0.0
    return _cpu_seconds(_parse(stat)[1])


def _parse(stat: str) -> tuple[str, list[str]]:
    # `pid (name) state ppid ...`: the name may hold spaces and parentheses, so split at the last ") ".
    name, rest = stat.split(" (", 1)[1].rsplit(") ", 1)
    return name, rest.split()


def _cpu_seconds(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime and stime, counted from the state field
