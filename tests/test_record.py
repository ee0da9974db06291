"""`montra-hooks fixtures record`: a stored event becomes a fixture that trigger, replay, watch and pytest use at once.

Events reach the store through a real `montra-hooks serve` (or `Store.ingest` on each backend); the recorded
file is then sent by the real commands to a real receiver, and built by the pytest plugin in a real pytest run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.db import query
from support.server import ServerProcess
from support.signing import signed_post
from support.watch import WatchProcess

from receiver.stores.open import open_store, redact_url
from receiver.stores.protocol import Incoming
from replay.cli import cli
from replay.scrub import scrub

pytest_plugins = ["pytester"]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UPGRADE = {
    "id": "evt_real_upgrade",
    "type": "subscription.upgraded",
    "timestamp": "2026-01-05T10:00:00Z",
    "data": {
        "status": "active",
        "id": "sub_real1",
        "customer_id": "cus_real1",
        "pricing_model_id": "pm_business",
        "current_period_end": "2026-02-05T10:00:00Z",
    },
    "previous_attributes": {"pricing_model_id": "pm_starter"},
    "livemode": True,
}
# What `record` writes for UPGRADE: no id or timestamp (a build fills them), type, data, previous_attributes,
# then the other keys, every level sorted, two spaces, a final newline.
UPGRADE_FIXTURE = """\
{
  "type": "subscription.upgraded",
  "data": {
    "current_period_end": "2026-02-05T10:00:00Z",
    "customer_id": "cus_real1",
    "id": "sub_real1",
    "pricing_model_id": "pm_business",
    "status": "active"
  },
  "previous_attributes": {
    "pricing_model_id": "pm_starter"
  },
  "livemode": true
}
"""
CUSTOMER = {
    "type": "customer.created",
    "data": {
        "id": "cus_real2",
        "name": "Jane Doe",
        "email": "jane.doe@corp.test",
        "phone": "+33 6 12 34 56 78",
        "address": {"line1": "1 rue de Rivoli", "city": "Paris", "postal_code": "75001", "country": "FR"},
        "metadata": {"note": "ask jane.doe@corp.test; card 4000-0566-5566-5556", "plan": "Pro"},
        "created_at": "2026-01-05T09:00:00Z",
    },
}


def record(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, ["fixtures", "record", *args], env={"MONTRA_HOOKS_FIXTURES": None, **(env or {})})


def post(server: ServerProcess, event_id: str, event: dict[str, Any]) -> None:
    response = signed_post(f"{server.url}/webhooks", json.dumps(event).encode(), SECRET, event_id)
    assert response.json() == {"id": event_id, "status": "stored"}


def rows(db: Path) -> list[tuple[str, str, dict[str, Any]]]:
    return [(i, t, json.loads(body)) for i, t, body in query(db, "SELECT id, type, body FROM events ORDER BY seq")]


def ingest(db: str, events: list[tuple[str, bytes]]) -> None:
    """Store events as the receiver does, on either backend (a body that is not an envelope as `unknown.type`)."""

    async def main() -> None:
        store = open_store(db)
        try:
            for n, (event_id, body) in enumerate(events):
                try:
                    event_type = str(json.loads(body.decode())["type"])
                except (ValueError, TypeError, KeyError):
                    event_type = "unknown.type"
                await store.ingest(Incoming(event_id, event_type, None, 1_767_607_200 + n, {}, body))
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture
def server(serve: Callable[..., ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    """A receiver in tmp_path, which is also the directory the commands run in (./montra-fixtures is there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_FIXTURES", raising=False)
    return serve("--secret", SECRET, "--db", "events.db")


# The file --------------------------------------------------------------------------------------


def test_record_writes_the_envelope_without_id_and_timestamp_and_keeps_the_ids(store_url: str, tmp_path: Path) -> None:
    ingest(store_url, [("msg_up", json.dumps(UPGRADE).encode())])
    folder = tmp_path / "mine"

    result = record("msg_up", "--db", store_url, "--dir", str(folder))

    assert result.exit_code == 0, result.output
    path = folder / "subscription.upgraded.json"
    assert result.output == (
        f"Saved subscription.upgraded [msg_up] as {path}: "
        f"send it with `montra-hooks trigger subscription.upgraded --fixtures {folder}`.\n"
    )
    assert path.read_text() == UPGRADE_FIXTURE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in folder.iterdir()) == ["subscription.upgraded.json"]  # no temporary file left


def test_record_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    ingest(db, [("msg_up", json.dumps(UPGRADE).encode())])
    path = tmp_path / "fx" / "subscription.upgraded.json"
    path.parent.mkdir()
    path.write_text("{}\n")

    refused = record("msg_up", "--db", db, "--dir", str(path.parent))
    assert refused.exit_code == 2
    assert refused.output.splitlines()[-1] == (
        f"Error: {path} already exists: pass --force to overwrite it, or --as NAME to save another."
    )
    assert path.read_text() == "{}\n"

    forced = record("msg_up", "--db", db, "--dir", str(path.parent), "--force")
    assert forced.exit_code == 0, forced.output
    assert path.read_text() == UPGRADE_FIXTURE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    ("args", "env", "written", "hint"),
    [
        ([], {}, "montra-fixtures/subscription.upgraded.json", "montra-hooks trigger subscription.upgraded"),
        (["--as", "upgrade-to-pro.json"], {}, "montra-fixtures/upgrade-to-pro.json",
         "montra-hooks trigger upgrade-to-pro"),
        ([], {"MONTRA_HOOKS_FIXTURES": f"env-a{os.pathsep}env-b"}, "env-a/subscription.upgraded.json",
         "montra-hooks trigger subscription.upgraded"),
        (["--dir", "elsewhere", "--as", "up"], {}, "elsewhere/up.json", "montra-hooks trigger up --fixtures elsewhere"),
    ],
    ids=["default folder", "--as", "env folder", "--dir"],
)  # fmt: skip
def test_where_record_saves_and_the_command_it_suggests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], written: str, hint: str
) -> None:
    monkeypatch.chdir(tmp_path)
    ingest("events.db", [("msg_up", json.dumps(UPGRADE).encode())])

    result = record("msg_up", "--db", "events.db", *args, env=env)

    assert result.exit_code == 0, result.output
    assert result.output == f"Saved subscription.upgraded [msg_up] as {written}: send it with `{hint}`.\n"
    assert (tmp_path / written).read_text() == UPGRADE_FIXTURE


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["msg_nope"], 1, "Error: No event 'msg_nope' in {db}: `montra-hooks events list` shows what is stored."),
        (["msg_bytes"], 2, "Error: Event 'msg_bytes' has a body that is not JSON (Expecting value at line 1, "
         "column 1): it cannot be a fixture. `montra-hooks events show msg_bytes` shows it."),
        (["msg_latin"], 2, "Error: Event 'msg_latin' has a body that is not JSON (not UTF-8 at byte 13): it "
         "cannot be a fixture. `montra-hooks events show msg_latin` shows it."),
        (["msg_list"], 2, 'Error: Event \'msg_list\' is not an event envelope ({"type": ..., "data": ...}): '
         "it cannot be a fixture."),
        (["msg_up", "--as", "../up"], 2, "Error: Invalid value for --as: '../up' cannot name a fixture: use "
         "letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit, e.g. --as upgrade-to-pro."),
    ],
    ids=["unknown id", "not JSON", "not UTF-8", "not an envelope", "bad name"],
)  # fmt: skip
def test_record_errors_name_the_problem_and_write_nothing(
    tmp_path: Path, args: list[str], code: int, error: str
) -> None:
    db = str(tmp_path / "events.db")
    ingest(
        db,
        [
            ("msg_up", json.dumps(UPGRADE).encode()),
            ("msg_bytes", b"not json"),
            ("msg_latin", b'{"type": "caf\xe9"}'),
            ("msg_list", b"[1]"),
        ],
    )

    result = record(*args, "--db", db, "--dir", str(tmp_path / "fx"))

    assert result.exit_code == code
    assert "Traceback" not in result.output
    assert result.output.splitlines()[-1] == error.replace("{db}", redact_url(db))
    assert not (tmp_path / "fx").exists()


def test_record_from_a_store_that_does_not_exist_is_the_usual_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    result = record("msg_up", "--db", str(missing))
    assert result.exit_code == 2
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: No event store at {missing}")
    assert not missing.exists()  # looking never creates a store


# Usable at once by trigger, replay, watch and the pytest plugin ---------------------------------------------


def test_trigger_sends_a_recorded_fixture_by_the_name_it_was_saved_under(server: ServerProcess) -> None:
    post(server, "msg_up", UPGRADE)
    saved = record("msg_up", "--db", "events.db", "--as", "upgrade-to-pro")
    assert saved.exit_code == 0, saved.output

    sent = CliRunner().invoke(
        cli,
        ["trigger", "upgrade-to-pro", "--to", f"{server.url}/webhooks", "--secret", SECRET],
        env={"MONTRA_HOOKS_FIXTURES": None, "MONTRA_HOOKS_SECRETS": None},
    )

    assert sent.exit_code == 0, sent.output
    listed = CliRunner().invoke(cli, ["fixtures", "list"], env={"MONTRA_HOOKS_FIXTURES": None})
    [line] = [line for line in listed.output.splitlines() if "upgrade-to-pro" in line]
    assert line.split() == [
        "upgrade-to-pro",
        f"({Path('montra-fixtures/upgrade-to-pro.json')},",
        "a",
        "subscription.upgraded)",
    ]
    [original, (new_id, new_type, body)] = rows(server.cwd / "events.db")
    assert re.fullmatch(r"evt_\w{24}", new_id)  # a fresh id: the recording is not a duplicate of the original
    assert sent.output.splitlines()[0] == f"--> subscription.upgraded [{new_id}]"
    assert new_type == "subscription.upgraded"
    assert body["id"] == new_id and body["timestamp"] != UPGRADE["timestamp"]
    assert {k: v for k, v in body.items() if k not in ("id", "timestamp")} == {
        k: v for k, v in original[2].items() if k not in ("id", "timestamp")
    }


def test_replay_sends_the_recorded_fixtures_of_a_folder(server: ServerProcess) -> None:
    post(server, "msg_up", UPGRADE)
    post(server, "msg_cus", CUSTOMER)
    assert record("msg_cus", "--db", "events.db", "--dir", "recorded", "--scrub").exit_code == 0
    assert record("msg_up", "--db", "events.db", "--dir", "recorded").exit_code == 0

    result = CliRunner().invoke(
        cli,
        ["replay", "--fixtures", "recorded", "--to", f"{server.url}/webhooks", "--secret", SECRET, "--in-order"],
        env={"MONTRA_HOOKS_FIXTURES": None, "MONTRA_HOOKS_SECRETS": None},
    )

    assert result.exit_code == 0, result.output
    *_, customer, upgrade = rows(server.cwd / "events.db")
    assert (customer[1], upgrade[1]) == ("customer.created", "subscription.upgraded")  # the folder's files, by name
    assert customer[2]["data"]["email"] == "ada@example.com" and customer[2]["data"]["id"] == "cus_real2"
    assert upgrade[2]["data"] == UPGRADE["data"]


def test_watch_sends_a_fixture_the_moment_record_saves_it(server: ServerProcess, tmp_path: Path) -> None:
    post(server, "msg_up", UPGRADE)
    post(server, "msg_cus", CUSTOMER)
    assert record("msg_up", "--db", "events.db").exit_code == 0  # creates ./montra-fixtures, which watch then reads
    process = WatchProcess(["--to", f"{server.url}/webhooks", "--secret", SECRET], tmp_path)
    try:
        process.expect(rf"^Watching {re.escape(str(tmp_path / 'montra-fixtures'))} for fixture saves")

        assert record("msg_cus", "--db", "events.db", "--as", "jane", "--scrub").exit_code == 0

        sent = process.expect(r"^--> customer\.created \[(evt_\w+)\]$")[1]
        process.expect(r"^<-- \[200\] stored \(\d+ ms\)$")
    finally:
        process.stop()
    assert [line for line in process.seen if line.startswith("-->")] == [f"--> customer.created [{sent}]"]
    [*_, (new_id, _, body)] = rows(server.cwd / "events.db")
    assert new_id == sent and body["data"]["name"] == "Ada Lovelace" and body["data"]["id"] == "cus_real2"


MERCHANT_TEST = """
from receiver import Event, Hooks

hooks = Hooks()
plans = {}


@hooks.on("subscription.upgraded")
async def grant_plan(event: Event) -> None:
    plans[event.data["customer_id"]] = event.data["pricing_model_id"]


def test_the_recorded_upgrade_grants_its_plan(montra_app):
    app = montra_app(hooks)
    response = app.send("upgrade-to-pro")
    assert response.json()["status"] == "stored"
    assert plans == {"cus_real1": "pm_business"}


def test_the_recorded_event_builds_with_overrides(montra_event):
    event = montra_event("upgrade-to-pro", set={"data.status": "past_due"})
    assert event["type"] == "subscription.upgraded"
    assert event["data"]["id"] == "sub_real1" and event["data"]["status"] == "past_due"
    assert event["previous_attributes"] == {"pricing_model_id": "pm_starter"}
"""


def test_the_pytest_plugin_finds_a_recorded_fixture_in_the_default_folder(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MONTRA_HOOKS_FIXTURES", raising=False)
    ingest(str(pytester.path / "events.db"), [("msg_up", json.dumps(UPGRADE).encode())])
    assert record("msg_up", "--db", "events.db", "--as", "upgrade-to-pro").exit_code == 0  # pytester's cwd
    pytester.makepyfile(test_billing=textwrap.dedent(MERCHANT_TEST))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")  # no montra_fixtures: the rootdir's montra-fixtures

    # In this process (the plugin is loaded from its entry point here too): a subprocess would only add its start-up.
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly")

    result.assert_outcomes(passed=2)


# --scrub ---------------------------------------------------------------------------------------


def test_record_scrub_says_which_paths_it_replaced(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    ingest(db, [("msg_cus", json.dumps(CUSTOMER).encode()), ("msg_up", json.dumps(UPGRADE).encode())])

    result = record("msg_cus", "--db", db, "--dir", str(tmp_path), "--scrub")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "Scrubbed 8 value(s): data.address.city (address), data.address.line1 (address), "
        "data.address.postal_code (address), data.email (email), data.metadata.note (email in text), "
        "data.metadata.note (card number in text), data.name (name), data.phone (phone)."
    )
    assert json.loads((tmp_path / "customer.created.json").read_text()) == {
        "type": "customer.created",
        "data": {
            "id": "cus_real2",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": "+14155550100",
            "address": {"line1": "12 Analytical Way", "city": "San Francisco", "postal_code": "94107", "country": "FR"},
            "metadata": {"note": "ask ada@example.com; card 4242-4242-4242-4242", "plan": "Pro"},
            "created_at": "2026-01-05T09:00:00Z",
        },
    }
    nothing = record("msg_up", "--db", db, "--dir", str(tmp_path), "--scrub")
    assert nothing.output.splitlines()[0] == "Scrubbed nothing: no email, name, phone, address or card number found."
    assert (tmp_path / "subscription.upgraded.json").read_text() == UPGRADE_FIXTURE


def test_scrub_replaces_people_and_cards_and_keeps_ids_amounts_currencies_times_and_types() -> None:
    body = {
        "type": "payment.succeeded",
        "data": {
            "id": "pay_1234567890123456",
            "transaction_id": "4111111111111111",
            "amount": 4900,
            "currency": "usd",
            "created_at": "2026-01-05T09:00:00Z",
            "created_ms": 1767603600000,
            "billing_details": {"name": "Jane Doe", "email": "JANE@corp.test", "address": "1 rue de Rivoli, Paris"},
            "customer": {"first_name": "Jane", "last_name": "Doe", "mobile": "0612345678"},
            "card": {"number": 4000056655665556, "last4": "5556", "brand": "visa"},
            "card_number": "4000 0566 5566 5556",
            "line_items": [{"name": "Pro plan (monthly)", "amount": 4900}],
            "shipping_address": {"line1": "2 Main St", "line2": "Apt 4", "city": "Lyon", "zip": "69001"},
            "notes": [
                "from jane@corp.test, cc bob@corp.test",
                "ref 1234-5678-9012-3456-7890 and txn_4242424242424242 and 123456789012",
                "card 378282246310005 expired",
            ],
        },
        "previous_attributes": {"email": "old@corp.test"},
    }

    scrubbed, found = scrub(body)

    assert scrubbed == {
        "type": "payment.succeeded",
        "data": {
            "id": "pay_1234567890123456",
            "transaction_id": "4111111111111111",
            "amount": 4900,
            "currency": "usd",
            "created_at": "2026-01-05T09:00:00Z",
            "created_ms": 1767603600000,
            "billing_details": {
                "name": "Ada Lovelace",
                "email": "ada@example.com",
                "address": "12 Analytical Way, San Francisco, CA 94107",
            },
            "customer": {"first_name": "Ada", "last_name": "Lovelace", "mobile": "+14155550100"},
            "card": {"number": 4242424242424242, "last4": "5556", "brand": "visa"},
            "card_number": "4242 4242 4242 4242",
            "line_items": [{"name": "Pro plan (monthly)", "amount": 4900}],
            "shipping_address": {"line1": "12 Analytical Way", "line2": "Suite 1", "city": "San Francisco",
                                 "zip": "94107"},
            "notes": [
                "from ada@example.com, cc grace@example.com",
                "ref 1234-5678-9012-3456-7890 and txn_4242424242424242 and 123456789012",
                "card 424242424242424 expired",
            ],
        },
        "previous_attributes": {"email": "alan@example.com"},
    }  # fmt: skip
    assert [str(each) for each in found] == [
        "data.billing_details.name (name)",
        "data.billing_details.email (email)",
        "data.billing_details.address (address)",
        "data.customer.first_name (name)",
        "data.customer.last_name (name)",
        "data.customer.mobile (phone)",
        "data.card.number (card number)",
        "data.card_number (card number)",
        "data.shipping_address.line1 (address)",
        "data.shipping_address.line2 (address)",
        "data.shipping_address.city (address)",
        "data.shipping_address.zip (address)",
        "data.notes.0 (email in text)",
        "data.notes.2 (card number in text)",
        "previous_attributes.email (email)",
    ]


def test_scrub_gives_the_same_value_the_same_replacement_and_quotes_dotted_keys() -> None:
    body = {"type": "x", "data": {"a": {"email": "p@q.test"}, "b": ["P@Q.test", "r@q.test"], "m": {"k.v": "p@q.test"}}}
    scrubbed, found = scrub(body)
    assert scrubbed["data"] == {
        "a": {"email": "ada@example.com"},
        "b": ["ada@example.com", "grace@example.com"],
        "m": {"k.v": "ada@example.com"},
    }
    assert [each.path for each in found] == ["data.a.email", "data.b.0", "data.b.1", 'data.m."k.v"']


def test_the_scrub_line_names_twenty_paths_and_counts_the_rest(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    many = {"type": "customer.updated", "data": {"cc": [f"user{n}@corp.test" for n in range(25)]}}
    ingest(db, [("msg_many", json.dumps(many).encode())])

    result = record("msg_many", "--db", db, "--dir", str(tmp_path), "--scrub")

    assert result.exit_code == 0, result.output
    listed = ", ".join(f"data.cc.{n} (email in text)" for n in range(20))
    assert result.output.splitlines()[0] == f"Scrubbed 25 value(s): {listed} and 5 more."
    saved = json.loads((tmp_path / "customer.updated.json").read_text())["data"]["cc"]
    assert saved[:7] == [
        f"{first.lower()}@example.com" for first in ("Ada", "Grace", "Alan", "Katherine", "Edsger", "Barbara")
    ] + ["person7@example.com"]
    assert len(set(saved)) == 25
