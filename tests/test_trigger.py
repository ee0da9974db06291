"""`fixtures list|show` and `trigger`, against real `montra-hooks serve` processes; interop with standardwebhooks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook
from support.db import query
from support.net import free_port
from support.server import ServerProcess

from replay.cli import cli
from replay.fixtures import Catalogue

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
SCENARIO_TYPES = [
    "customer.created",
    "checkout_link.created",
    "checkout.completed",
    "subscription.created",
    "payment.succeeded",
]
SENT = re.compile(r"^--> (?P<type>[\w.]+) \[(?P<id>evt_\w{24})\]$")
STORED = re.compile(r"^<-- \[200\] stored \(\d+ ms\)$")


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env={"MONTRA_HOOKS_SECRETS": None, **(env or {})})


def events(db: Path) -> list[tuple[str, str, dict[str, str], bytes]]:
    rows = query(db, "SELECT id, type, headers, body FROM events ORDER BY seq")
    return [(id, type, json.loads(headers), bytes(body)) for id, type, headers, body in rows]


@pytest.fixture
def server(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("--secret", SECRET, "--db", "events.db")


# fixtures list | show ---------------------------------------------------------------------------


def test_fixtures_list_names_every_type_and_scenario_and_marks_user_files(tmp_path: Path) -> None:
    (tmp_path / "refund.created.json").write_text('{"type": "refund.created", "data": {}}')
    result = run("fixtures", "list", "--fixtures", str(tmp_path))
    assert result.exit_code == 0, result.output
    catalogue = Catalogue()
    lines = result.output.splitlines()
    for name in catalogue.types():
        marked = f"({tmp_path / 'refund.created.json'})" if name == "refund.created" else None
        [line] = [line for line in lines if line.split()[:1] == [name]]
        assert line.split()[1:] == ([marked] if marked else [])
    for name in catalogue.scenarios():
        [line] = [line for line in lines if line.split()[:1] == [name]]
        assert line.split(None, 1)[1] == catalogue.description(name)


def test_fixtures_show_prints_a_type_and_a_scenario_as_their_files_hold_them() -> None:
    catalogue = Catalogue()
    result = run("fixtures", "show", "refund.created")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == catalogue.template("refund.created")
    result = run("fixtures", "show", "checkout-to-subscription")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(catalogue.source("checkout-to-subscription").read_text())


def test_fixtures_show_an_unknown_name_is_a_usage_error_with_suggestions() -> None:
    result = run("fixtures", "show", "refund.create")
    assert result.exit_code == 2
    assert "Error: No fixture type or scenario named 'refund.create'. Did you mean 'refund.created', " in result.output


# trigger ----------------------------------------------------------------------------------------


def test_trigger_set_with_a_typo_is_refused_with_the_closest_key(tmp_path: Path) -> None:
    result = run("trigger", "refund.created", "--secret", SECRET, "--set", "data.amout=5")
    assert result.exit_code == 2
    assert "Path 'data.amout' not found" in result.output
    assert "Did you mean 'amount'? To add a new key, use add= (--add on the command line)." in result.output


def test_trigger_sends_the_built_event_with_its_overrides_signed_for_the_reference_library(
    server: ServerProcess,
) -> None:
    result = run(
        "trigger", "refund.created", "--to", f"{server.url}/webhooks", "--secret", SECRET,
        "--set", "data.amount=1200", "--add", 'data.metadata."note.kind"=goodwill', "--add", 'data.code="0042"',
        "--remove", "data.reason",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent, answer = result.output.splitlines()
    assert STORED.match(answer), answer
    match = SENT.match(sent)
    assert match and match["type"] == "refund.created"
    [(event_id, event_type, headers, body)] = events(server.cwd / "events.db")
    assert (event_id, event_type) == (match["id"], "refund.created")
    envelope = json.loads(body)
    assert envelope["id"] == event_id
    assert envelope["data"]["amount"] == 1200
    assert envelope["data"]["metadata"]["note.kind"] == "goodwill"
    assert envelope["data"]["code"] == "0042"
    assert "reason" not in envelope["data"]
    assert envelope["data"]["id"] == Catalogue().template("refund.created")["data"]["id"]
    # The reference library accepts what trigger signed: same body bytes, same headers.
    assert Webhook(SECRET).verify(body, headers) == envelope


def test_trigger_a_scenario_sends_its_steps_in_order_with_ids_that_agree(server: ServerProcess) -> None:
    result = run(
        "trigger", "checkout-to-subscription", "--to", f"{server.url}/webhooks", "--secret", SECRET,
        "--set", "customer:data.email=ada@example.com",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [SENT.match(line)["type"] for line in lines[::2]] == SCENARIO_TYPES  # type: ignore[index]
    assert all(STORED.match(line) for line in lines[1::2])
    stored = events(server.cwd / "events.db")
    assert [event_type for _, event_type, _, _ in stored] == SCENARIO_TYPES
    customer, _, _, subscription, payment = (json.loads(body)["data"] for *_, body in stored)
    assert customer["email"] == "ada@example.com"
    assert subscription["customer_id"] == payment["customer_id"] == customer["id"]
    assert payment["subscription_id"] == subscription["id"]


def test_trigger_uses_the_dev_secret_that_serve_created(
    serve: Callable[..., ServerProcess], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve("--db", "events.db", env={"MONTRA_HOOKS_SECRETS": ""})  # no secret: serve creates one
    assert (tmp_path / ".montra-hooks" / "dev-secret").exists()
    monkeypatch.chdir(tmp_path)
    result = run("trigger", "customer.created", "--to", f"{server.url}/webhooks")
    assert result.exit_code == 0, result.output
    assert STORED.match(result.output.splitlines()[1])
    assert len(events(tmp_path / "events.db")) == 1


def test_trigger_signs_with_the_first_configured_secret_when_no_option_is_given(server: ServerProcess) -> None:
    result = run("trigger", "customer.created", "--to", f"{server.url}/webhooks", env={"MONTRA_HOOKS_SECRETS": SECRET})
    assert result.exit_code == 0, result.output


def test_trigger_without_any_secret_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("trigger", "customer.created")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: No secret to sign with: pass --secret, or run `montra-hooks serve` once on loopback "
        "to create the dev secret (.montra-hooks/dev-secret) in this folder."
    )


def test_a_refused_event_exits_1_and_stops_the_scenario(server: ServerProcess) -> None:
    result = run("trigger", "checkout-to-subscription", "--to", f"{server.url}/webhooks", "--secret", OTHER_SECRET)
    assert result.exit_code == 1
    sent, answer, stopped = result.output.splitlines()
    assert SENT.match(sent)
    assert re.fullmatch(
        r"<-- \[401\] invalid_signature: no webhook-signature matches a configured secret \(\d+ ms\)", answer
    )
    assert stopped == "Stopped: the 4 later event(s) were not sent."
    assert events(server.cwd / "events.db") == []


def test_no_receiver_exits_1_with_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks"
    result = run("trigger", "customer.created", "--to", url, "--secret", SECRET)
    assert result.exit_code == 1
    answer = result.output.splitlines()[1]
    assert answer.startswith(f"<-- [error] cannot connect to {url}: is the receiver running?")


def test_trigger_json_prints_one_line_per_event(server: ServerProcess) -> None:
    result = run("trigger", "customer.created", "--to", f"{server.url}/webhooks", "--secret", SECRET, "--json")
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    payload = json.loads(line)
    [(event_id, *_)] = events(server.cwd / "events.db")
    assert payload.pop("ms") >= 0
    assert payload == {
        "id": event_id, "type": "customer.created", "ok": True, "status": 200, "answer": "stored",
    }  # fmt: skip


def test_user_fixtures_from_the_environment_win(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "invoice.finalized.json").write_text('{"type": "invoice.finalized", "data": {"total": 5}}')
    result = run(
        "trigger", "invoice.finalized", "--to", f"{server.url}/webhooks", "--secret", SECRET,
        env={"MONTRA_HOOKS_FIXTURES": str(folder)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [(_, event_type, _, body)] = events(server.cwd / "events.db")
    assert (event_type, json.loads(body)["data"]) == ("invoice.finalized", {"total": 5})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["refund.create"], "Error: No fixture type or scenario named 'refund.create'. Did you mean"),
        (["refund.created", "--set", "data..amount=1"], "Invalid value for --set: Path 'data..amount' has an empty"),
        (["refund.created", "--set", "data.amount"], "Invalid value for --set: Expected PATH=VALUE"),
        (["refund.created", "--remove", "data.nope"], "Error: Path 'data.nope' not found"),
        (["refund.created", "--to", "http://203.0.113.7/x"], "Error: 203.0.113.7 is not on loopback: pass"),
        (["refund.created", "--to", "ftp://127.0.0.1/x"], "Invalid value for --to: 'ftp://127.0.0.1/x' is not an http"),
        (["refund.created", "--secret", "whsec_!!!"], "Invalid value for --secret: the signing secret (whsec_...) is"),
        (["refund.created", "--fixtures", "/nonexistent/folder"], "Invalid value for '--fixtures'"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = run("trigger", *args, "--secret", SECRET) if "--secret" not in args else run("trigger", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


# Interop: the reference library signs, our receiver accepts ---------------------------------------


def test_an_event_signed_by_the_reference_library_is_stored(server: ServerProcess) -> None:
    body = b'{"type": "refund.created", "data": {"id": "re_1", "amount": 500}}'
    timestamp = datetime.now(UTC)
    signature = Webhook(SECRET).sign("msg_reference_1", timestamp, body.decode())
    headers = {
        "content-type": "application/json",
        "webhook-id": "msg_reference_1",
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }
    response = httpx.post(f"{server.url}/webhooks", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"id": "msg_reference_1", "status": "stored"})
    [(event_id, _, stored_headers, stored_body)] = events(server.cwd / "events.db")
    assert (event_id, stored_body, stored_headers["webhook-signature"]) == ("msg_reference_1", body, signature)
