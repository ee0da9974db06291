"""Typed payloads: a `TypedDict` for each Montra resource, and the payload each event type carries.

>>> from receiver import Event, Hooks
>>> from receiver.types import Subscription
>>> hooks = Hooks()
>>> @hooks.on("subscription.upgraded")
... async def grant_pro(event: Event[Subscription]) -> None:
...     plan = event.data["pricing_model_id"]  # a str to mypy; a misspelt key is a mypy error

The source is this module. The TypedDicts below say which fields each resource has, their JSON
types, which may be absent (`NotRequired`) and which may be null (`| None`); the `...EventType`
aliases say which event types carry which resource. Everything else is derived from them:
`EVENT_TYPES` and `PAYLOADS` here, `hooks.on`'s typed overloads (one per alias), the expected
shapes `montra-hooks drift` compares stored events with (read at runtime with
`typing.get_type_hints`), and the check that every built-in fixture (`fixtures/<type>.json`) has
exactly these fields (tests/test_types.py keeps the fixtures, this module and the overloads equal).

Field names follow the Montra API reference; fields it does not list (ids, timestamps, statuses)
follow the built-in fixtures. Amounts are "number" in the reference, so `float` (an `int` is a
`float` to mypy, and JSON integers pass the drift check). Times are ISO 8601 strings, as sent.

This module deliberately has no `from __future__ import annotations`: a TypedDict computes its
`__required_keys__` from its annotations when the class is created, and on Python 3.11 a string
annotation hides `NotRequired` from it. It imports nothing but `typing`, so importing it is free.
"""

from typing import Any, Final, Literal, NotRequired, TypedDict, get_args

__all__ = [
    "EVENT_TYPES",
    "PAYLOADS",
    "Address",
    "Checkout",
    "CheckoutEventType",
    "CheckoutLink",
    "CheckoutLinkEventType",
    "Customer",
    "CustomerEventType",
    "Discount",
    "DiscountEventType",
    "Entitlement",
    "EntitlementEventType",
    "EventType",
    "LineItem",
    "Meter",
    "MeterEventType",
    "Payment",
    "PaymentEventType",
    "PricingModel",
    "PricingModelEventType",
    "Refund",
    "RefundEventType",
    "ScheduledChange",
    "ScheduledChangeEventType",
    "Subscription",
    "SubscriptionEventType",
    "UsageEventType",
    "UsageRecord",
]


# Resources --------------------------------------------------------------------------------------


class Address(TypedDict):
    """A postal address, as a customer's `address` holds it."""

    line1: str
    city: str
    postal_code: str
    country: str


class Customer(TypedDict):
    """A billing profile (`POST /customers`): `customer.created`, `customer.updated`."""

    id: str
    name: str
    email: str
    phone: NotRequired[str | None]
    address: NotRequired[Address | None]
    created_at: str
    updated_at: NotRequired[str]


class Meter(TypedDict):
    """What usage is counted against (`POST /meters`): `meter.created`."""

    id: str
    slug: str
    name: str
    aggregation: str
    created_at: str


class UsageRecord(TypedDict):
    """Reported consumption (`POST /usage`): `usage.reported`."""

    id: str
    customer_id: str
    meter_slug: str
    amount: float
    metadata: NotRequired[dict[str, Any]]
    created_at: str


class PricingModel(TypedDict):
    """A plan (`POST /pricing-models`): `pricing_model.created`, `pricing_model.updated`."""

    id: str
    name: str
    is_default: bool
    amount: float
    currency: str
    interval: str
    created_at: str
    updated_at: NotRequired[str]


class LineItem(TypedDict):
    """One item of a multi-item checkout link."""

    name: str
    pricing_model_id: str
    quantity: int
    amount: float


class CheckoutLink(TypedDict):
    """A payment flow (`POST /checkout-links`): `checkout_link.created`."""

    id: str
    link_name: str
    line_items: NotRequired[list[LineItem]]
    image_ids: NotRequired[list[str]]
    """Internal image ids or external URLs."""
    amount: NotRequired[float | None]
    currency: str
    payment_name: str
    url: str
    created_at: str


class Checkout(TypedDict):
    """A checkout link paid: `checkout.completed`."""

    checkout_link_id: str
    customer_id: str
    amount: float
    currency: str
    transaction_id: str
    completed_at: str


class Payment(TypedDict):
    """A charge, the transaction refunds name: `payment.succeeded`, `payment.failed`."""

    id: str
    transaction_id: str
    customer_id: str
    subscription_id: NotRequired[str]
    """Absent for a one-off checkout's payment."""
    amount: float
    currency: str
    status: str
    """`succeeded` or `failed`."""
    failure_code: NotRequired[str]
    """Only on `payment.failed`, as is `failure_message`."""
    failure_message: NotRequired[str]
    created_at: str


class Subscription(TypedDict):
    """A recurring billing relationship: `subscription.created`, `.upgraded`, `.paused`, `.resumed`,
    `.past_due`, `.canceled`."""

    id: str
    customer_id: str
    pricing_model_id: str
    status: str
    """`active`, `past_due`, `paused` or `canceled`."""
    current_period_start: str
    current_period_end: str
    created_at: str
    updated_at: NotRequired[str]
    paused_at: NotRequired[str]
    resumed_at: NotRequired[str]
    canceled_at: NotRequired[str]
    cancellation_reason: NotRequired[str]


class ScheduledChange(TypedDict):
    """A plan change set for a future date (`POST /subscriptions/{id}/scheduled-changes`)."""

    id: str
    subscription_id: str
    customer_id: str
    pricing_model_id: str
    """The plan the subscription moves to at `effective_at`."""
    effective_at: str
    status: str
    created_at: str


class Refund(TypedDict):
    """A reversal of a payment (`POST /refunds`): `refund.created`."""

    id: str
    transaction_id: str
    amount: float
    currency: str
    reason: NotRequired[str | None]
    status: str
    created_at: str


class Discount(TypedDict):
    """An incentive (`POST /discounts`): `discount.created`. One of `percent_off` and `amount_off` is set."""

    id: str
    name: str
    code: str
    percent_off: float | None
    amount_off: float | None
    duration: Literal["once", "repeating", "forever"]
    duration_in_months: NotRequired[int | None]
    """For `repeating` discounts."""
    created_at: str


class Entitlement(TypedDict):
    """A customer's quota on a meter (`GET /entitlements`), sent when it runs out: `entitlement.exhausted`."""

    customer_id: str
    meter_slug: str
    limit: int
    used: int
    current_period_start: str
    current_period_end: str
    exhausted_at: str


# Event types ------------------------------------------------------------------------------------
# One alias per payload: `hooks.on` has one overload per alias, so a new type of an existing resource
# is one string added here; a new resource is a TypedDict, an alias, a row of _PAYLOAD_OF and an overload.

CustomerEventType = Literal["customer.created", "customer.updated"]
MeterEventType = Literal["meter.created"]
UsageEventType = Literal["usage.reported"]
PricingModelEventType = Literal["pricing_model.created", "pricing_model.updated"]
CheckoutLinkEventType = Literal["checkout_link.created"]
CheckoutEventType = Literal["checkout.completed"]
PaymentEventType = Literal["payment.succeeded", "payment.failed"]
SubscriptionEventType = Literal[
    "subscription.created",
    "subscription.upgraded",
    "subscription.paused",
    "subscription.resumed",
    "subscription.past_due",
    "subscription.canceled",
]
ScheduledChangeEventType = Literal["subscription.scheduled_change.created"]
RefundEventType = Literal["refund.created"]
DiscountEventType = Literal["discount.created"]
EntitlementEventType = Literal["entitlement.exhausted"]

EventType = Literal[
    CustomerEventType,
    MeterEventType,
    UsageEventType,
    PricingModelEventType,
    CheckoutLinkEventType,
    CheckoutEventType,
    PaymentEventType,
    SubscriptionEventType,
    ScheduledChangeEventType,
    RefundEventType,
    DiscountEventType,
    EntitlementEventType,
]
"""Every event type this version knows. Montra may send others: the receiver stores them too."""

_PAYLOAD_OF: Final[tuple[tuple[Any, type[Any]], ...]] = (
    (CustomerEventType, Customer),
    (MeterEventType, Meter),
    (UsageEventType, UsageRecord),
    (PricingModelEventType, PricingModel),
    (CheckoutLinkEventType, CheckoutLink),
    (CheckoutEventType, Checkout),
    (PaymentEventType, Payment),
    (SubscriptionEventType, Subscription),
    (ScheduledChangeEventType, ScheduledChange),
    (RefundEventType, Refund),
    (DiscountEventType, Discount),
    (EntitlementEventType, Entitlement),
)

PAYLOADS: Final[dict[str, type[Any]]] = {name: payload for alias, payload in _PAYLOAD_OF for name in get_args(alias)}
"""Each known event type's payload TypedDict: `PAYLOADS["subscription.upgraded"] is Subscription`."""

EVENT_TYPES: Final[tuple[str, ...]] = tuple(sorted(PAYLOADS))
"""Every known event type, sorted."""
