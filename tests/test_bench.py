"""The benchmark harness (`make bench`): its events, its baselines and its runner work, so the figures mean something.

No timing is asserted here: only that the events are valid and distinct, that the baselines do the work
they claim (verify, store, one row per event), and that a short ingest run stores every event it acknowledged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from support.db import query
from support.postgres import pg_query
from support.signing import signed_post

from receiver import Verifier

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Benchmarks are scripts run from bench/ (`python bench/ingest.py`), so they import each other by bare name.
    monkeypatch.syspath_prepend(str(BENCH))
    yield


def test_events_are_signed_unique_and_dealt_to_each_thread(tmp_path: Path) -> None:
    import ingest

    ingest.write_events(tmp_path / "events", 11, 2, "t")
    lines = [line for i in (1, 2) for line in (tmp_path / f"events.{i}").read_text().splitlines()]
    assert [len((tmp_path / f"events.{i}").read_text().splitlines()) for i in (1, 2)] == [6, 5]
    verifier = Verifier([ingest.SECRET])
    ids = []
    for line in lines:
        msg_id, timestamp, signature, body = line.split("\t")
        headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
        verifier.verify(body.encode(), headers)  # raises unless the signature is valid and fresh
        ids.append(msg_id)
    assert len(set(ids)) == 11


def test_the_instruction_count_sends_distinct_signed_webhooks_as_wrk_does() -> None:
    import ingest_instructions

    raw = ingest_instructions.requests(3, "t", 8000)
    verifier = Verifier([ingest_instructions.SECRET])
    ids = []
    for request in raw:
        top, _, body = request.partition(b"\r\n\r\n")
        lines = top.decode().split("\r\n")
        assert lines[0] == "POST /webhooks HTTP/1.1"
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
        assert int(headers["content-length"]) == len(body)
        verifier.verify(body, headers)  # raises unless the signature is valid and fresh
        ids.append(headers["webhook-id"])
    assert ids == ["msg_t_000000000", "msg_t_000000001", "msg_t_000000002"]


def test_bare_baseline_reads_the_body() -> None:
    import _baselines

    with TestClient(_baselines.bare_app()) as client:
        response = client.post("/webhooks", content=b'{"type": "customer.created"}')
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_naive_baseline_verifies_and_stores_each_event_once(tmp_path: Path, mode: str) -> None:
    import _baselines
    import ingest

    db = tmp_path / "naive.db"
    body = b'{"type": "refund.created", "timestamp": "2026-11-25T17:00:00Z", "data": {}}'
    with TestClient(_baselines.naive_app(str(db), ingest.SECRET, mode)) as client:
        first = signed_post("/webhooks", body, ingest.SECRET, "msg_1", client=client)
        again = signed_post("/webhooks", body, ingest.SECRET, "msg_1", client=client)
        forged = signed_post("/webhooks", body, "whsec_" + "A" * 32, "msg_2", client=client)
    assert (first.status_code, first.json()) == (200, {"id": "msg_1", "status": "stored"})
    assert (again.status_code, again.json()) == (200, {"id": "msg_1", "status": "duplicate"})
    assert (forged.status_code, forged.json()["error"]) == (401, "invalid_signature")
    assert query(db, "SELECT id, type, occurred_at, body FROM events") == [
        ("msg_1", "refund.created", "2026-11-25T17:00:00Z", body)
    ]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]


def test_runner_finds_every_benchmark_and_skips_helpers() -> None:
    import run

    names = run.discover()
    assert {"ingest", "ingest_instructions", "verify"} <= set(names)
    assert not {"run", "_baselines", "_loadgen"} & set(names)
    assert run.load("ingest") is not None


@pytest.mark.timeout(120)
def test_a_short_ingest_run_stores_every_acknowledged_event(capsys: pytest.CaptureFixture[str]) -> None:
    import ingest

    # The Python load generator, so the test needs no system package; main() raises if (b) or (c) lost an event.
    argv = ["--rounds", "1", "--seconds", "1", "--warmup", "1", "--connections", "4", "--load", "python"]
    figures = ingest.main(argv)
    out = capsys.readouterr().out
    assert "stored: every run's 2xx answers are rows" in out
    assert "WARNING" not in out
    assert {"a_rps", "b_rps", "c_rps", "c_p50_ms", "c_p99_ms", "ratio_c_over_a", "ratio_c_over_b"} <= set(figures)
    assert all(figures[f"{key}_rps"] > 0 for key in "abc")


@pytest.mark.timeout(120)
def test_a_short_hostile_run_stores_every_acknowledged_event(capsys: pytest.CaptureFixture[str]) -> None:
    import hostile

    # A few slow connections and the Python load generator: the harness works; the figures come from `make bench`.
    argv = ["--rounds", "1", "--seconds", "1", "--warmup", "1", "--connections", "4", "--slowloris", "20"]
    figures = hostile.main([*argv, "--load", "python"])  # raises if a server lost an acknowledged event
    out = capsys.readouterr().out
    assert "WARNING" not in out
    assert set(figures) == {
        "quiet_rps",
        "attacked_rps",
        "plain_rps",
        "ratio_attacked_over_quiet",
        "ratio_limits_over_plain",
    }
    assert all(figures[f"{key}_rps"] > 0 for key in ("quiet", "attacked", "plain"))


@pytest.mark.timeout(120)
def test_a_short_postgres_ingest_run_stores_every_acknowledged_event(
    capsys: pytest.CaptureFixture[str], postgres_server: str
) -> None:
    import ingest_postgres

    base = postgres_server  # without a server the test skips, or fails if MONTRA_TEST_POSTGRES_URL promised one
    argv = ["--rounds", "1", "--seconds", "1", "--warmup", "1", "--connections", "4", "--load", "python"]
    figures = ingest_postgres.main([*argv, "--postgres", base])  # raises if any store lost an acknowledged event
    out = capsys.readouterr().out
    assert "stored: every run's 2xx answers are rows in its store" in out
    assert "WARNING" not in out
    assert re.search(r"^ {4}\(c\)( +\d+\.\d\d){6}( +\d+\.\d{3}){2}$", out, re.MULTILINE), out  # the CPU table
    assert set(figures) == {
        *(f"{key}_{name}" for key in "abc" for name in ("rps", "p50_ms", "p99_ms")),
        "ratio_b_over_a",
        "ratio_c_over_a",
        "ratio_c_over_b",
    }
    assert all(figures[f"{key}_rps"] > 0 for key in "abc")
    schemas = re.findall(r"\bbench_[0-9a-f]{8}_[bc]\b", out)
    assert len(set(schemas)) == 2
    assert pg_query(base, "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)) == []


def test_without_a_postgres_server_the_benchmark_says_how_to_get_one_and_the_suite_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import run

    monkeypatch.setenv("MONTRA_BENCH_POSTGRES_URL", "postgresql:///montra_test?host=/nonexistent")
    assert run.main(["ingest_postgres"]) == 0
    out = capsys.readouterr().out
    (skipped,) = [line for line in out.splitlines() if line.startswith("ingest_postgres:")]
    assert re.fullmatch(
        r"ingest_postgres: skipped: no PostgreSQL server \(postgresql:///montra_test\?host=/nonexistent: [^;]+\); "
        r"to get one: set MONTRA_BENCH_POSTGRES_URL=postgresql://USER@HOST/DB, or run \.ci/run .*createdb montra_test`",
        skipped,
    ), skipped
    assert "ingest_postgres." not in out.split("== figures", 1)[1]  # no figures, and no crash
