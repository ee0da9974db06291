from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import MontraHooksError
from replay.fixtures import Catalogue, FixtureError, builtin_dir
from replay.paths import get_path, parse_assignment, remove_path, set_path

REPO = Path(__file__).resolve().parent.parent

EVENT_TYPES = [
    "customer.created",
    "customer.updated",
    "meter.created",
    "usage.reported",
    "pricing_model.created",
    "pricing_model.updated",
    "checkout_link.created",
    "checkout.completed",
    "payment.succeeded",
    "payment.failed",
    "subscription.created",
    "subscription.upgraded",
    "subscription.scheduled_change.created",
    "subscription.paused",
    "subscription.resumed",
    "subscription.past_due",
    "subscription.canceled",
    "refund.created",
    "discount.created",
    "entitlement.exhausted",
]
WITH_PREVIOUS_ATTRIBUTES = {
    "customer.updated",
    "pricing_model.updated",
    "subscription.upgraded",
    "subscription.paused",
    "subscription.resumed",
    "subscription.past_due",
    "subscription.canceled",
}
ID_PREFIXES = {
    "customer": "cus_",
    "meter": "mtr_",
    "usage": "use_",
    "pricing_model": "pm_",
    "checkout_link": "cl_",
    "payment": "pay_",
    "subscription": "sub_",
    "refund": "re_",
    "discount": "dsc_",
}
EVENT_ID = re.compile(r"evt_[A-Za-z0-9]{24}")
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


@pytest.fixture
def catalogue() -> Catalogue:
    return Catalogue()


def _write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{path}.{key}" if path else key)]
    if isinstance(node, list):
        return [leaf for i, value in enumerate(node) for leaf in _leaves(value, f"{path}.{i}")]
    return [(path, node)]


# The built-in types ------------------------------------------------------------------------------


def test_builtin_dir_is_the_repository_fixtures_folder() -> None:
    assert builtin_dir() == REPO / "fixtures"


def test_every_event_type_has_exactly_one_fixture(catalogue: Catalogue) -> None:
    assert catalogue.types() == sorted(EVENT_TYPES)
    assert sorted(path.stem for path in (REPO / "fixtures").glob("*.json")) == sorted(EVENT_TYPES)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_fixture_file_is_a_pretty_printed_envelope_named_after_its_type(event_type: str) -> None:
    path = REPO / "fixtures" / f"{event_type}.json"
    doc = json.loads(path.read_text())
    assert path.read_text() == json.dumps(doc, indent=2) + "\n"
    assert doc["type"] == event_type
    assert "id" not in doc
    assert "timestamp" not in doc
    assert isinstance(doc["data"], dict)
    expected = {"type", "data", "previous_attributes"} if event_type in WITH_PREVIOUS_ATTRIBUTES else {"type", "data"}
    assert set(doc) == expected


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_type_builds_with_a_fresh_id_and_timestamp_each_time(catalogue: Catalogue, event_type: str) -> None:
    [first] = catalogue.build(event_type)
    [second] = catalogue.build(event_type)
    for event in (first, second):
        assert list(event)[:3] == ["id", "type", "timestamp"]
        assert EVENT_ID.fullmatch(event["id"])
        assert ISO_UTC.fullmatch(event["timestamp"])
        assert event["type"] == event_type
        assert event["data"] == catalogue.template(event_type)["data"]
    assert first["id"] != second["id"]


def test_build_time_is_the_envelope_timestamp(catalogue: Catalogue) -> None:
    paris = timezone(timedelta(hours=1))
    [aware] = catalogue.build("refund.created", now=datetime(2026, 11, 25, 18, 0, 5, tzinfo=paris))
    [naive] = catalogue.build("refund.created", now=datetime(2026, 11, 25, 17, 0, 5))
    assert aware["timestamp"] == naive["timestamp"] == "2026-11-25T17:00:05Z"


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_fixture_values_follow_the_conventions(catalogue: Catalogue, event_type: str) -> None:
    data = catalogue.template(event_type)["data"]
    resource = event_type.rsplit(".", 1)[0]
    if resource in ID_PREFIXES:
        assert data["id"].startswith(ID_PREFIXES[resource])
    for path, value in _leaves(data):
        key = path.rsplit(".", 1)[-1]
        if key.endswith("_at") or key.startswith("current_period_"):
            assert ISO_UTC.fullmatch(value), path
        if key in {"amount", "amount_off", "limit", "used", "percent_off"}:
            assert value is None or type(value) is int, path
    if "amount" in data and event_type != "usage.reported":
        assert data["currency"] == "usd"
    assert "created_at" in data or event_type in {"checkout.completed", "entitlement.exhausted"}


@pytest.mark.parametrize(
    ("event_type", "fields"),
    [
        ("customer.created", {"id", "name", "email", "phone", "address", "created_at"}),
        ("usage.reported", {"id", "customer_id", "meter_slug", "amount", "metadata", "created_at"}),
        ("meter.created", {"id", "slug", "name", "aggregation", "created_at"}),
        ("pricing_model.created", {"id", "name", "is_default", "created_at"}),
        (
            "checkout_link.created",
            {"id", "link_name", "line_items", "image_ids", "amount", "currency", "payment_name", "url"},
        ),
        ("checkout.completed", {"checkout_link_id", "customer_id", "amount", "currency", "transaction_id"}),
        ("payment.succeeded", {"id", "transaction_id", "customer_id", "subscription_id", "amount", "currency"}),
        ("payment.failed", {"id", "transaction_id", "amount", "status", "failure_code", "failure_message"}),
        ("subscription.created", {"id", "customer_id", "pricing_model_id", "status", "current_period_end"}),
        ("subscription.scheduled_change.created", {"id", "subscription_id", "pricing_model_id", "effective_at"}),
        ("refund.created", {"id", "transaction_id", "amount", "currency", "reason", "created_at"}),
        ("discount.created", {"id", "name", "code", "percent_off", "amount_off", "duration", "created_at"}),
        ("entitlement.exhausted", {"customer_id", "meter_slug", "limit", "used"}),
    ],
)
def test_data_uses_the_api_reference_field_names(catalogue: Catalogue, event_type: str, fields: set[str]) -> None:
    assert fields <= set(catalogue.template(event_type)["data"])


def test_field_values_that_the_api_constrains(catalogue: Catalogue) -> None:
    customer = catalogue.template("customer.created")["data"]
    assert set(customer["address"]) == {"line1", "city", "postal_code", "country"}
    assert catalogue.template("discount.created")["data"]["duration"] in {"once", "repeating", "forever"}
    assert isinstance(catalogue.template("usage.reported")["data"]["metadata"], dict)
    statuses = {
        t: catalogue.template(t)["data"]["status"]
        for t in EVENT_TYPES
        if t.startswith("subscription.") and t != "subscription.scheduled_change.created"
    }
    assert set(statuses.values()) == {"active", "past_due", "canceled", "paused"}
    assert statuses["subscription.past_due"] == "past_due"
    assert catalogue.template("payment.failed")["data"]["status"] == "failed"
    assert catalogue.template("payment.succeeded")["data"]["status"] == "succeeded"


def test_fixtures_share_one_customer_and_one_transaction(catalogue: Catalogue) -> None:
    customer_id = catalogue.template("customer.created")["data"]["id"]
    for event_type in EVENT_TYPES:
        data = catalogue.template(event_type)["data"]
        assert data.get("customer_id", customer_id) == customer_id, event_type
    paid = catalogue.template("payment.succeeded")["data"]
    assert catalogue.template("refund.created")["data"]["transaction_id"] == paid["transaction_id"]
    assert catalogue.template("checkout.completed")["data"]["transaction_id"] == paid["transaction_id"]


# Scenarios ---------------------------------------------------------------------------------------

SCENARIO_TYPES = {
    "checkout-to-subscription": [
        "customer.created",
        "checkout_link.created",
        "checkout.completed",
        "subscription.created",
        "payment.succeeded",
    ],
    "failed-payment-to-cancel": [
        "customer.created",
        "subscription.created",
        "payment.failed",
        "subscription.past_due",
        "payment.failed",
        "subscription.canceled",
    ],
    "usage-until-exhausted": [
        "customer.created",
        "meter.created",
        "usage.reported",
        "usage.reported",
        "usage.reported",
        "entitlement.exhausted",
    ],
    "upgrade-and-refund": [
        "customer.created",
        "subscription.created",
        "payment.succeeded",
        "subscription.upgraded",
        "payment.succeeded",
        "refund.created",
    ],
    "pause-and-resume": [
        "customer.created",
        "subscription.created",
        "subscription.paused",
        "subscription.resumed",
        "subscription.scheduled_change.created",
    ],
}


def test_builtin_scenarios(catalogue: Catalogue) -> None:
    assert catalogue.scenarios() == sorted(SCENARIO_TYPES)
    for name in SCENARIO_TYPES:
        text = (REPO / "fixtures" / "scenarios" / f"{name}.json").read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n"
        assert catalogue.source(name) == REPO / "fixtures" / "scenarios" / f"{name}.json"


@pytest.mark.parametrize("scenario", sorted(SCENARIO_TYPES))
def test_scenario_builds_its_steps_in_order_with_every_reference_resolved(catalogue: Catalogue, scenario: str) -> None:
    events = catalogue.build(scenario, now=datetime(2026, 11, 25, 17, 0, tzinfo=UTC))
    assert [event["type"] for event in events] == SCENARIO_TYPES[scenario]
    assert len({event["id"] for event in events}) == len(events)
    assert {event["timestamp"] for event in events} == {"2026-11-25T17:00:00Z"}
    assert "{{" not in json.dumps(events)
    assert catalogue.description(scenario).endswith(".")


@pytest.mark.parametrize("scenario", sorted(SCENARIO_TYPES))
def test_building_a_scenario_twice_never_reuses_a_resource_id(catalogue: Catalogue, scenario: str) -> None:
    def resource_ids(events: list[dict[str, Any]]) -> set[str]:
        ids = {event["data"]["id"] for event in events if "id" in event["data"]}
        ids |= {event["data"]["transaction_id"] for event in events if "transaction_id" in event["data"]}
        return ids

    first, second = resource_ids(catalogue.build(scenario)), resource_ids(catalogue.build(scenario))
    assert first
    assert not first & second
    templates = {json.dumps(catalogue.template(t)["data"].get("id")) for t in catalogue.types()}
    assert not {json.dumps(i) for i in first} & templates


def test_checkout_to_subscription_ids_agree(catalogue: Catalogue) -> None:
    customer, link, checkout, sub, payment = (e["data"] for e in catalogue.build("checkout-to-subscription"))
    assert customer["id"].startswith("cus_")
    assert checkout["checkout_link_id"] == link["id"]
    assert checkout["customer_id"] == sub["customer_id"] == payment["customer_id"] == customer["id"]
    assert sub["pricing_model_id"] == link["line_items"][0]["pricing_model_id"]
    assert payment["subscription_id"] == sub["id"]
    assert payment["transaction_id"] == checkout["transaction_id"]
    assert checkout["transaction_id"].startswith("txn_")
    # A whole-string reference keeps the JSON type of what it points to.
    assert checkout["amount"] == payment["amount"] == link["amount"] == 4900


def test_failed_payment_to_cancel_ids_agree(catalogue: Catalogue) -> None:
    customer, sub, first, past_due, second, canceled = (e["data"] for e in catalogue.build("failed-payment-to-cancel"))
    assert past_due["id"] == canceled["id"] == first["subscription_id"] == second["subscription_id"] == sub["id"]
    assert {sub["customer_id"], first["customer_id"], past_due["customer_id"], canceled["customer_id"]} == {
        customer["id"]
    }
    assert first["transaction_id"] != second["transaction_id"]
    assert first["id"] != second["id"]
    assert [past_due["status"], canceled["status"]] == ["past_due", "canceled"]


def test_usage_until_exhausted_ids_agree(catalogue: Catalogue) -> None:
    customer, meter, *usage, exhausted = (e["data"] for e in catalogue.build("usage-until-exhausted"))
    assert {u["customer_id"] for u in usage} == {exhausted["customer_id"]} == {customer["id"]}
    assert {u["meter_slug"] for u in usage} == {exhausted["meter_slug"]} == {meter["slug"]}
    assert len({u["id"] for u in usage}) == 3
    assert sum(u["amount"] for u in usage) == exhausted["used"] == exhausted["limit"]


def test_upgrade_and_refund_refunds_the_first_payment(catalogue: Catalogue) -> None:
    _, sub, payment, upgrade, _, refund = (e for e in catalogue.build("upgrade-and-refund"))
    assert upgrade["data"]["id"] == sub["data"]["id"]
    assert upgrade["previous_attributes"]["pricing_model_id"] == sub["data"]["pricing_model_id"]
    assert upgrade["data"]["pricing_model_id"] != sub["data"]["pricing_model_id"]
    assert refund["data"]["transaction_id"] == payment["data"]["transaction_id"]


# User folders ------------------------------------------------------------------------------------


def test_user_folder_overrides_a_type_and_adds_a_type_and_a_scenario(tmp_path: Path) -> None:
    override = _write(
        tmp_path / "refund.created.json",
        {"type": "refund.created", "data": {"id": "re_mine", "transaction_id": "txn_mine", "amount": 1, "reason": "x"}},
    )
    _write(tmp_path / "invoice.finalized.json", {"type": "invoice.finalized", "data": {"id": "inv_1", "total": 5}})
    _write(
        tmp_path / "scenarios" / "invoice-flow.json",
        {
            "description": "A customer gets an invoice.",
            "steps": [
                {"as": "customer", "type": "customer.created"},
                {"as": "invoice", "type": "invoice.finalized", "set": {"data.customer_id": "{{customer.data.id}}"}},
                {
                    "type": "refund.created",
                    "set": {"data.note": "invoice {{invoice.data.id}} of {{invoice.data.total}}"},
                },
            ],
        },
    )
    catalogue = Catalogue([tmp_path])

    assert catalogue.types() == sorted([*EVENT_TYPES, "invoice.finalized"])
    assert catalogue.scenarios() == sorted([*SCENARIO_TYPES, "invoice-flow"])
    assert catalogue.source("refund.created") == override
    assert catalogue.source("customer.created") == REPO / "fixtures" / "customer.created.json"
    [refund] = catalogue.build("refund.created")
    assert refund["data"] == {"id": "re_mine", "transaction_id": "txn_mine", "amount": 1, "reason": "x"}
    customer, invoice, flow_refund = catalogue.build("invoice-flow")
    assert invoice["type"] == "invoice.finalized"
    assert invoice["data"]["id"].startswith("inv_")
    assert invoice["data"]["id"] != "inv_1"
    assert invoice["data"]["customer_id"] == customer["data"]["id"]
    # References inside a longer string are substituted as text.
    assert flow_refund["data"]["note"] == f"invoice {invoice['data']['id']} of 5"
    assert flow_refund["data"]["transaction_id"] == "txn_mine"


def test_first_user_folder_wins_and_a_missing_type_key_is_the_file_name(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _write(first / "ping.json", {"data": {"from": "first"}})
    _write(second / "ping.json", {"data": {"from": "second"}})
    [event] = Catalogue([first, second]).build("ping")
    assert event["type"] == "ping"
    assert event["data"] == {"from": "first"}


def test_an_id_or_timestamp_in_the_fixture_is_kept(tmp_path: Path) -> None:
    _write(tmp_path / "ping.json", {"id": "evt_fixed", "type": "ping", "timestamp": "2026-01-01T00:00:00Z"})
    [event] = Catalogue([tmp_path]).build("ping")
    assert event == {"id": "evt_fixed", "type": "ping", "timestamp": "2026-01-01T00:00:00Z"}


def test_missing_user_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="nope does not exist"):
        Catalogue([tmp_path / "nope"])


# Paths and assignments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data.amount=1200", ("data.amount", 1200)),
        ("data.amount=12.5", ("data.amount", 12.5)),
        ("data.is_default=true", ("data.is_default", True)),
        ("data.reason=null", ("data.reason", None)),
        ('data.metadata={"a": 1}', ("data.metadata", {"a": 1})),
        ("data.image_ids=[1, 2]", ("data.image_ids", [1, 2])),
        ('data.code="1200"', ("data.code", "1200")),
        ("data.name=Ada Lovelace", ("data.name", "Ada Lovelace")),
        ("data.address.postal_code=02139", ("data.address.postal_code", "02139")),
        ("data.phone=+14155550123", ("data.phone", "+14155550123")),
        ("data.note=NaN", ("data.note", "NaN")),
        ("data.note=", ("data.note", "")),
        ("data.url=https://x.test/?a=b", ("data.url", "https://x.test/?a=b")),
        ('data.metadata."a=b"=c', ('data.metadata."a=b"', "c")),
        ('data.metadata."plan.tier"=pro', ('data.metadata."plan.tier"', "pro")),
        ("customer:data.email=ada@example.com", ("customer:data.email", "ada@example.com")),
    ],
)
def test_parse_assignment(text: str, expected: tuple[str, Any]) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data.amount", "Expected PATH=VALUE"),
        ('data."a=1', "Expected PATH=VALUE"),
        ("=1", "empty key"),
        ("data..amount=1", "empty key"),
        ('data."a"b=1', "expected '.' after the quoted key"),
    ],
)
def test_parse_assignment_errors(text: str, message: str) -> None:
    with pytest.raises(FixtureError, match=re.escape(message)):
        parse_assignment(text)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ('data.metadata."plan.tier"', "pro", {"data": {"items": [{"amount": 1}], "metadata": {"plan.tier": "pro"}}}),
        ("data.items.0.amount", 2, {"data": {"items": [{"amount": 2}]}}),
        ("data.items.1", {"amount": 3}, {"data": {"items": [{"amount": 1}, {"amount": 3}]}}),
        ("data.new.deep.key", True, {"data": {"items": [{"amount": 1}], "new": {"deep": {"key": True}}}}),
        ("data.metadata.0", "zero", {"data": {"items": [{"amount": 1}], "metadata": {"0": "zero"}}}),
        ('"data"', None, {"data": None}),
    ],
)
def test_set_path(path: str, value: Any, expected: dict[str, Any]) -> None:
    obj: dict[str, Any] = {"data": {"items": [{"amount": 1}]}}
    set_path(obj, path, value)
    assert obj == expected


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("data.items.5", "5 is not an index of a list of 1 items"),
        ('data.items."0".amount', "'0' is not an index of a list of 1 items"),
        ("data.items.0.amount.cents", "data.items.0.amount is int, not an object or a list"),
    ],
)
def test_set_path_errors(path: str, message: str) -> None:
    with pytest.raises(FixtureError, match=re.escape(message)):
        set_path({"data": {"items": [{"amount": 1}]}}, path, 1)


def test_get_and_remove_path() -> None:
    obj: dict[str, Any] = {"data": {"items": [{"amount": 1}, {"amount": 2}], "metadata": {"plan.tier": "pro"}}}
    assert get_path(obj, "data.items.1.amount") == 2
    assert remove_path(obj, 'data.metadata."plan.tier"') == "pro"
    assert remove_path(obj, "data.items.0") == {"amount": 1}
    assert obj == {"data": {"items": [{"amount": 2}], "metadata": {}}}
    with pytest.raises(
        FixtureError, match=re.escape("Path 'data.amout' not found: no key 'amout' there (its keys: items")
    ):
        remove_path(obj, "data.amout")
    with pytest.raises(FixtureError, match="not an index"):
        remove_path(obj, "data.items.3")


def test_build_a_type_with_set_and_remove(catalogue: Catalogue) -> None:
    [event] = catalogue.build(
        "checkout_link.created",
        set=["data.line_items.0.amount=1200", ("data.link_name", "spring sale")],
        add=[parse_assignment('data.metadata."plan.tier"=pro')],
        remove=["data.image_ids", "data.url"],
    )
    assert event["data"]["line_items"][0]["amount"] == 1200
    assert event["data"]["metadata"] == {"plan.tier": "pro"}
    assert event["data"]["link_name"] == "spring sale"
    assert "image_ids" not in event["data"]
    assert "url" not in event["data"]
    [fresh] = catalogue.build("refund.created", set={"data.id": "{{new:re}}"})
    assert re.fullmatch(r"re_[A-Za-z0-9]{14}", fresh["data"]["id"])


@pytest.mark.parametrize("kwargs", [{"set": "data.amount=1"}, {"remove": "data.amount"}])
def test_one_string_instead_of_a_list_is_a_type_error(catalogue: Catalogue, kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=r"takes a list of \w+, not one string"):
        catalogue.build("refund.created", **kwargs)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        (
            "data.amout=5",
            "Path 'data.amout' not found: no key 'amout' there (its keys: amount, created_at, currency, id, reason, "
            "status, transaction_id). Did you mean 'amount'? To add a new key, use add= (--add on the command line).",
        ),
        (
            "data.metadata.kind=x",
            "Path 'data.metadata.kind' not found: no key 'metadata' there (its keys: amount, created_at, currency, id, "
            "reason, status, transaction_id).",
        ),
    ],
)
def test_set_refuses_a_path_the_fixture_lacks_and_names_the_closest_keys(
    catalogue: Catalogue, assignment: str, message: str
) -> None:
    with pytest.raises(FixtureError) as raised:
        catalogue.build("refund.created", set=[assignment])
    assert str(raised.value) == message
    [event] = catalogue.build("refund.created", add=[assignment])
    path, value = parse_assignment(assignment)
    assert get_path(event, path) == value


def test_build_a_scenario_with_step_prefixes(catalogue: Catalogue) -> None:
    events = catalogue.build(
        "checkout-to-subscription",
        set={"customer:data.id": "cus_fixed", "customer:data.email": "grace@example.com"},
        add={"data.livemode": False},
        remove=["customer:data.phone", "data.currency"],
    )
    customer, _, checkout, sub, payment = events
    assert customer["data"]["email"] == "grace@example.com"
    assert "phone" not in customer["data"]
    # A caller's value flows into the later steps that reference it.
    assert (
        checkout["data"]["customer_id"] == sub["data"]["customer_id"] == payment["data"]["customer_id"] == "cus_fixed"
    )
    assert all(event["data"]["livemode"] is False for event in events)
    assert all("currency" not in event["data"] for event in events)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("refund.created", {"set": {"customer:data.x": 1}}, "'refund.created' is an event type, not a scenario"),
        (
            "checkout-to-subscription",
            {"set": {"nobody:data.x": 1}},
            "has no step 'nobody'; its steps: customer, link, checkout, sub, payment.",
        ),
        ("checkout-to-subscription", {"remove": ["data.nope"]}, "no step has the path 'data.nope' to remove"),
        ("checkout-to-subscription", {"remove": ["sub:data.nope"]}, "step 4 ('sub'): Path 'data.nope' not found"),
        ("refund.created", {"remove": ["data.nope"]}, "Path 'data.nope' not found"),
    ],
)
def test_build_errors(catalogue: Catalogue, name: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FixtureError, match=re.escape(message)):
        catalogue.build(name, **kwargs)


# Errors ------------------------------------------------------------------------------------------


def test_fixture_error_is_a_montra_hooks_error() -> None:
    assert issubclass(FixtureError, MontraHooksError)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("subscription.upgrade", "'subscription.upgraded'"),
        ("refund.create", "'refund.created'"),
        ("checkout-to-subscriptoin", "'checkout-to-subscription'"),
    ],
)
def test_unknown_name_lists_close_matches(catalogue: Catalogue, name: str, suggestion: str) -> None:
    with pytest.raises(FixtureError, match=f"No fixture type or scenario named '{name}'") as info:
        catalogue.build(name)
    assert f"Did you mean {suggestion}" in str(info.value)
    assert "Run `montra-hooks fixtures list`" in str(info.value)
    with pytest.raises(FixtureError, match="Did you mean"):
        catalogue.source(name)


def test_unknown_name_with_nothing_close(catalogue: Catalogue) -> None:
    with pytest.raises(FixtureError) as info:
        catalogue.template("zzz")
    assert str(info.value) == (
        "No fixture type or scenario named 'zzz'. Run `montra-hooks fixtures list` to see every type and scenario."
    )


def test_a_scenario_is_not_a_template(catalogue: Catalogue) -> None:
    with pytest.raises(FixtureError, match="'checkout-to-subscription' is a scenario, not an event type"):
        catalogue.template("checkout-to-subscription")


@pytest.mark.parametrize("where", ["refund.created.json", "scenarios/broken.json"])
def test_malformed_json_names_the_file_and_position(tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{\n  "type": "refund.created",\n  "data": {,}\n}\n')
    name = path.name.removesuffix(".json")
    with pytest.raises(FixtureError, match=re.escape(f"{path} is not valid JSON: Expecting property name enclosed")):
        Catalogue([tmp_path]).build(name)
    with pytest.raises(FixtureError, match="at line 3, column 12"):
        Catalogue([tmp_path]).build(name)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (
            "{{custmer.data.id}}",
            "Scenario 'bad', step 2 ('sub'): Reference {{custmer.data.id}} names no earlier step 'custmer' "
            "(earlier steps: customer).",
        ),
        (
            "{{customer.data.idd}}",
            "Scenario 'bad', step 2 ('sub'): Reference {{customer.data.idd}}: Path 'customer.data.idd' not found",
        ),
        ("{{sub.data.id}}", "step 2 ('sub'): Reference {{sub.data.id}} names no earlier step 'sub'"),
        ("{{new:}}", "step 2 ('sub'): Reference {{new:}}: an id prefix is letters and digits"),
    ],
)
def test_unknown_reference_names_the_scenario_and_step(tmp_path: Path, reference: str, message: str) -> None:
    _write(
        tmp_path / "scenarios" / "bad.json",
        {
            "description": "Broken.",
            "steps": [
                {"as": "customer", "type": "customer.created"},
                {"as": "sub", "type": "subscription.created", "set": {"data.customer_id": reference}},
            ],
        },
    )
    with pytest.raises(FixtureError, match=re.escape(message)):
        Catalogue([tmp_path]).build("bad")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "a scenario is an object"),
        ({"steps": []}, "with one step or more"),
        ({"steps": [{"type": "customer.created"}], "extra": 1}, "unknown keys ['extra']"),
        ({"steps": [{"as": "a"}]}, 'step 1 must be an object with a "type" string'),
        ({"steps": [{"type": "customer.created", "sets": {}}]}, "step 1 has unknown keys ['sets']"),
        (
            {"steps": [{"as": "a", "type": "customer.created"}, {"as": "a", "type": "customer.created"}]},
            "step 2: \"as\" must be a unique name of letters, digits, _ and -, got 'a'",
        ),
        ({"steps": [{"as": "a.b", "type": "customer.created"}]}, '"as" must be a unique name'),
        ({"steps": [{"type": "customer.created", "set": []}]}, '"set" must be an object of path: value'),
        ({"steps": [{"type": "customer.created", "set": {"data..x": 1}}]}, "step 1: Path 'data..x' has an empty key"),
        ({"steps": [{"type": "customer.creatd"}]}, "step 1: No fixture type or scenario named 'customer.creatd'"),
        ({"steps": [{"type": "bad"}]}, "'bad' is a scenario, not an event type"),
    ],
)
def test_malformed_scenarios(tmp_path: Path, doc: Any, message: str) -> None:
    _write(tmp_path / "scenarios" / "bad.json", doc)
    with pytest.raises(FixtureError, match=re.escape(message)):
        Catalogue([tmp_path]).build("bad")
