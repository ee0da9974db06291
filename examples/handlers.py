"""Example handlers: what `make run` serves. Copy this file to start your own.

Delivery is at least once: the same event can reach a handler twice (a retry after a crash,
a redelivery from Montra, a replay with --keep-id), so every handler is idempotent on
`event.id` or on the resource it changes.
"""

from __future__ import annotations

import logging

from receiver import Event, Hooks, NoRetry
from receiver.types import Subscription

log = logging.getLogger("examples.handlers")
hooks = Hooks()

# Stand-ins for your database: what the handlers have done, keyed so a second delivery changes nothing.
plans: dict[str, str] = {}
usage: dict[str, float] = {}
seen_usage_events: set[str] = set()


@hooks.on(
    "subscription.created",
    "subscription.upgraded",
    "subscription.resumed",
    "subscription.paused",
    "subscription.canceled",
    ordered_by="subscription",  # one subscription's events run one at a time, oldest first
)
async def sync_plan(event: Event[Subscription]) -> None:
    """Give the customer the plan they pay for, or take it away. Setting a value is idempotent by nature."""
    subscription = event.data  # typed: mypy knows a Subscription's fields
    if event.superseded:  # it arrived late: a newer event about this subscription was already applied
        log.info("ignoring %s [%s]: superseded", event.type, event.id)
        return
    if event.type in ("subscription.paused", "subscription.canceled"):
        plans.pop(subscription["customer_id"], None)
        log.info("customer %s lost access (%s)", subscription["customer_id"], event.type)
    else:
        plans[subscription["customer_id"]] = subscription["pricing_model_id"]
        log.info("customer %s now on %s", subscription["customer_id"], subscription["pricing_model_id"])


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
