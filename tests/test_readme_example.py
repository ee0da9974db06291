"""Testing your handlers with the pytest plugin: the README's complete example, run as it is written there.

Keep this file and the README's "Test your handlers with pytest" block identical.
"""

from __future__ import annotations

from receiver import Event, Hooks

# In your project these come from your app, e.g. `from myshop.webhooks import hooks, plans`.
hooks = Hooks()
plans: dict[str, str] = {}  # customer id -> pricing model: what your database would hold


@hooks.on("subscription.upgraded")
async def grant_plan(event: Event) -> None:
    plans[event.data["customer_id"]] = event.data["pricing_model_id"]  # setting a value is idempotent


@hooks.on("subscription.canceled")
async def revoke_plan(event: Event) -> None:
    if event.data["customer_id"] not in plans:
        raise LookupError(f"no plan to revoke for {event.data['customer_id']}")
    del plans[event.data["customer_id"]]


def test_an_upgrade_grants_the_new_plan(montra_app):
    app = montra_app(hooks)  # a real receiver: temporary SQLite store, handlers run before it answers

    response = app.send(
        "subscription.upgraded",  # the built-in fixture, with your overrides
        set={"data.customer_id": "cus_ada", "data.pricing_model_id": "pm_business"},
    )

    assert response.status_code == 200
    assert response.json()["status"] == "stored"
    assert plans["cus_ada"] == "pm_business"
    [run] = app.runs(response.json()["id"])
    assert (run.status, run.attempts) == ("succeeded", 1)


def test_a_redelivery_is_stored_once(montra_app, montra_event):
    app = montra_app(hooks)
    event = montra_event("subscription.upgraded", **{"data.customer_id": "cus_bob"})

    assert app.send(event).json()["status"] == "stored"
    assert app.send(event).json()["status"] == "duplicate"  # same webhook-id: not stored or handled twice
    assert [stored.id for stored in app.events()] == [event["id"]]


def test_a_failing_handler_is_recorded_for_a_retry(montra_app):
    app = montra_app(hooks)

    response = app.send("subscription.canceled", set={"data.customer_id": "cus_nobody"})

    assert response.status_code == 500  # inline dispatch: Montra would retry the delivery
    assert response.json()["error"] == "handler_failed"
    [run] = app.runs(response.json()["id"])
    assert run.status == "failed"
    assert "LookupError: no plan to revoke for cus_nobody" in run.last_error
