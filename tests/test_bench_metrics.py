"""bench/metrics.py: a short run of `serve` against `serve --metrics` stores every acknowledged event and scrapes.

No timing is asserted: only that both contenders ran, kept what they acknowledged, and (b) answered its scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(BENCH))
    yield


@pytest.mark.timeout(120)
def test_a_short_metrics_run_stores_every_acknowledged_event(capsys: pytest.CaptureFixture[str]) -> None:
    import metrics

    # The Python load generator, so the test needs no system package; main() raises if a store lost an event.
    argv = ["--rounds", "1", "--seconds", "2", "--warmup", "1", "--connections", "4", "--load", "python"]
    figures = metrics.main(argv)
    out = capsys.readouterr().out
    assert "stored: every run's 2xx answers are rows in (a)'s and (b)'s databases" in out
    assert "WARNING" not in out
    expected = {f"{k}_{n}" for k in "ab" for n in ("rps", "p50_ms", "p99_ms")} | {"ratio_b_over_a"}
    if Path("/proc/self/stat").exists():  # Linux: the CPU each request cost each server
        expected |= {"a_cpu_us", "b_cpu_us", "cpu_a_over_b"}
    assert set(figures) == expected
    assert all(figures[f"{key}_rps"] > 0 for key in "ab")
    assert "(b) answered 0 scrapes" not in out
