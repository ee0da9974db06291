"""The dispatcher in real `montra-hooks serve --app recording:hooks` processes, crashes and shutdowns included.

`tests/support/apps/recording.py` is copied into tmp_path and served from there (the working
directory importable, as uvicorn does); its handlers append start/end lines with their pid and
times to `runs.jsonl`, which is what these tests read to see what ran, where and when.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from support.dispatch import SECRET, envelope, event_status, install_recording_app, read_log, runs, settled
from support.net import ThreadClients
from support.server import ServerProcess
from support.signing import signed_post
from support.wait import wait_until

from replay.cli import cli

Serve = Callable[..., ServerProcess]


def start(serve: Serve, tmp_path: Path, *options: str, name: str | None = None) -> ServerProcess:
    extra = {"name": name} if name else {}
    return serve("--app", "recording:hooks", "--db", "events.db", "--secret", SECRET, *options, **extra)


_clients = ThreadClients()


@pytest.fixture(autouse=True, scope="module")
def _close_clients() -> Iterator[None]:
    yield
    _clients.close()


def send(server: ServerProcess, msg_id: str, event_type: str, **data: Any) -> httpx.Response:
    return signed_post(server.url + "/webhooks", envelope(event_type, **data), SECRET, msg_id, client=_clients.get())


def tries(log: list[dict[str, Any]], phase: str = "start") -> dict[tuple[str, str], list[int]]:
    """Attempt numbers per (event, handler), in the order they were logged."""
    found: dict[tuple[str, str], list[int]] = defaultdict(list)
    for line in log:
        if line["phase"] == phase:
            found[line["event"], line["handler"]].append(line["attempt"])
    return dict(found)


def test_routing_retries_dead_and_no_retry(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path, "--backoff", "0.02", "--max-attempts", "3")
    db = tmp_path / "events.db"
    sent = [
        ("msg_up", "subscription.upgraded", {}),
        ("msg_deep", "subscription.scheduled_change.created", {}),
        ("msg_refund", "refund.created", {}),
        ("msg_lookalike", "subscriptions.created", {}),
        ("msg_flaky", "customer.updated", {"plan": {"everything": {"fail_until": 3}}}),
        ("msg_broken", "usage.reported", {"plan": {"everything": {"fail_until": 99}}}),
        ("msg_limited", "payment.failed", {"plan": {"limited": {"fail_until": 99}}}),
        ("msg_refused", "meter.created", {"plan": {"everything": {"no_retry_while": "refuse"}}}),
    ]
    (tmp_path / "refuse").touch()
    for msg_id, event_type, data in sent:
        response = send(server, msg_id, event_type, **data)
        assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})
    rows = settled(db, 13)
    wait_until(lambda: len([line for line in read_log(log_path) if line["phase"] == "dead"]) == 3, what="on_dead")
    log = read_log(log_path)
    assert tries(log) == {
        ("msg_up", "exact"): [1],
        ("msg_up", "prefix"): [1],
        ("msg_up", "everything"): [1],
        ("msg_deep", "prefix"): [1],
        ("msg_deep", "everything"): [1],
        ("msg_refund", "refunds"): [1],
        ("msg_refund", "everything"): [1],
        ("msg_lookalike", "everything"): [1],
        ("msg_flaky", "everything"): [1, 2, 3],
        ("msg_broken", "everything"): [1, 2, 3],
        ("msg_limited", "limited"): [1, 2],  # the handler's max_attempts=2 beats --max-attempts 3
        ("msg_limited", "everything"): [1],
        ("msg_refused", "everything"): [1],
    }
    assert tries(log, "end") == tries(log)  # every try that started ended
    outcome = {key: (row["status"], row["attempts"]) for key, row in rows.items()}
    assert outcome.pop(("msg_broken", "everything")) == ("dead", 3)
    assert outcome.pop(("msg_limited", "limited")) == ("dead", 2)
    assert outcome.pop(("msg_refused", "everything")) == ("dead", 1)
    assert outcome.pop(("msg_flaky", "everything")) == ("succeeded", 3)
    assert set(outcome.values()) == {("succeeded", 1)}
    broken = rows["msg_broken", "everything"]["last_error"]
    assert broken.startswith("Traceback (most recent call last):\n")
    assert broken.endswith("ValueError: everything failed try 3 of msg_broken\n")
    assert rows["msg_refused", "everything"]["last_error"].endswith(
        "NoRetry: everything refused msg_refused while refuse exists\n"
    )
    dead = sorted((line["event"], line["handler"], line["error"]) for line in log if line["phase"] == "dead")
    assert dead == [
        ("msg_broken", "everything", broken),
        ("msg_limited", "limited", rows["msg_limited", "limited"]["last_error"]),
        ("msg_refused", "everything", rows["msg_refused", "everything"]["last_error"]),
    ]
    statuses = {msg_id: event_status(db, msg_id) for msg_id, _, _ in sent}
    assert statuses == {
        **{msg_id: "handled" for msg_id in ("msg_up", "msg_deep", "msg_refund", "msg_lookalike", "msg_flaky")},
        **{msg_id: "dead" for msg_id in ("msg_broken", "msg_limited", "msg_refused")},
    }

    # A resend re-queues the dead run only (a fresh cycle), and answers `duplicate`.
    (tmp_path / "refuse").unlink()
    response = send(server, "msg_refused", "meter.created", plan={"everything": {"no_retry_while": "refuse"}})
    assert (response.status_code, response.json()) == (200, {"id": "msg_refused", "status": "duplicate"})
    response = send(server, "msg_up", "subscription.upgraded")
    assert (response.status_code, response.json()) == (200, {"id": "msg_up", "status": "duplicate"})
    wait_until(lambda: runs(db)["msg_refused", "everything"]["status"] == "succeeded", what="the re-queued run")
    assert _clients.get().get(server.url + "/healthz").status_code == 200
    log = read_log(log_path)
    assert tries(log)["msg_refused", "everything"] == [1, 1]
    assert tries(log)["msg_up", "everything"] == [1]  # succeeded runs are left alone
    assert (runs(db)["msg_refused", "everything"]["attempts"], event_status(db, "msg_refused")) == (1, "handled")


def test_the_ack_returns_while_a_slow_handler_still_runs(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path)
    response = send(server, "msg_slow", "customer.created", plan={"everything": {"block": "go"}})
    assert (response.status_code, response.json()) == (200, {"id": "msg_slow", "status": "stored"})
    wait_until(lambda: tries(read_log(log_path)), what="the handler to start")
    assert tries(read_log(log_path), "end") == {}  # answered, and the handler has not finished
    assert runs(tmp_path / "events.db")["msg_slow", "everything"]["status"] == "running"
    assert event_status(tmp_path / "events.db", "msg_slow") == "pending"
    (tmp_path / "go").touch()
    row = settled(tmp_path / "events.db", 1)["msg_slow", "everything"]
    assert (row["status"], row["attempts"]) == ("succeeded", 1)


def test_a_run_killed_mid_try_is_completed_after_restart(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path, "--lease", "1")
    first_pid = server.proc.pid if server.proc else 0
    response = send(server, "msg_kill", "customer.created", plan={"everything": {"sleep_first": 60}})
    assert response.json() == {"id": "msg_kill", "status": "stored"}
    wait_until(lambda: tries(read_log(log_path)), what="the handler to start")
    server.kill()
    server.start()  # a lease of 1 s: the new process takes the run over about a second after the old lease
    row = settled(tmp_path / "events.db", 1)["msg_kill", "everything"]
    assert (row["status"], row["attempts"], row["lease_owner"]) == ("succeeded", 2, None)
    log = read_log(log_path)
    assert [(line["phase"], line["attempt"], line["pid"] == first_pid) for line in log] == [
        ("start", 1, True),  # killed before its end
        ("start", 2, False),
        ("end", 2, False),
    ]


def test_a_try_killed_with_its_process_is_in_the_history_as_crashed(serve: Serve, tmp_path: Path) -> None:
    """`events show` lists the try the kill ended (`crashed`, by the first process) and the one that succeeded."""
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path, "--lease", "1")
    send(server, "msg_kill", "customer.created", plan={"everything": {"sleep_first": 60}})
    wait_until(lambda: tries(read_log(log_path)), what="the handler to start")
    first_owner = runs(tmp_path / "events.db")["msg_kill", "everything"]["lease_owner"]
    server.kill()
    server.start()
    settled(tmp_path / "events.db", 1)
    shown = CliRunner().invoke(cli, ["events", "show", "msg_kill", "--db", str(tmp_path / "events.db"), "--json"])
    assert shown.exit_code == 0, shown.output
    attempts = json.loads(shown.stdout)["attempts"]
    assert [(a["handler"], a["attempt"], a["outcome"], a["finished_at"]) for a in attempts] == [
        ("everything", 1, "crashed", None),
        ("everything", 2, "succeeded", attempts[1]["finished_at"]),
    ]
    assert attempts[0]["owner"] == first_owner
    assert attempts[0]["error"] == f"The receiver's process died while this handler ran (try 1, process {first_owner})."
    assert attempts[1]["owner"] != first_owner and attempts[1]["finished_at"] is not None


def test_sigterm_lets_running_handlers_finish_and_leaves_the_rest_pending(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path)
    db = tmp_path / "events.db"
    # More events than the dispatcher runs at once (16): the rest are not claimed before the shutdown.
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: send(server, f"msg_{n:02d}", "customer.created", plan={"*": {"block": "go"}}), range(30))
        )
    assert {a.status_code for a in answers} == {200}
    wait_until(lambda: tries(read_log(log_path)), what="a handler to start")
    assert server.proc is not None
    server.proc.terminate()
    wait_until(lambda: "Waiting for application shutdown." in server.output(), what="the shutdown to begin")
    (tmp_path / "go").touch()  # the running handlers may finish now, within the grace period
    # uvicorn re-raises the SIGTERM it handled once its shutdown is complete.
    assert server.proc.wait(timeout=30) == -signal.SIGTERM
    assert "Application shutdown complete." in server.output()
    started = {event_id for event_id, _ in tries(read_log(log_path))}
    final = {event_id: (row["status"], row["attempts"], row["lease_owner"]) for (event_id, _), row in runs(db).items()}
    assert 1 <= len(started) < 30
    assert {final[event_id] for event_id in started} == {("succeeded", 1, None)}
    assert {final[event_id] for event_id in set(final) - started} == {("pending", 0, None)}
    assert "interrupting" not in server.output()


@pytest.mark.timeout(120)
def test_two_processes_on_one_database_never_run_a_run_at_once(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    first = start(serve, tmp_path, "--backoff", "0.01", name="first")
    second = start(serve, tmp_path, "--backoff", "0.01", name="second")
    db = tmp_path / "events.db"
    count = 300
    # `everything` succeeds at once; `prefix` fails its first try, so its retries are up for grabs in both processes.
    plan = {"everything": {"sleep": 0.002}, "prefix": {"fail_until": 2, "sleep": 0.002}}
    servers = itertools.cycle([first, second])
    jobs = [(next(servers), f"msg_{n:04d}") for n in range(count)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: send(job[0], job[1], "subscription.created", plan=plan).status_code, jobs))
    assert answers == [200] * count
    rows = settled(db, 2 * count)
    assert {(row["status"], row["attempts"]) for (_, handler), row in rows.items() if handler == "everything"} == {
        ("succeeded", 1)
    }
    assert {(row["status"], row["attempts"]) for (_, handler), row in rows.items() if handler == "prefix"} == {
        ("succeeded", 2)
    }
    log = read_log(log_path)
    intervals: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    opened: dict[tuple[str, str, int, int], float] = {}
    for line in log:
        key = (line["event"], line["handler"], line["attempt"], line["pid"])
        if line["phase"] == "start":
            opened[key] = line["time"]
        elif line["phase"] == "end":
            intervals[line["event"], line["handler"]].append((opened.pop(key), line["time"]))
    assert opened == {}  # every start has its end
    for key, spans in intervals.items():
        spans.sort()
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"{key} ran twice at once: {spans}"
    ends = Counter((line["event"], line["handler"], line["outcome"]) for line in log if line["phase"] == "end")
    assert set(ends.values()) == {1}  # every try ran exactly once: one success per run, one failure for `prefix`
    assert len(ends) == 3 * count
    assert {line["pid"] for line in log} == {first.proc.pid, second.proc.pid}  # type: ignore[union-attr]
    # The two really competed: some runs had their tries in both processes.
    places: dict[tuple[str, str], set[int]] = defaultdict(set)
    for line in log:
        places[line["event"], line["handler"]].add(line["pid"])
    assert any(len(pids) == 2 for pids in places.values())


def test_retry_command_hands_dead_runs_to_a_running_receiver(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path, "--backoff", "0.02")
    db = tmp_path / "events.db"
    (tmp_path / "refuse").touch()
    for n in range(3):
        send(server, f"msg_{n}", "discount.created", plan={"everything": {"no_retry_while": "refuse"}})
    settled(db, 3)
    runner = CliRunner()
    listed = runner.invoke(cli, ["events", "list", "--db", str(db), "--status", "dead", "--json"])
    assert sorted(json.loads(line)["id"] for line in listed.output.splitlines()) == ["msg_0", "msg_1", "msg_2"]
    shown = runner.invoke(cli, ["events", "show", "msg_1", "--db", str(db)])
    assert "\neverything: dead, 1 attempt(s)\n  Traceback (most recent call last):\n" in shown.output
    assert shown.output.endswith("NoRetry: everything refused msg_1 while refuse exists\n")

    (tmp_path / "refuse").unlink()
    retried = runner.invoke(cli, ["retry", "--db", str(db), "--id", "msg_0", "--id", "msg_2"])
    assert retried.output == "Re-queued 2 run(s); a running receiver picks them up within a second.\n"
    wait_until(
        lambda: (
            {k[0]: r["status"] for k, r in runs(db).items()}
            == {"msg_0": "succeeded", "msg_1": "dead", "msg_2": "succeeded"}
        ),
        what="the running receiver to pick up the re-queued runs",
    )
    assert tries(read_log(log_path)) == {
        ("msg_0", "everything"): [1, 1],
        ("msg_1", "everything"): [1],
        ("msg_2", "everything"): [1, 1],
    }
    unhandled = runner.invoke(cli, ["events", "list", "--db", str(db), "--status", "dead", "--json"])
    assert [json.loads(line)["id"] for line in unhandled.output.splitlines()] == ["msg_1"]


def test_a_renewed_lease_keeps_a_long_run_from_the_other_process(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    first = start(serve, tmp_path, "--lease", "1", name="first")
    start(serve, tmp_path, "--lease", "1", name="second")
    # The handler runs for several leases: only renewal keeps the second process (polling every second) off it.
    send(first, "msg_long", "customer.created", plan={"everything": {"sleep": 2.5}})
    row = settled(tmp_path / "events.db", 1)["msg_long", "everything"]
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert [(line["phase"], line["pid"]) for line in read_log(log_path)] == [
        ("start", first.proc.pid),  # type: ignore[union-attr]
        ("end", first.proc.pid),  # type: ignore[union-attr]
    ]


def test_a_process_killed_in_the_last_try_leaves_the_run_dead(serve: Serve, tmp_path: Path) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, tmp_path, "--lease", "1", "--max-attempts", "1")
    send(server, "msg_last", "customer.created", plan={"everything": {"sleep_first": 60}})
    wait_until(lambda: tries(read_log(log_path)), what="the handler to start")
    first_owner = runs(tmp_path / "events.db")["msg_last", "everything"]["lease_owner"]
    assert first_owner.split(":")[1] == str(server.proc.pid)  # type: ignore[union-attr]
    server.kill()
    server.start()
    row = settled(tmp_path / "events.db", 1)["msg_last", "everything"]
    assert (row["status"], row["attempts"]) == ("dead", 1)
    assert row["last_error"] == (
        f"The receiver's process died while this handler ran (try 1 of 1, process {first_owner}): it ended "
        "without an outcome (os._exit, a signal, a segfault or the out-of-memory killer) and its lease expired. "
        "No try is left: fix the handler, then re-queue the run with `montra-hooks retry`."
    )
    wait_until(lambda: [line for line in read_log(log_path) if line["phase"] == "dead"], what="on_dead")
    assert [(line["phase"], line["attempt"]) for line in read_log(log_path)] == [("start", 1), ("dead", 1)]


def test_the_dispatch_benchmark_measures_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import dispatch as bench  # bench/dispatch.py: a script folder, imported by bare name as bench/run.py does

    latency = bench.measure_latency(tmp_path, 5)
    assert set(latency) == {"latency_p50_ms", "latency_p99_ms", "latency_lost"}
    assert latency["latency_lost"] == 0  # every acknowledged event reached its handler
    assert bench.measure_throughput(tmp_path, 200)["runs_per_s"] > 0
    assert runs(tmp_path / "throughput.db").keys() == {(f"msg_run_{n:07d}", "noop") for n in range(200)}
    assert {row["status"] for row in runs(tmp_path / "throughput.db").values()} == {"succeeded"}
