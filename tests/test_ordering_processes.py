"""Per-resource ordering in real `montra-hooks serve` processes: two on one SQLite file, two on PostgreSQL.

`tests/support/apps/ordered.py` is copied into tmp_path and served from there; its handlers (`ordered`, by
subscription; `holding`, by customer with hold_on_dead) append start and end lines with the resource, the
event, `superseded` and the time to `ordered.jsonl`. Each test reads that log and the store.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.dispatch import SECRET, read_log, runs, settled
from support.net import ThreadClients
from support.postgres import pg_query
from support.server import ServerProcess
from support.signing import signed_post
from support.wait import wait_until

from receiver.stores.open import is_postgres_url
from replay.cli import cli

Serve = Callable[..., ServerProcess]

ORDERED_APP = Path(__file__).resolve().parent / "support" / "apps" / "ordered.py"
BASE = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)

_clients = ThreadClients()


@pytest.fixture(autouse=True, scope="module")
def _close_clients() -> Iterator[None]:
    yield
    _clients.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`--db` for both servers: one SQLite file (absolute, so tests read it too) or one PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


def start_pair(serve: Serve, tmp_path: Path, db: str, *options: str) -> tuple[ServerProcess, ServerProcess]:
    shutil.copy(ORDERED_APP, tmp_path / "ordered.py")
    common = ("--app", "ordered:hooks", "--db", db, "--secret", SECRET, "--backoff", "0.05", *options)
    return serve(*common, name="a"), serve(*common, name="b")


def body(event_type: str, occurred: float | None, **data: Any) -> bytes:
    """An event `occurred` seconds after BASE (None: no timestamp)."""
    envelope: dict[str, Any] = {"type": event_type, "data": data}
    if occurred is not None:
        envelope["timestamp"] = (BASE + timedelta(seconds=occurred)).isoformat().replace("+00:00", "Z")
    return json.dumps(envelope).encode()


def send(server: ServerProcess, msg_id: str, payload: bytes) -> None:
    response = signed_post(server.url + "/webhooks", payload, SECRET, msg_id, client=_clients.get())
    assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})


def log_of(tmp_path: Path) -> list[dict[str, Any]]:
    return read_log(tmp_path / "ordered.jsonl")


def started(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Start lines by event, in the order they were written."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in log_of(tmp_path):
        if line["phase"] == "start":
            found[line["event"]].append(line)
    return found


def spans(tmp_path: Path) -> dict[str, list[tuple[float, float, str, int]]]:
    """(start, end, event, attempt) of every finished try, by resource, in start order."""
    opened: dict[tuple[str, int, int], float] = {}
    found: dict[str, list[tuple[float, float, str, int]]] = defaultdict(list)
    for line in log_of(tmp_path):
        key = (line["event"], line["attempt"], line["pid"])
        if line["phase"] == "start":
            opened[key] = line["time"]
        elif line["ref"] is not None:
            found[line["ref"]].append((opened.pop(key), line["time"], line["event"], line["attempt"]))
    return {ref: sorted(tries) for ref, tries in found.items()}


def seqs(db: str) -> dict[str, int]:
    if is_postgres_url(db):
        return dict(pg_query(db, "SELECT id, seq FROM events"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT id, seq FROM events").fetchall())


def show(db: str, event_id: str) -> str:
    result = CliRunner().invoke(cli, ["events", "show", event_id, "--db", db])
    assert result.exit_code == 0, result.output
    return result.output


def status(db: str, event_id: str, handler: str) -> tuple[str, int]:
    row = runs(db, event_id)[event_id, handler]
    return row["status"], row["attempts"]


def test_under_concurrent_load_runs_of_one_resource_never_overlap_and_start_in_occurred_order(
    serve: Serve, tmp_path: Path, db: str
) -> None:
    a, b = start_pair(serve, tmp_path, db)
    resources = [f"sub_{n}" for n in range(10)]
    # The first event of each resource blocks until `go` exists: every later one is stored while it runs, so the
    # order they must start in is known. Within a resource, events 2 and 3 occurred at the same instant: seq decides.
    for n, ref in enumerate(resources):
        send((a, b)[n % 2], f"evt_{ref}_0", body("subscription.updated", 0, id=ref, plan={"block": "go"}))
    wait_until(lambda: len(started(tmp_path)) == len(resources), what="the first run of each resource to start")

    later = [(ref, i) for ref in resources for i in range(1, 6)]
    random.Random(15).shuffle(later)  # sent out of order, concurrently, to both servers
    occurred = {1: 10.0, 2: 20.0, 3: 20.0, 4: 30.0, 5: 40.0}
    jobs = [
        (f"evt_{ref}_{i}", body("subscription.updated", occurred[i], id=ref, plan={"sleep": 0.005})) for ref, i in later
    ]
    # Events without a subscription reference run unordered: they start while every resource is blocked.
    jobs += [(f"evt_free_{n}", body("subscription.updated", 5.0, plan={})) for n in range(5)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: send((a, b)[n % 2], *jobs[n]), range(len(jobs))))

    free = [f"evt_free_{n}" for n in range(5)]
    wait_until(lambda: all(status(db, e, "ordered")[0] == "succeeded" for e in free), what="the unordered runs")
    assert set(started(tmp_path)) == {f"evt_{ref}_0" for ref in resources} | set(free)  # the rest wait
    held = show(db, "evt_sub_3_4")
    assert "ordered: pending, 0 attempt(s)" in held
    assert "waiting for evt_sub_3_0 (running, try 1)" in held

    (tmp_path / "go").touch()
    settled(db, len(resources) * 6 + len(free), frozenset({"succeeded"}))
    seq = seqs(db)
    by_resource = spans(tmp_path)
    for ref in resources:
        tries = by_resource[ref]
        expected = sorted((f"evt_{ref}_{i}" for i in range(6)), key=lambda e: (occurred.get(int(e[-1]), 0.0), seq[e]))
        assert [event for _, _, event, _ in tries] == expected, f"{ref} started out of order"
        for (_, end, _, _), (start, _, _, _) in itertools.pairwise(tries):
            assert end <= start, f"two runs of {ref} overlapped"
    assert not any(line["superseded"] for line in log_of(tmp_path) if line["phase"] == "start")
    assert a.proc is not None and b.proc is not None
    assert {line["pid"] for line in log_of(tmp_path)} <= {a.proc.pid, b.proc.pid}


def test_failed_holds_dead_releases_hold_on_dead_keeps_and_a_late_older_event_is_superseded(
    serve: Serve, tmp_path: Path, db: str
) -> None:
    a, b = start_pair(serve, tmp_path, db, "--max-attempts", "20")
    (tmp_path / "broken").touch()
    (tmp_path / "refuse").touch()
    # A run that fails (retried while `broken` exists) holds back its resource's later events.
    send(a, "evt_f1", body("subscription.updated", 1, id="sub_f", plan={"fail_while": "broken"}))
    send(b, "evt_f2", body("subscription.updated", 2, id="sub_f"))
    send(a, "evt_f3", body("subscription.updated", 3, id="sub_f"))
    # A dead run lets the next go; with hold_on_dead (customer events) it keeps them waiting.
    send(b, "evt_d1", body("subscription.updated", 1, id="sub_d", plan={"no_retry_while": "refuse"}))
    send(a, "evt_d2", body("subscription.updated", 2, id="sub_d"))
    send(b, "evt_h1", body("customer.updated", 1, id="cus_h", plan={"no_retry_while": "refuse"}))
    send(a, "evt_h2", body("customer.updated", 2, id="cus_h"))
    # The newer event about sub_s is handled first; the older one arrives late and runs superseded.
    send(b, "evt_s2", body("subscription.updated", 9, id="sub_s"))
    wait_until(lambda: status(db, "evt_s2", "ordered")[0] == "succeeded", what="the newer sub_s event")
    send(a, "evt_s1", body("subscription.updated", 1, id="sub_s"))

    wait_until(lambda: runs(db, "evt_f1")["evt_f1", "ordered"]["attempts"] >= 2, what="evt_f1 to fail twice")
    wait_until(lambda: status(db, "evt_d2", "ordered")[0] == "succeeded", what="evt_d2 after the dead evt_d1")
    wait_until(lambda: status(db, "evt_h1", "holding")[0] == "dead", what="evt_h1 to die")
    assert status(db, "evt_d1", "ordered") == ("dead", 1)
    for event_id, handler in (("evt_f2", "ordered"), ("evt_f3", "ordered"), ("evt_h2", "holding")):
        assert status(db, event_id, handler) == ("pending", 0)
    assert "evt_f2" not in started(tmp_path) and "evt_h2" not in started(tmp_path)
    # Between two tries (not while one runs): the line names the failed run and when it tries again.
    wait_until(lambda: "waiting for evt_f1 (failed, try " in show(db, "evt_f3"), what="evt_f3 shown waiting")
    assert "waiting for evt_h1 (dead, try 1)" in show(db, "evt_h2")

    (tmp_path / "broken").unlink()
    (tmp_path / "refuse").unlink()
    retried = CliRunner().invoke(cli, ["retry", "--db", db, "--id", "evt_h1"])
    assert retried.exit_code == 0, retried.output
    settled(db, 9, frozenset({"succeeded", "dead"}))
    assert {e: status(db, e, h)[0] for e, h in (("evt_f3", "ordered"), ("evt_h2", "holding"))} == {
        "evt_f3": "succeeded",
        "evt_h2": "succeeded",
    }
    assert "waiting for" not in show(db, "evt_f3")

    by_resource = spans(tmp_path)
    f1_tries = [t for t in by_resource["sub_f"] if t[2] == "evt_f1"]
    assert [event for _, _, event, _ in by_resource["sub_f"]] == ["evt_f1"] * len(f1_tries) + ["evt_f2", "evt_f3"]
    assert [event for _, _, event, _ in by_resource["sub_d"]] == ["evt_d1", "evt_d2"]
    assert [(event, attempt) for _, _, event, attempt in by_resource["cus_h"]] == [
        ("evt_h1", 1),
        ("evt_h1", 1),  # re-queued from dead: a fresh cycle of tries
        ("evt_h2", 1),
    ]
    for tries in by_resource.values():
        for (_, end, _, _), (start, _, _, _) in itertools.pairwise(tries):
            assert end <= start
    superseded = {line["event"]: line["superseded"] for line in log_of(tmp_path) if line["phase"] == "start"}
    assert (superseded["evt_s2"], superseded["evt_s1"], superseded["evt_f3"]) == (False, True, False)
