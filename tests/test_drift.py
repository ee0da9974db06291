"""`montra-hooks drift` against real stores (SQLite and PostgreSQL) holding events that add, drop and retype fields."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from receiver.stores.open import open_store
from receiver.stores.protocol import Incoming
from replay.cli import cli
from replay.fixtures import Catalogue
from replay.paths import remove_path, set_path

DAY = 86400.0
NOW = time.time()
FIXTURES = Catalogue()


def event(event_type: str, set: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> dict[str, Any]:
    """A built-in fixture, changed as Montra might change its payloads (`set` may add keys)."""
    [built] = FIXTURES.build(event_type)
    for path, value in (set or {}).items():
        set_path(built, path, value)
    for path in remove:
        remove_path(built, path)
    return built


def store_events(url: str, events: list[tuple[str, dict[str, Any], float]]) -> None:
    """Store (id, envelope, received_at) in this order, as the receiver would: oldest first, seq ascending."""

    async def main() -> None:
        store = open_store(url)
        try:
            for event_id, envelope, at in events:
                body = json.dumps(envelope).encode()
                incoming = Incoming(event_id, envelope["type"], envelope.get("timestamp"), at, {}, body)
                assert (await store.ingest(incoming)).status == "stored"
        finally:
            await store.close()

    asyncio.run(main())


DRIFTED = [
    ("msg_cus_old", event("customer.created", set={"data.legacy": True}), NOW - 30 * DAY),
    ("msg_up_1", event("subscription.upgraded"), NOW - 3 * DAY),
    (
        "msg_up_2",
        event(
            "subscription.upgraded",
            set={"data.plan_name": "Pro", "data.current_period_end": 1775121590},
            remove=("data.status",),
        ),
        NOW - 2 * DAY,
    ),
    (
        "msg_up_3",
        event("subscription.upgraded", set={"data.plan_name": "Pro", "data.pricing_model_id": None}),
        NOW - DAY,
    ),
    (
        "msg_cl_1",
        event("checkout_link.created", set={"data.line_items.0.amount": "49.00", "data.line_items.0.tax": 0}),
        NOW - DAY,
    ),
    # phone is NotRequired: its absence is no difference; address is a nested TypedDict, looked into.
    ("msg_cus_1", event("customer.created", set={"data.address.zip": "94107"}, remove=("data.phone",)), NOW - DAY),
    ("msg_pay_1", event("payment.succeeded"), NOW - DAY),
    ("msg_inv_1", {"type": "invoice.paid", "data": {"id": "inv_1"}}, NOW - 60),
]


def drift(*args: str) -> Result:
    return CliRunner().invoke(cli, ["drift", *args])


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def found(path: str, count: int, example: str, **types: str) -> dict[str, Any]:
    return {"path": path, **types, "count": count, "example": example}


def report(event_type: str, sampled: int, newest: str, known: bool = True, **kinds: list[Any]) -> dict[str, Any]:
    return {
        "type": event_type,
        "known": known,
        "sampled": sampled,
        "newest": newest,
        "added": kinds.get("added", []),
        "missing": kinds.get("missing", []),
        "changed": kinds.get("changed", []),
    }


CHECKOUT_LINK = report(
    "checkout_link.created",
    1,
    "msg_cl_1",
    added=[found("data.line_items[].tax", 1, "msg_cl_1")],
    changed=[found("data.line_items[].amount", 1, "msg_cl_1", expected="number", seen="string")],
)
INVOICE = report("invoice.paid", 1, "msg_inv_1", known=False)
PAYMENT = report("payment.succeeded", 1, "msg_pay_1")
SUBSCRIPTION = report(
    "subscription.upgraded",
    3,
    "msg_up_3",
    added=[found("data.plan_name", 2, "msg_up_3")],
    missing=[found("data.status", 1, "msg_up_2")],
    changed=[
        found("data.current_period_end", 1, "msg_up_2", expected="string", seen="integer"),
        found("data.pricing_model_id", 1, "msg_up_3", expected="string", seen="null"),
    ],
)


def test_drift_reports_added_missing_and_changed_fields(store_url: str) -> None:
    store_events(store_url, DRIFTED)
    result = drift("--db", store_url, "--json")
    assert (result.exit_code, result.stderr) == (1, "")
    assert lines(result) == [
        CHECKOUT_LINK,
        report(
            "customer.created",
            2,
            "msg_cus_1",
            added=[found("data.address.zip", 1, "msg_cus_1"), found("data.legacy", 1, "msg_cus_old")],
        ),
        INVOICE,
        PAYMENT,
        SUBSCRIPTION,
    ]


def test_type_and_since_narrow_what_is_read(store_url: str) -> None:
    store_events(store_url, DRIFTED)
    result = drift("--db", store_url, "--json", "--since", "7d", "--type", "customer.*", "--type", "payment.succeeded")
    assert result.exit_code == 1
    assert lines(result) == [
        report("customer.created", 1, "msg_cus_1", added=[found("data.address.zip", 1, "msg_cus_1")]),
        PAYMENT,
    ]
    result = drift(
        "--db", store_url, "--json", "--type", "payment.*", "--type", "subscription.upgraded", "--since", "4d"
    )
    assert (result.exit_code, lines(result)) == (1, [PAYMENT, SUBSCRIPTION])
    # Only events that match the catalogue (no refund is stored): exit 0.
    result = drift("--db", store_url, "--json", "--type", "payment.*", "--type", "refund.created")
    assert (result.exit_code, lines(result)) == (0, [PAYMENT])


def test_sample_reads_the_newest_events_of_each_type(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    store_events(db, DRIFTED)
    result = drift("--db", db, "--json", "--sample", "1", "--type", "subscription.upgraded")
    assert (result.exit_code, lines(result)) == (
        1,
        [
            report(
                "subscription.upgraded",
                1,
                "msg_up_3",
                added=[found("data.plan_name", 1, "msg_up_3")],
                changed=[found("data.pricing_model_id", 1, "msg_up_3", expected="string", seen="null")],
            )
        ],
    )


def test_pages_of_events_add_up(tmp_path: Path) -> None:
    """More events than a page (500): every one in the sample is read, and no more."""
    db = str(tmp_path / "events.db")
    drifted = event("refund.created", set={"data.amount": "12.00"})
    store_events(
        db, [(f"msg_{n:04d}", event("refund.created") if n % 2 else drifted, NOW - 1200 + n) for n in range(1200)]
    )
    result = drift("--db", db, "--json", "--sample", "1100")
    changed = found("data.amount", 550, "msg_1198", expected="number", seen="string")
    assert (result.exit_code, lines(result)) == (1, [report("refund.created", 1100, "msg_1199", changed=[changed])])


def test_the_human_report(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    store_events(db, DRIFTED)
    result = drift("--db", db, "--since", "7d")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "checkout_link.created: 1 sampled, 2 difference(s)",
        "  added    data.line_items[].tax          1  msg_cl_1",
        "  changed  data.line_items[].amount       1  msg_cl_1  number -> string",
        "customer.created: 1 sampled, 1 difference(s)",
        "  added    data.address.zip       1  msg_cus_1",
        "invoice.paid: 1 sampled, not in the catalogue (newest msg_inv_1)",
        "payment.succeeded: 1 sampled, matches the catalogue",
        "subscription.upgraded: 3 sampled, 4 difference(s)",
        "  added    data.plan_name                2  msg_up_3",
        "  missing  data.status                   1  msg_up_2",
        "  changed  data.current_period_end       1  msg_up_2  string -> integer",
        "  changed  data.pricing_model_id         1  msg_up_3  string -> null",
        "",
        "4 of 5 type(s) differ from the catalogue (the newest 1,000 events of each type were read).",
    ]


def test_fixtures_show_no_drift(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    types = FIXTURES.types()
    store_events(db, [(f"msg_{n}", event(name), NOW - 60) for n, name in enumerate(types)])
    result = drift("--db", db)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        *(f"{name}: 1 sampled, matches the catalogue" for name in types),
        "",
        f"0 of {len(types)} type(s) differ from the catalogue (the newest 1,000 events of each type were read).",
    ]


def test_nothing_to_compare(tmp_path: Path) -> None:
    db = str(tmp_path / "events.db")
    store_events(db, [])
    result = drift("--db", db)
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "",
        f"No events are stored in {db}: nothing to compare.\n",
    )
    store_events(db, DRIFTED[:1])
    result = drift("--db", db, "--type", "refund.*", "--since", "2026-11-25T17:00:00Z")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "",
        f"No events match --type refund.* --since 2026-11-25T17:00:00.000000Z in {db}: nothing to compare.\n",
    )


def test_drift_never_creates_a_store(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    result = drift("--db", str(db))
    assert result.exit_code == 2
    assert "absent.db" in result.stderr
    assert not db.exists()


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("--sample", "0", "Error: Invalid value for '--sample': 0 is not in the range x>=1."),
        (
            "--type",
            "sub*",
            "Error: Invalid value for --type: Bad event pattern 'sub*': use an exact type "
            "('subscription.upgraded'), a prefix ('subscription.*') or '*'.",
        ),
        (
            "--since",
            "yesterday",
            "Error: Invalid value for --since: 'yesterday' is neither a time nor a duration: "
            "use e.g. 2026-11-25T17:00:00Z, 2026-11-25 or 2h.",
        ),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, option: str, value: str, error: str) -> None:
    result = drift("--db", str(tmp_path / "events.db"), option, value)
    assert (result.exit_code, result.stderr.splitlines()[-1]) == (2, error)
