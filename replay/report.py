"""What trigger, replay and watch print: one line per event, JSON lines, and replay's summary.

`Summary` counts results by HTTP status and by answer and keeps latencies in a fixed-size
reservoir (Vitter's algorithm R), so its memory is the same for ten events or ten million: its
percentiles are exact up to `RESERVOIR` events and a uniform sample's beyond.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

from .send import Outgoing, Result

__all__ = ["RESERVOIR", "Summary", "answer_line", "result_json", "sent_line"]

RESERVOIR = 10_000
"""Latencies kept for percentiles."""


def sent_line(event: Outgoing, sent_as: str | None = None) -> str:
    """`--> subscription.upgraded [evt_123]`, as `stripe trigger` prints what it sends."""
    renamed = f" as {sent_as}" if sent_as is not None and sent_as != event.id else ""
    return f"--> {event.type} [{event.id}]{renamed}"


def answer_line(result: Result) -> str:
    """`<-- [200] stored (12 ms)`; in-process `<-- [handled] by a, b (3 ms)`; errors with their message."""
    ms = f"({result.ms:.0f} ms)"
    if result.status is None and result.answer in ("handled", "unhandled", "failed"):
        ran = f" by {', '.join(result.handlers)}" if result.handlers else " (no handler matches this type)"
        if result.ok:
            return f"<-- [{result.answer}]{ran} {ms}"
        return f"<-- [failed] {result.error} {ms}"
    code = str(result.status) if result.status is not None else "error"
    if result.ok:
        return f"<-- [{code}] {result.answer or 'ok'} {ms}"
    answer = f"{result.answer}: " if result.answer else ""
    return f"<-- [{code}] {answer}{result.error} {ms}"


def result_json(result: Result, *, replay: bool = True) -> dict[str, Any]:
    """One event's outcome as a JSON object: `--json` prints one per line."""
    event = result.event
    out: dict[str, Any] = {"id": event.id}
    if replay:
        out["replayed_as"] = result.sent_as
    out["type"] = event.type
    if event.seq is not None:
        out["seq"] = event.seq
    out |= {"ok": result.ok, "status": result.status, "answer": result.answer, "ms": round(result.ms, 3)}
    if result.handlers:
        out["handlers"] = list(result.handlers)
    if result.error is not None:
        out["error"] = result.error
    return out


class Summary:
    """Counts of results by status and answer, failures, and latency percentiles, in bounded memory."""

    def __init__(self, *, reservoir: int = RESERVOIR, seed: int | None = None) -> None:
        self.total = 0
        self.failed = 0
        self.by_status: Counter[str] = Counter()
        self.by_answer: Counter[str] = Counter()
        self._capacity = reservoir
        self._latencies: list[float] = []
        self._random = random.Random(seed)
        self._started = time.perf_counter()
        self._finished: float | None = None

    def add(self, result: Result) -> None:
        self.total += 1
        if not result.ok:
            self.failed += 1
        self.by_status[_status(result)] += 1
        self.by_answer[result.answer or "no answer"] += 1
        if len(self._latencies) < self._capacity:
            self._latencies.append(result.ms)
        else:
            # Algorithm R: the n-th latency replaces a random kept one with probability capacity / n.
            slot = self._random.randrange(self.total)
            if slot < self._capacity:
                self._latencies[slot] = result.ms

    def finish(self) -> None:
        self._finished = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self._finished or time.perf_counter()) - self._started

    def percentile(self, q: float) -> float | None:
        """The `q`-quantile (0 < q <= 1) of latencies in ms, by nearest rank; None before any result."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    def as_json(self) -> dict[str, Any]:
        p50, p95 = self.percentile(0.50), self.percentile(0.95)
        return {
            "summary": {
                "total": self.total,
                "accepted": self.total - self.failed,
                "failed": self.failed,
                "by_status": dict(sorted(self.by_status.items())),
                "by_answer": dict(sorted(self.by_answer.items())),
                "p50_ms": None if p50 is None else round(p50, 3),
                "p95_ms": None if p95 is None else round(p95, 3),
                "seconds": round(self.seconds, 3),
            }
        }

    def lines(self, target: str) -> list[str]:
        """The human summary: totals and rate, counts by status and by answer, p50/p95, failures."""
        rate = self.total / self.seconds if self.seconds > 0 else 0.0
        out = [f"Replayed {self.total} event(s) to {target} in {self.seconds:.1f} s ({rate:.0f}/s)"]
        if not self.total:
            return out
        out.append("  by status: " + ", ".join(f"{key} x {n}" for key, n in sorted(self.by_status.items())))
        out.append("  by answer: " + ", ".join(f"{key} x {n}" for key, n in sorted(self.by_answer.items())))
        p50, p95 = self.percentile(0.50), self.percentile(0.95)
        out.append(f"  latency:   p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        if self.failed:
            out.append(f"{self.failed} of {self.total} event(s) not accepted.")
        else:
            out.append(f"All {self.total} accepted.")
        return out


def _status(result: Result) -> str:
    if result.status is not None:
        return str(result.status)
    # No HTTP status: either nothing answered (connection refused, timeout), or it ran in-process.
    return "no answer" if result.answer is None else "in-process"
