"""`montra-hooks replay`: from a real store to real receiver processes, or through handlers in-process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook
from support.db import query
from support.server import MONTRA_HOOKS, ServerProcess

from receiver import sign
from receiver.stores.protocol import Incoming, iso
from receiver.stores.sqlite.store import SQLiteStore
from replay.cli import cli
from replay.report import Summary
from replay.send import Outgoing, Result, pump

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
T0 = 1_790_000_000.0  # received_at of the first seeded event (2026-09-21); each next one a minute later
# Bodies as a sender might format them: spacing, key order and non-ASCII must all come back byte for byte.
SEEDED = [
    ("msg_1", "customer.created", b'{"type":"customer.created","data":{"id":"cus_1","name":"Zo\xc3\xab"}}'),
    ("msg_2", "subscription.created", b'{ "type" : "subscription.created", "data": {"id": "sub_1"} }'),
    ("msg_3", "refund.created", b'{"data": {"id": "re_1"}, "type": "refund.created"}'),
    ("msg_4", "subscription.upgraded", b'{"type": "subscription.upgraded",\n "data": {"id": "sub_1"}}'),
    ("msg_5", "subscription.scheduled_change.created", b'{"type": "subscription.scheduled_change.created"}'),
    ("msg_6", "payment.succeeded", b'{"type": "payment.succeeded", "data": {"amount": 1200}}'),
]
SUBSCRIPTION_IDS = ["msg_2", "msg_4", "msg_5"]
REPLAYED = re.compile(r"^(?P<original>msg_\d)_r[0-9a-f]{8}$")


def seed(db: Path, events: Sequence[tuple[str, str, bytes]] = SEEDED, *, handlers: Sequence[str] = ()) -> None:
    """Store events as the receiver does (through SQLiteStore.ingest), signed as they arrived."""

    async def main() -> None:
        store = SQLiteStore(db)
        try:
            for n, (event_id, event_type, body) in enumerate(events):
                headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=event_id)}
                incoming = Incoming(event_id, event_type, None, T0 + 60 * n, headers, body, handlers)
                await store.ingest(incoming)
        finally:
            await store.close()

    asyncio.run(main())


def stored(db: Path) -> list[tuple[str, str, dict[str, str], bytes]]:
    rows = query(db, "SELECT id, type, headers, body FROM events ORDER BY seq")
    return [(id, type, json.loads(headers), bytes(body)) for id, type, headers, body in rows]


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["replay", *args], env={"MONTRA_HOOKS_SECRETS": None})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    db = tmp_path / "source.db"
    seed(db)
    return db


@pytest.fixture
def target(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("--secret", SECRET, "--db", "target.db", name="target")


def url(server: ServerProcess) -> str:
    return f"{server.url}/webhooks"


def test_replay_by_type_pattern_delivers_exactly_the_matching_events_byte_identical(
    source: Path, target: ServerProcess
) -> None:
    result = run("--db", str(source), "--type", "subscription.*", "--to", url(target), "--secret", SECRET)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Replayed 3 event(s) to {url(target)} in ")
    assert lines[1:4] == ["  by status: 200 x 3", "  by answer: stored x 3", lines[3]]
    assert re.fullmatch(r"  latency:   p50 \d+\.\d ms, p95 \d+\.\d ms", lines[3])
    assert lines[4:] == ["All 3 accepted."]
    originals = {event_id: body for event_id, _, body in SEEDED}
    delivered = stored(target.cwd / "target.db")
    assert sorted(headers["montra-replay-of"] for _, _, headers, _ in delivered) == SUBSCRIPTION_IDS
    for event_id, event_type, headers, body in delivered:
        match = REPLAYED.match(event_id)
        assert match and match["original"] == headers["montra-replay-of"]
        assert body == originals[match["original"]]
        assert event_type == dict((i, t) for i, t, _ in SEEDED)[match["original"]]
        # A fresh signature over the same bytes, which the reference library accepts.
        Webhook(SECRET).verify(body, headers)


def test_a_replay_of_a_replay_keeps_one_suffix_and_names_the_first_id(
    source: Path, target: ServerProcess, serve: Callable[..., ServerProcess]
) -> None:
    assert run("--db", str(source), "--id", "msg_1", "--to", url(target), "--secret", SECRET).exit_code == 0
    again = serve("--secret", SECRET, "--db", "again.db", name="again")
    result = run("--db", str(target.cwd / "target.db"), "--to", url(again), "--secret", SECRET)
    assert result.exit_code == 0, result.output
    ((event_id, _, headers, _),) = stored(again.cwd / "again.db")
    match = REPLAYED.match(event_id)
    assert (match and match["original"], headers["montra-replay-of"]) == ("msg_1", "msg_1")


def test_keep_id_sends_the_original_ids_and_counts_duplicates_apart(source: Path, target: ServerProcess) -> None:
    first = run("--db", str(source), "--id", "msg_1", "--id", "msg_3", "--to", url(target), "--secret", SECRET)
    assert first.exit_code == 0, first.output
    result = run("--db", str(source), "--to", url(target), "--secret", SECRET, "--keep-id", "--json")
    assert result.exit_code == 0, result.output
    *lines, summary = [json.loads(line) for line in result.output.splitlines()]
    assert {line["id"]: line["answer"] for line in lines} == {
        "msg_1": "stored", "msg_2": "stored", "msg_3": "stored", "msg_4": "stored", "msg_5": "stored",
        "msg_6": "stored",
    }  # fmt: skip
    again = run("--db", str(source), "--to", url(target), "--secret", SECRET, "--keep-id", "--json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output.splitlines()[-1])["summary"]
    assert (summary["total"], summary["accepted"], summary["failed"]) == (6, 6, 0)
    assert (summary["by_status"], summary["by_answer"]) == ({"200": 6}, {"duplicate": 6})
    ids = [event_id for event_id, *_ in stored(target.cwd / "target.db")]
    assert len(ids) == 8 and sorted(ids[2:]) == [f"msg_{n}" for n in range(1, 7)]


def test_dry_run_sends_nothing(source: Path, target: ServerProcess) -> None:
    result = run("--db", str(source), "--type", "subscription.*", "--to", url(target), "--secret", SECRET, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "seq 2: subscription.created [msg_2] as a new id",
        "seq 4: subscription.upgraded [msg_4] as a new id",
        "seq 5: subscription.scheduled_change.created [msg_5] as a new id",
        f"Dry run: 3 event(s) would go to {url(target)}; nothing was sent.",
    ]
    assert stored(target.cwd / "target.db") == []
    assert query(target.cwd / "target.db", "SELECT count(*) FROM rejections") == [(0,)]


def test_exit_codes_of_the_real_command(source: Path, target: ServerProcess, tmp_path: Path) -> None:
    def replay(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(MONTRA_HOOKS), "replay", "--db", str(source), *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)

    ok = replay("--to", url(target), "--secret", SECRET, "--limit", "2")
    assert (ok.returncode, ok.stdout.splitlines()[-1]) == (0, "All 2 accepted."), ok.stderr
    refused = replay("--to", url(target), "--secret", OTHER_SECRET, "--limit", "2")
    assert refused.returncode == 1
    assert refused.stdout.splitlines()[-1] == "2 of 2 event(s) not accepted."
    assert refused.stdout.splitlines()[1:3] == ["  by status: 401 x 2", "  by answer: invalid_signature x 2"]
    assert [line.split("  <-- ")[1].split(" (")[0] for line in refused.stderr.splitlines()] == [
        "[401] invalid_signature: no webhook-signature matches a configured secret"
    ] * 2
    usage = replay("--secret", SECRET)
    assert usage.returncode == 2
    assert usage.stderr.splitlines()[-1] == (
        "Error: Pass one target: --to URL (a running receiver) or --app MOD:HOOKS (your handlers, in this process)."
    )
    assert len(stored(target.cwd / "target.db")) == 2


def test_a_replay_into_its_own_receiver_stops_at_the_rows_seen_at_start(serve: Callable[..., ServerProcess]) -> None:
    server = serve("--secret", SECRET, "--db", "own.db")
    seed(server.cwd / "own.db")
    result = run("--db", str(server.cwd / "own.db"), "--to", url(server), "--secret", SECRET, "--concurrency", "1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "All 6 accepted."
    rows = stored(server.cwd / "own.db")
    assert [r[0] for r in rows[:6]] == [event_id for event_id, *_ in SEEDED]
    assert [REPLAYED.match(r[0])["original"] for r in rows[6:]] == [i for i, *_ in SEEDED]  # type: ignore[index]


def test_in_order_delivers_in_arrival_order(source: Path, target: ServerProcess) -> None:
    result = run("--db", str(source), "--to", url(target), "--secret", SECRET, "--in-order")
    assert result.exit_code == 0, result.output
    delivered = [headers["montra-replay-of"] for _, _, headers, _ in stored(target.cwd / "target.db")]
    assert delivered == [event_id for event_id, *_ in SEEDED]


def test_rate_limited_replay_delivers_everything(source: Path, target: ServerProcess) -> None:
    result = run("--db", str(source), "--to", url(target), "--secret", SECRET, "--rate", "200", "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert len(stored(target.cwd / "target.db")) == 6


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--id", "msg_3", "--id", "msg_1", "--id", "msg_404"], ["msg_1", "msg_3"]),
        (["--type", "subscription.upgraded", "--type", "refund.*"], ["msg_3", "msg_4"]),
        (["--type", "*", "--limit", "2"], ["msg_1", "msg_2"]),
        (["--since", iso(T0 + 120), "--until", iso(T0 + 240)], ["msg_3", "msg_4"]),
        # An ISO time with an offset: 150 s after T0, written in UTC+2.
        (["--since", datetime.fromtimestamp(T0 + 150, timezone(timedelta(hours=2))).isoformat()], ["msg_4"]),
        (["--status", "pending"], ["msg_5", "msg_6"]),
        (["--status", "unhandled", "--type", "subscription.*"], ["msg_2", "msg_4"]),
    ],
)
def test_filters_select_stored_rows(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    db = tmp_path / "source.db"
    seed(db, SEEDED[:4])
    seed(db, SEEDED[4:], handlers=["examples.handlers.audit"])  # pending runs: status "pending"
    # Arrival minutes: msg_1 at T0 ... msg_4 at T0+3 min, then msg_5 at T0 and msg_6 at T0+1 min (a second seed).
    result = run(
        "--db", str(db), *args, "--to", "http://127.0.0.1:9/webhooks", "--secret", SECRET, "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == expected


def test_json_prints_one_line_per_event_and_a_summary(source: Path, target: ServerProcess) -> None:
    result = run("--db", str(source), "--id", "msg_6", "--to", url(target), "--secret", SECRET, "--json")
    assert result.exit_code == 0, result.output
    line, summary = (json.loads(text) for text in result.output.splitlines())
    [(sent_as, *_)] = stored(target.cwd / "target.db")
    assert line.pop("ms") >= 0
    assert line == {
        "id": "msg_6", "replayed_as": sent_as, "type": "payment.succeeded", "seq": 6, "ok": True, "status": 200,
        "answer": "stored",
    }  # fmt: skip
    assert summary["summary"]["p50_ms"] == summary["summary"]["p95_ms"] >= 0
    assert {k: v for k, v in summary["summary"].items() if k not in ("p50_ms", "p95_ms", "seconds")} == {
        "total": 1, "accepted": 1, "failed": 0, "by_status": {"200": 1}, "by_answer": {"stored": 1},
    }  # fmt: skip


def test_replay_the_fixtures_of_a_folder(tmp_path: Path, target: ServerProcess) -> None:
    folder = tmp_path / "mine"
    (folder / "scenarios").mkdir(parents=True)
    (folder / "refund.created.json").write_text('{"type": "refund.created", "data": {"id": "re_1", "amount": 7}}')
    (folder / "scenarios" / "two.json").write_text(
        '{"steps": [{"as": "c", "type": "customer.created"},'
        ' {"type": "subscription.created", "set": {"data.customer_id": "{{c.data.id}}"}}]}'
    )
    result = run("--fixtures", str(folder), "--to", url(target), "--secret", SECRET, "--in-order", "--json")
    assert result.exit_code == 0, result.output
    *lines, _ = [json.loads(line) for line in result.output.splitlines()]
    delivered = stored(target.cwd / "target.db")
    assert [t for _, t, _, _ in delivered] == ["refund.created", "customer.created", "subscription.created"]
    # Fixture events are fresh: they go out under the ids they were built with, not as replays.
    assert [line["id"] for line in lines] == [line["replayed_as"] for line in lines] == [r[0] for r in delivered]
    assert all("montra-replay-of" not in headers for _, _, headers, _ in delivered)
    assert json.loads(delivered[0][3])["data"] == {"id": "re_1", "amount": 7}
    customer, subscription = (json.loads(body)["data"] for *_, body in delivered[1:])
    assert subscription["customer_id"] == customer["id"]


# In-process: --app ------------------------------------------------------------------------------

HANDLERS = """
from receiver import Event, Hooks

hooks = Hooks()
seen: list[tuple[str, str, str | None]] = []


@hooks.on("subscription.*")
async def on_subscription(event: Event) -> None:
    seen.append((event.id, event.type, event.headers.get("montra-replay-of")))


@hooks.on("refund.created")
def refuse_refunds(event: Event) -> None:
    raise ValueError("refunds are broken today")
"""


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A handler module in tmp_path, importable under a name unique to this test."""
    name = "replay_handlers_" + re.sub(r"\W", "_", request.node.name)
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HANDLERS))
    monkeypatch.syspath_prepend(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_in_process_replay_runs_the_matching_handlers(source: Path, handlers: str) -> None:
    result = run("--db", str(source), "--type", "subscription.*", "--app", f"{handlers}:hooks", "--json")
    assert result.exit_code == 0, result.output
    *lines, summary = [json.loads(line) for line in result.output.splitlines()]
    seen = sys.modules[handlers].seen
    assert sorted(original for _, _, original in seen) == SUBSCRIPTION_IDS
    assert all(REPLAYED.match(event_id)[1] == original for event_id, _, original in seen)  # type: ignore[index]
    assert {line["id"]: (line["status"], line["answer"], line["handlers"]) for line in lines} == {
        event_id: (None, "handled", [f"{handlers}.on_subscription"]) for event_id in SUBSCRIPTION_IDS
    }
    assert summary["summary"]["by_status"] == {"in-process": 3}


def test_in_process_replay_reports_handler_errors_and_exits_1(source: Path, handlers: str) -> None:
    result = run("--db", str(source), "--keep-id", "--app", f"{handlers}:hooks")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "--> refund.created [msg_3]  <-- [failed] 1 handler(s) failed on refund.created [msg_3]: "
        f"{handlers}.refuse_refunds (ValueError: refunds are broken today) "
        + re.search(r"\(\d+ ms\)$", result.stderr.splitlines()[0])[0]  # type: ignore[index]
    ]
    assert result.stdout.splitlines()[1:3] == [
        "  by status: in-process x 6",
        "  by answer: failed x 1, handled x 3, unhandled x 2",
    ]
    assert result.stdout.splitlines()[-1] == "1 of 6 event(s) not accepted."
    assert sorted(event_id for event_id, _, _ in sys.modules[handlers].seen) == SUBSCRIPTION_IDS


def test_in_process_dry_run_names_the_handlers_that_would_run(source: Path, handlers: str) -> None:
    result = run("--db", str(source), "--id", "msg_2", "--id", "msg_1", "--app", f"{handlers}:hooks", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "seq 1: customer.created [msg_1] as a new id -> no handler matches",
        f"seq 2: subscription.created [msg_2] as a new id -> {handlers}.on_subscription",
        f"Dry run: 2 event(s) would go to {handlers}:hooks (in-process); nothing was sent.",
    ]
    assert sys.modules[handlers].seen == []


# Usage errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Error: Pass one target: --to URL"),
        (["--to", "http://127.0.0.1:9/x", "--app", "m:hooks"], "Error: Pass one target: --to URL"),
        (
            ["--to", "http://127.0.0.1:9/x", "--fixtures", ".", "--id", "x"],
            "Error: --id, --since, --until and --status",
        ),
        (["--to", "http://127.0.0.1:9/x", "--in-order", "--concurrency", "4"], "Error: --in-order sends one event"),
        (["--to", "http://127.0.0.1:9/x", "--type", "sub*"], "Invalid value for --type: Bad event pattern 'sub*'"),
        (["--to", "http://127.0.0.1:9/x", "--status", "lost"], "Invalid value for '--status': 'lost' is not one of"),
        (
            ["--to", "http://127.0.0.1:9/x", "--since", "yesterday"],
            "Error: Invalid value for --since: 'yesterday' is neither",
        ),
        (["--to", "http://192.0.2.1/webhooks"], "Error: 192.0.2.1 is not on loopback: pass --allow-remote"),
        (["--to", "http://127.0.0.1:9/x", "--db", "missing.db"], "Error: No event store at missing.db"),
        (["--app", "nowhere_at_all:hooks"], "Invalid value for --app: cannot import 'nowhere_at_all'"),
    ],
)
def test_usage_errors_exit_2(source: Path, args: list[str], message: str) -> None:
    db_args = [] if "--db" in args else ["--db", str(source)]
    result = run(*db_args, *args, "--secret", SECRET)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# The sender's building blocks -------------------------------------------------------------------


def test_pump_holds_at_most_twice_the_concurrency_and_reads_the_source_lazily() -> None:
    """Memory does not grow with the source: it is read only as fast as results come back."""
    pulled = finished = in_flight = most_in_flight = most_held = 0

    async def events() -> AsyncIterator[Outgoing]:
        nonlocal pulled, most_held
        for n in range(2000):
            pulled += 1
            most_held = max(most_held, pulled - finished)
            yield Outgoing(f"msg_{n}", "customer.created", b"{}")

    async def send(event: Outgoing) -> Result:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return Result(event, event.id, True, 200, "stored", 1.0)

    def on_result(result: Result) -> None:
        nonlocal finished
        finished += 1

    asyncio.run(pump(events(), send, on_result=on_result, concurrency=4))
    assert (pulled, finished, most_in_flight) == (2000, 2000, 4)
    assert most_held <= 2 * 4 + 1


def test_summary_percentiles_are_exact_up_to_the_reservoir_and_memory_is_bounded() -> None:
    event = Outgoing("msg_1", "customer.created", b"{}")
    summary = Summary(reservoir=100, seed=1)
    for ms in range(1, 101):
        summary.add(Result(event, "msg_1", True, 200, "stored", float(ms)))
    assert (summary.percentile(0.5), summary.percentile(0.95), summary.percentile(1.0)) == (50.0, 95.0, 100.0)
    for _ in range(10_000):
        summary.add(Result(event, "msg_1", False, None, None, 5.0, error="refused"))
    assert len(summary._latencies) == 100
    assert summary.percentile(0.5) == 5.0  # the sample follows the distribution: now almost all 5 ms
    assert (summary.total, summary.failed) == (10_100, 10_000)
    assert summary.by_status == {"200": 100, "no answer": 10_000}
    assert summary.by_answer == {"stored": 100, "no answer": 10_000}
