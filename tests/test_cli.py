"""`montra-hooks` commands on a real store, through click's CliRunner: events, retry, prune, serve's checks, help."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from support.db import query

from receiver.stores.protocol import Incoming
from receiver.stores.sqlite.store import SQLiteStore
from replay.cli import cli

DAY = 86400.0
# (id, type, handlers and the status each run ends in, age in days), in arrival order.
EVENTS: list[tuple[str, str, dict[str, str], float]] = [
    ("evt_old", "customer.created", {}, 40),
    ("evt_up", "subscription.upgraded", {"h.grant": "dead"}, 1),
    ("evt_sched", "subscription.scheduled_change.created", {"h.audit": "failed"}, 0.5),
    ("evt_refund", "refund.created", {"h.audit": "succeeded"}, 0.1),
    ("evt_pay", "payment.succeeded", {}, 0),
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store holding EVENTS, their runs set to the statuses above, and one rejection."""
    path = tmp_path / "events.db"
    now = time.time()

    async def fill() -> None:
        store = SQLiteStore(path)
        for event_id, event_type, runs, age in EVENTS:
            body = json.dumps({"type": event_type, "data": {"id": event_id}}).encode()
            headers = {"webhook-id": event_id, "authorization": "Bearer t", "x-note": "n"}
            await store.ingest(Incoming(event_id, event_type, None, now - age * DAY, headers, body, list(runs)))
        await store.close()

    asyncio.run(fill())
    with sqlite3.connect(path) as conn:
        for event_id, _, runs, _ in EVENTS:
            for handler, status in runs.items():
                error = f"RuntimeError: {handler} broke" if status != "succeeded" else None
                conn.execute(
                    "UPDATE handler_runs SET status = ?, attempts = 3, last_error = ? "
                    "WHERE event_id = ? AND handler = ?",
                    (status, error, event_id, handler),
                )
    conn.close()
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit 2, no traceback, and exactly one `Error:` line that says what is wrong."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0]


def listed(output: str) -> list[str]:
    """The ids in a listing: its rows, between the header and the blank line before a footer."""
    rows = output.split("\n\n")[0].splitlines()[1:]
    return [line.split()[1] for line in rows]


def test_events_list_table(db: Path) -> None:
    output = ok("events", "list", "--db", str(db))
    header, *rows = output.splitlines()
    assert header.split() == ["SEQ", "ID", "TYPE", "STATUS", "RECEIVED"]
    assert [row.split()[:4] for row in rows] == [
        ["5", "evt_pay", "payment.succeeded", "unhandled"],
        ["4", "evt_refund", "refund.created", "handled"],
        ["3", "evt_sched", "subscription.scheduled_change.created", "failed"],
        ["2", "evt_up", "subscription.upgraded", "dead"],
        ["1", "evt_old", "customer.created", "unhandled"],
    ]


def test_events_list_json(db: Path) -> None:
    lines = [json.loads(line) for line in ok("events", "list", "--db", str(db), "--json").splitlines()]
    assert [e["id"] for e in lines] == ["evt_pay", "evt_refund", "evt_sched", "evt_up", "evt_old"]
    first = lines[0]
    assert set(first) == {"seq", "id", "type", "status", "occurred_at", "received_at", "headers", "body"}
    assert json.loads(first["body"]) == {"type": "payment.succeeded", "data": {"id": "evt_pay"}}
    assert first["headers"] == {"webhook-id": "evt_pay", "authorization": "[redacted]", "x-note": "n"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--type", "subscription.*"], ["evt_sched", "evt_up"]),
        (["--type", "subscription.upgraded"], ["evt_up"]),
        (["--type", "subscription.*", "--type", "refund.created"], ["evt_refund", "evt_sched", "evt_up"]),
        (["--type", "*"], ["evt_pay", "evt_refund", "evt_sched", "evt_up", "evt_old"]),
        (["--status", "dead"], ["evt_up"]),
        (["--status", "failed", "--status", "handled"], ["evt_refund", "evt_sched"]),
        (["--since", "7d"], ["evt_pay", "evt_refund", "evt_sched", "evt_up"]),
        (["--since", "12h"], ["evt_pay", "evt_refund"]),
        (["--limit", "2"], ["evt_pay", "evt_refund"]),
        (["--type", "subscription.*", "--status", "failed", "--since", "2d", "--limit", "5"], ["evt_sched"]),
    ],
)
def test_events_list_filters(db: Path, options: list[str], expected: list[str]) -> None:
    output = ok("events", "list", "--db", str(db), *options)
    assert listed(output) == expected


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--type", "subscription"], "--type subscription"),
        (["--status", "dead", "--ref", "cus_nope"], "--status dead --ref cus_nope"),
        (["--handler", "h.nope"], "--handler h.nope"),
    ],
)
def test_events_list_matching_nothing_exits_1_naming_the_filter(db: Path, options: list[str], named: str) -> None:
    """Nothing matched is not a success: a script can tell, and the message says which filter to loosen."""
    result = invoke("events", "list", "--db", str(db), *options)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"No events match {named} in {db}.\n"


def test_events_list_since_an_iso_time(db: Path) -> None:
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed(ok("events", "list", "--db", str(db), "--since", since)) == [
        "evt_pay",
        "evt_refund",
        "evt_sched",
        "evt_up",
    ]


def test_db_from_the_environment(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONTRA_HOOKS_DB", str(db))
    assert listed(ok("events", "list", "--limit", "1")) == ["evt_pay"]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--type", "sub*"], "Bad event pattern"),
        (["--since", "yesterday"], "neither a time nor a duration"),
        (["--status", "lost"], "lost"),
        (["--limit", "0"], "0"),
    ],
)
def test_events_list_bad_options(db: Path, options: list[str], fragment: str) -> None:
    assert_usage_error(invoke("events", "list", "--db", str(db), *options), fragment)


def test_events_show(db: Path) -> None:
    output = ok("events", "show", "evt_up", "--db", str(db))
    lines = output.splitlines()
    assert lines[0] == "subscription.upgraded [evt_up]  seq 2  dead"
    assert lines[1].startswith("received ")
    assert "  authorization: [redacted]" in lines
    assert "  webhook-id: evt_up" in lines
    assert '  "type": "subscription.upgraded",' in lines  # the body, pretty-printed
    assert "h.grant: dead, 3 attempt(s)" in lines
    assert "  RuntimeError: h.grant broke" in lines


def test_events_show_json(db: Path) -> None:
    shown = json.loads(ok("events", "show", "evt_sched", "--db", str(db), "--json"))
    assert (shown["id"], shown["type"], shown["status"], shown["seq"]) == (
        "evt_sched",
        "subscription.scheduled_change.created",
        "failed",
        3,
    )
    ((run,),) = [shown["runs"]]
    assert (run["event_id"], run["handler"], run["status"], run["attempts"], run["last_error"]) == (
        "evt_sched",
        "h.audit",
        "failed",
        3,
        "RuntimeError: h.audit broke",
    )


def test_events_show_unknown_id(db: Path) -> None:
    # Exit 1, as any selection that matches nothing: the id is not stored (usage errors are 2).
    missing = invoke("events", "show", "evt_nope", "--db", str(db))
    assert missing.exit_code == 1
    assert missing.stderr.splitlines() == [
        f"Error: No event 'evt_nope' in {db}: `montra-hooks events list` shows what is stored."
    ]


def test_prune(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO rejections (received_at, reason, headers) VALUES ('2020-01-01T00:00:00.000000Z', 'x', '{}')"
        )
    conn.close()
    assert ok("prune", "--older-than", "30d", "--db", str(db)) == "1 events, 0 handler_runs, 1 rejections deleted.\n"
    assert [row[0] for row in query(db, "SELECT id FROM events ORDER BY seq")] == [e[0] for e in EVENTS[1:]]
    assert ok("prune", "--older-than", "11h", "--db", str(db)) == "2 events, 2 handler_runs, 0 rejections deleted.\n"
    assert query(db, "SELECT count(*) FROM handler_runs") == [(1,)]


def test_prune_dry_run_counts_and_deletes_nothing(db: Path) -> None:
    before = query(db, "SELECT count(*) FROM events")
    dry = ok("prune", "--older-than", "11h", "--dry-run", "--db", str(db))
    assert dry == "3 events, 2 handler_runs, 0 rejections would be deleted (dry run).\n"
    assert query(db, "SELECT count(*) FROM events") == before
    assert ok("prune", "--older-than", "11h", "--db", str(db)) == "3 events, 2 handler_runs, 0 rejections deleted.\n"


@pytest.mark.parametrize("duration", ["30", "d30", "30 days", "-1d", "1y", ""])
def test_prune_bad_duration(db: Path, duration: str) -> None:
    assert_usage_error(invoke("prune", "--older-than", duration, "--db", str(db)), "is not a duration")
    assert query(db, "SELECT count(*) FROM events") == [(5,)]


def test_retry_matching_nothing_exits_1_and_changes_nothing(db: Path) -> None:
    result = invoke("retry", "--db", str(db), "--id", "evt_refund")  # succeeded runs are not re-run
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.startswith(f"No failed or dead runs match --id evt_refund in {db}: nothing was re-queued.")
    assert query(db, "SELECT event_id FROM handler_runs WHERE status = 'pending'") == []


@pytest.mark.parametrize(
    ("options", "count", "requeued"),
    [
        ([], 2, {"evt_up", "evt_sched"}),
        (["--status", "dead"], 1, {"evt_up"}),
        (["--status", "failed"], 1, {"evt_sched"}),
        (["--id", "evt_sched"], 1, {"evt_sched"}),
        (["--handler", "h.grant"], 1, {"evt_up"}),
    ],
)
def test_retry(db: Path, options: list[str], count: int, requeued: set[str]) -> None:
    output = ok("retry", "--db", str(db), *options)
    assert output.startswith(f"Re-queued {count} run(s)")
    pending = query(db, "SELECT event_id, attempts FROM handler_runs WHERE status = 'pending'")
    assert {event_id for event_id, _ in pending} == requeued
    # A dead run gets a fresh cycle of attempts; a failed one keeps its count.
    assert dict(pending) == {e: (0 if e == "evt_up" else 3) for e in requeued}
    statuses = dict(query(db, "SELECT id, status FROM events"))
    assert {e for e in requeued if statuses[e] == "pending"} == requeued


@pytest.mark.parametrize(
    "command",
    [["events", "list"], ["events", "show", "evt_1"], ["retry"], ["prune", "--older-than", "1d"]],
    ids=lambda c: " ".join(c),
)
def test_missing_db(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nowhere.db"
    assert_usage_error(invoke(*command, "--db", str(missing)), f"No event store at {missing}")
    assert not missing.exists()  # looking does not create it


def test_serve_refuses_a_public_host_without_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONTRA_HOOKS_SECRETS", raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke("serve", "--host", "0.0.0.0", "--db", str(tmp_path / "events.db"))
    assert_usage_error(result, "No webhook secret", "--secret")
    assert list(tmp_path.iterdir()) == []  # refused before creating a dev secret or a database


def test_serve_refuses_a_database_it_cannot_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "serve", "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "--db", str(tmp_path / "no/dir/x.db")
    )
    assert_usage_error(result, "Cannot open the event store")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_help_lists_every_command() -> None:
    output = ok("--help")
    assert {"serve", "events", "retry", "prune"} <= set(cli.commands)
    for name, command in cli.commands.items():
        assert f"  {name} " in output or output.rstrip().endswith(f"  {name}"), name
        assert not command.hidden


@pytest.mark.parametrize("command", _commands(cli), ids=lambda c: " ".join(c))
def test_every_command_help_has_an_example(command: tuple[str, ...]) -> None:
    output = ok(*command, "--help")
    assert "Example" in output
    assert f"montra-hooks {' '.join(command)}" in output


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.10.0.7", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_which_hosts_are_loopback(host: str, expected: bool) -> None:
    from receiver.loopback import is_loopback

    assert is_loopback(host) is expected


def test_events_list_until(db: Path) -> None:
    assert listed(ok("events", "list", "--db", str(db), "--until", "12h")) == ["evt_sched", "evt_up", "evt_old"]
    assert listed(ok("events", "list", "--db", str(db), "--since", "7d", "--until", "12h")) == ["evt_sched", "evt_up"]


def test_fixture_folders_from_the_environment_do_not_switch_replay_off_the_store(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "invoice.finalized.json").write_text('{"type": "invoice.finalized", "data": {"total": 5}}')
    monkeypatch.setenv("MONTRA_HOOKS_FIXTURES", str(folder))
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    common = ["replay", "--db", str(db), "--to", "http://127.0.0.1:9/webhooks", "--secret", secret, "--dry-run"]
    from_store = ok(*common, "--type", "subscription.*")
    assert from_store.splitlines() == [
        "seq 2: subscription.upgraded [evt_up] as a new id",
        "seq 3: subscription.scheduled_change.created [evt_sched] as a new id",
        "Dry run: 2 event(s) would go to http://127.0.0.1:9/webhooks; nothing was sent.",
    ]
    from_folder = ok(*common, "--fixtures", str(folder), "--json")
    [line] = [json.loads(text) for text in from_folder.splitlines()]
    assert (line["type"], line["seq"], line["dry_run"]) == ("invoice.finalized", None, True)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--older-than", "1y", "Invalid value for --older-than: '1y' is not a duration"),
        ("--since", "soon", "Invalid value for --since: 'soon' is neither a time nor a duration"),
        ("--until", "2026-13-01", "Invalid value for --until: '2026-13-01' is neither"),
        ("--type", "sub*", "Invalid value for --type: Bad event pattern 'sub*'"),
    ],
)
def test_shared_option_types_name_the_option(db: Path, option: str, value: str, fragment: str) -> None:
    command = ["prune"] if option == "--older-than" else ["events", "list"]
    assert_usage_error(invoke(*command, "--db", str(db), option, value), fragment)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["events", "list", "--since", "99999999999999999999d"],
            "Invalid value for --since: '99999999999999999999d' is longer than 100 years",
        ),
        (
            ["prune", "--older-than", "99999999999999999999d"],
            "Invalid value for --older-than: '99999999999999999999d' is longer",
        ),
        (
            ["serve", "--path", "webhooks"],
            "Invalid value for '--path': 'webhooks' must start with '/': e.g. /webhooks.",
        ),
        (["serve", "--path", "/healthz"], "'/healthz' is one of the receiver's own routes"),
        (["serve", "--app", "../x:y"], "Invalid value for --app: '../x:y' is not MODULE:HOOKS"),
        (
            [
                "trigger",
                "customer.created",
                "--secret",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "--to",
                "http://xn--/webhooks",
            ],
            "'http://xn--/webhooks' is not a URL",
        ),
    ],
)
def test_hostile_inputs_are_one_line_usage_errors(db: Path, args: list[str], message: str) -> None:
    result = invoke(*args, *(["--db", str(db)] if args[0] in ("events", "prune") else []))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
