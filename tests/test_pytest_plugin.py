"""The pytest plugin: a merchant's test suite that only installs montra-webhooks, and the fixtures used here."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from receiver import Event, Hooks
from replay.pytest_plugin import MontraTestApp, Signed

pytest_plugins = ["pytester"]

BILLING = """
from receiver import Event, Hooks, NoRetry

hooks = Hooks()
plans: dict[str, str] = {}


@hooks.on("subscription.upgraded")
async def grant_plan(event: Event) -> None:
    plans[event.data["customer_id"]] = event.data["pricing_model_id"]


@hooks.on("refund.created")
def check_refund(event: Event) -> None:
    if event.data["amount"] <= 0:
        raise NoRetry("a refund of nothing")
"""

MERCHANT_TESTS = """
import json

from standardwebhooks.webhooks import Webhook

from billing import hooks, plans


def test_an_upgrade_grants_the_new_plan(montra_app):
    app = montra_app(hooks)
    response = app.send("subscription.upgraded", set={"data.customer_id": "cus_1", "data.pricing_model_id": "pm_pro"})
    assert response.status_code == 200
    assert response.json()["status"] == "stored"
    assert plans["cus_1"] == "pm_pro"
    [run] = app.runs(response.json()["id"])
    assert (run.handler, run.status, run.attempts) == ("billing.grant_plan", "succeeded", 1)


def test_a_refund_of_nothing_is_dead_at_once(montra_app, montra_event):
    app = montra_app(hooks)
    event = montra_event("refund.created", **{"data.amount": 0})
    response = app.send(event)
    assert (response.status_code, response.json()["error"]) == (500, "handler_failed")
    [run] = app.runs(event["id"])
    assert run.status == "dead" and "a refund of nothing" in run.last_error
    assert app.send(event).json()["error"] == "handler_failed"  # a resend retries the dead run


def test_a_redelivery_is_a_duplicate(montra_app, montra_event):
    app = montra_app(hooks)
    event = montra_event("subscription.upgraded")
    assert app.send(event).json() == {"id": event["id"], "status": "stored"}
    assert app.send(event).json() == {"id": event["id"], "status": "duplicate"}
    assert [stored.id for stored in app.events()] == [event["id"]]


def test_a_scenario_and_my_own_fixture(montra_app, montra_scenario):
    app = montra_app(hooks)
    responses = app.trigger("checkout-to-subscription")
    assert [r.status_code for r in responses] == [200] * 5
    assert [e.type for e in app.events()][-1] == "payment.succeeded"
    [invoice] = montra_scenario("invoice.finalized")
    assert invoice["data"] == {"total": 4200}
    assert app.send("invoice.finalized").json()["status"] == "stored"


def test_signing_matches_the_reference_library(montra_sign, montra_secret, montra_event):
    event = montra_event("customer.created")
    body, headers = montra_sign(event)
    assert headers["webhook-id"] == event["id"]
    assert Webhook(montra_secret).verify(body, headers) == json.loads(body)
"""


def test_a_merchant_suite_gets_the_fixtures_by_installing_the_package(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(billing=textwrap.dedent(BILLING), test_billing=textwrap.dedent(MERCHANT_TESTS))
    pytester.makeini("[pytest]\nmontra_fixtures = montra-fixtures\nfilterwarnings = error\n")
    folder = pytester.mkdir("montra-fixtures")
    (folder / "invoice.finalized.json").write_text('{"type": "invoice.finalized", "data": {"total": 4200}}')
    # A subprocess with plugin autoloading on, as in the merchant's own checkout: nothing registers the plugin
    # but its entry point.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=60)
    result.assert_outcomes(passed=5)


def test_the_fixtures_are_listed_in_pytest_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider", timeout=60)
    output = result.stdout.str()
    assert re.search(r"plugins: .*montra-webhooks-\d", output)  # pytest names the plugin's distribution
    for name in ("montra_app", "montra_event", "montra_scenario", "montra_sign", "montra_secret", "montra_catalogue"):
        assert re.search(rf"^{name} -- .*replay/pytest_plugin\.py:\d+$", output, re.MULTILINE), name


# The same fixtures, used by this suite ----------------------------------------------------------

hooks = Hooks()
received: list[Event] = []


@hooks.on("usage.*")
async def collect(event: Event) -> None:
    received.append(event)


def test_send_accepts_a_type_an_envelope_or_bytes(
    montra_app: Callable[..., MontraTestApp], montra_event: Callable[..., dict[str, Any]]
) -> None:
    received.clear()
    app = montra_app(hooks)
    by_type = app.send("usage.reported", set={"data.amount": 3}, remove=["data.meter_slug"])
    envelope = montra_event("usage.reported", **{"data.amount": 4})
    by_envelope = app.send(envelope)
    by_bytes = app.send(b'{"type": "usage.reported", "data": {"amount": 5}}', msg_id="msg_bytes")
    assert [r.status_code for r in (by_type, by_envelope, by_bytes)] == [200, 200, 200]
    assert [(e.id, e.data["amount"]) for e in received] == [
        (by_type.json()["id"], 3), (envelope["id"], 4), ("msg_bytes", 5),
    ]  # fmt: skip
    assert "meter_slug" not in received[0].data
    assert [e.status for e in app.events()] == ["handled"] * 3
    stored = app.event("msg_bytes")
    assert stored is not None and stored.body == b'{"type": "usage.reported", "data": {"amount": 5}}'


def test_an_app_checks_its_secret(
    montra_app: Callable[..., MontraTestApp], montra_sign: Callable[..., Signed], montra_secret: str
) -> None:
    app = montra_app(hooks, path="/montra")
    body, headers = montra_sign({"type": "usage.reported"}, msg_id="msg_1", timestamp=0)
    late = app.client.post("/montra", content=body, headers=headers)
    assert (late.status_code, late.json()["error"]) == (401, "timestamp_out_of_tolerance")
    other = montra_app(hooks, secrets=["whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"])
    refused = other.client.post("/webhooks", content=body, headers=montra_sign(body, msg_id="msg_1").headers)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_signature")
    assert Webhook(montra_secret).verify(body, montra_sign(body, msg_id="msg_1").headers) == json.loads(body)


def test_overrides_on_a_built_event_are_a_type_error(montra_app: Callable[..., MontraTestApp]) -> None:
    app = montra_app(hooks)
    with pytest.raises(TypeError, match="apply to a fixture type"):
        app.send({"type": "usage.reported"}, set={"data.amount": 1})
    with pytest.raises(ValueError, match="'checkout-to-subscription' is a scenario of 5 events: use trigger"):
        app.send("checkout-to-subscription")
