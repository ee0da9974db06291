"""`hooks.on(..., ordered_by=, hold_on_dead=)` in one process: registration, what ingest records, `Event.superseded`,
inline dispatch of a held run, and the inspector's event page naming what a run waits for."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from support.dispatch import runs
from support.signing import signed_post
from support.wait import wait_until
from test_inspector import LOCAL, LOOPBACK_CLIENT, log_in

from receiver import Event, Hooks, create_app
from receiver.errors import ConfigurationError
from receiver.ordering import order_time, run_ordering

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ordered_by": "subscription_id"}, r"not its id field: write ordered_by='subscription'"),
        ({"ordered_by": "Subscription"}, r"ordered_by names a resource kind, such as 'subscription'"),
        ({"ordered_by": ""}, r"ordered_by names a resource kind"),
        ({"ordered_by": "data.id"}, r"ordered_by names a resource kind"),
        ({"ordered_by": 3}, r"ordered_by names a resource kind"),
        ({"hold_on_dead": True}, r"hold_on_dead=True needs ordered_by"),
        ({"ordered_by": "customer", "hold_on_dead": "yes"}, r"hold_on_dead is True or False, got 'yes'"),
    ],
)
def test_a_bad_ordering_is_refused_at_registration(options: dict[str, Any], message: str) -> None:
    hooks = Hooks()
    with pytest.raises(ConfigurationError, match=message):
        hooks.on("subscription.*", **options)
    assert hooks.names == []


def test_ordering_is_kept_on_the_registration_and_recorded_for_events_with_the_reference() -> None:
    hooks = Hooks()

    @hooks.on("subscription.*", "payment.*", name="by_sub", ordered_by="subscription")
    async def by_sub(event: Event) -> None: ...

    @hooks.on("*", name="by_customer", ordered_by="pricing_model", hold_on_dead=True)
    async def by_customer(event: Event) -> None: ...

    @hooks.on("*", name="free")
    async def free(event: Event) -> None: ...

    registration = hooks.get("by_sub")
    assert registration is not None
    assert (registration.ordered_by, registration.hold_on_dead) == ("subscription", False)
    both = hooks.handlers_for("subscription.updated")
    assert run_ordering(both, [("subscription", "sub_1"), ("pricing_model", "pm_1")]) == {
        "by_sub": ("sub_1", False),
        "by_customer": ("pm_1", True),
    }
    # A payment without subscription_id is not about one subscription: that run is unordered.
    assert run_ordering(hooks.handlers_for("payment.failed"), [("payment", "pay_1")]) == {}


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-11-25T17:00:00Z", datetime(2026, 11, 25, 17, tzinfo=UTC).timestamp()),
        ("2026-11-25T18:00:00+01:00", datetime(2026, 11, 25, 17, tzinfo=UTC).timestamp()),
        ("2026-11-25T17:00:00.250", datetime(2026, 11, 25, 17, tzinfo=UTC).timestamp() + 0.25),  # no offset: UTC
        ("yesterday", None),
        (1764090000, None),
        (None, None),
    ],
)
def test_order_time_reads_the_envelope_timestamp(timestamp: object, expected: float | None) -> None:
    assert order_time(timestamp) == expected


def body(event_type: str, stamp: str, **data: Any) -> bytes:
    return json.dumps({"type": event_type, "timestamp": stamp, "data": data}).encode()


def test_a_late_older_event_runs_superseded_and_only_for_the_ordered_handler(tmp_path: Path) -> None:
    seen: list[tuple[str, str, bool]] = []
    hooks = Hooks()

    @hooks.on("subscription.*", name="ordered", ordered_by="subscription")
    async def ordered(event: Event) -> None:
        seen.append(("ordered", event.id, event.superseded))

    @hooks.on("subscription.*", name="plain")
    async def plain(event: Event) -> None:
        seen.append(("plain", event.id, event.superseded))

    db = tmp_path / "events.db"
    app = create_app(hooks, db=db, secrets=[SECRET])
    with TestClient(app) as client:
        newer = body("subscription.updated", "2026-11-25T17:00:09Z", id="sub_1")
        assert signed_post("/webhooks", newer, SECRET, "evt_newer", client=client).status_code == 200
        wait_until(lambda: len(seen) == 2, what="the newer event's two runs")
        older = body("subscription.updated", "2026-11-25T17:00:01Z", id="sub_1")
        assert signed_post("/webhooks", older, SECRET, "evt_older", client=client).status_code == 200
        wait_until(lambda: len(seen) == 4, what="the older event's two runs")
    assert sorted(seen) == [
        ("ordered", "evt_newer", False),
        ("ordered", "evt_older", True),
        ("plain", "evt_newer", False),
        ("plain", "evt_older", False),
    ]
    stored = runs(db)
    assert (stored["evt_older", "ordered"]["order_key"], stored["evt_older", "plain"]["order_key"]) == ("sub_1", None)
    assert stored["evt_older", "ordered"]["order_at"] == "2026-11-25T17:00:01.000000Z"


def make_inline(tmp_path: Path) -> Any:
    hooks = Hooks()

    @hooks.on("subscription.*", name="sync", ordered_by="subscription", max_attempts=4)
    async def sync(event: Event) -> None:
        if event.data.get("broken"):
            raise RuntimeError("billing is down")

    return create_app(hooks, db=tmp_path / "events.db", secrets=[SECRET], dispatch="inline", inspect=True)


def test_inline_dispatch_answers_500_for_a_held_run_and_the_event_page_says_what_it_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # inspect=True keeps its token in .montra-hooks/ here
    monkeypatch.delenv("MONTRA_HOOKS_INSPECT_TOKEN", raising=False)
    app = make_inline(tmp_path)
    with TestClient(app, base_url=LOCAL, client=LOOPBACK_CLIENT) as client:
        first = body("subscription.updated", "2026-11-25T17:00:01Z", id="sub_1", broken=True)
        second = body("subscription.updated", "2026-11-25T17:00:02Z", id="sub_1")
        failed = signed_post("/webhooks", first, SECRET, "evt_1", client=client)
        held = signed_post("/webhooks", second, SECRET, "evt_2", client=client)
        log_in(client, app)
        page = client.get("/inspect/events/evt_2")
    assert (failed.status_code, failed.json()["error"]) == (500, "handler_failed")
    assert (held.status_code, held.json()["error"]) == (500, "handler_failed")
    stored = runs(tmp_path / "events.db")
    assert (stored["evt_1", "sync"]["status"], stored["evt_2", "sync"]["status"]) == ("failed", "pending")
    assert stored["evt_2", "sync"]["attempts"] == 0
    assert page.status_code == 200
    assert 'data-waiting-for="evt_1"' in page.text
    assert 'href="/inspect/events/evt_1"><code>evt_1</code></a> (failed, try 1 of 4' in page.text
