"""Example handlers: what `make run` serves. Copy this file to start your own.

Delivery is at least once: the same event can reach a handler twice (a retry after a crash,
a redelivery from Montra, a replay with --keep-id), so every handler is idempotent on
`event.id` or on the resource it changes.
"""

from __future__ import annotations

import logging

from receiver import Event, Hooks, NoRetry

log = logging.getLogger("examples.handlers")
hooks = Hooks()

# Stand-ins for your database: what the handlers have done, keyed so a second delivery changes nothing.
plans: dict[str, str] = {}
usage: dict[str, float] = {}
seen_usage_events: set[str] = set()


@hooks.on("subscription.created", "subscription.upgraded", "subscription.resumed")
async def grant_plan(event: Event) -> None:
    """Give the customer the plan they pay for. Setting a value is idempotent by nature."""
    subscription = event.data
    plans[subscription["customer_id"]] = subscription.get("pricing_model_id", "unknown")
    log.info("customer %s now on %s", subscription["customer_id"], plans[subscription["customer_id"]])


@hooks.on("subscription.canceled", "subscription.paused")
async def revoke_plan(event: Event) -> None:
    plans.pop(event.data["customer_id"], None)
    log.info("customer %s lost access (%s)", event.data["customer_id"], event.type)


@hooks.on("usage.reported")
def record_usage(event: Event) -> None:
    """A sync handler (runs in the dispatcher's thread pool). Adding is not idempotent: remember event ids."""
    if event.id in seen_usage_events:
        return
    seen_usage_events.add(event.id)
    key = f"{event.data['customer_id']}/{event.data['meter_slug']}"
    usage[key] = usage.get(key, 0) + float(event.data.get("amount", 1))


@hooks.on("payment.failed", max_attempts=3)
async def email_payment_failed(event: Event) -> None:
    payment = event.data
    if "customer_id" not in payment:
        raise NoRetry("payment.failed without customer_id: retrying cannot fix it")
    log.info("emailing customer %s: payment %s failed", payment["customer_id"], payment.get("id"))


@hooks.on_dead
async def alert(event: Event, handler: str, error: str) -> None:
    log.error("handler %s gave up on %s [%s]: %s", handler, event.type, event.id, error.splitlines()[-1])
