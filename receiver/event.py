"""The event a handler receives, the handler types and the status values: named once, imported everywhere."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Self, TypeAlias, cast

from typing_extensions import TypeVar

from .errors import EnvelopeError

__all__ = [
    "AttemptOutcome",
    "DeadCallback",
    "Event",
    "EventStatus",
    "Handler",
    "RunStatus",
    "parse_envelope",
    "resource_refs",
]

MAX_REF_CHARS = 256
"""Longer `data.id` / `data.<kind>_id` values are not kept as references."""

RunStatus: TypeAlias = Literal["pending", "running", "succeeded", "failed", "dead"]
"""A handler run: `failed` waits to retry; `dead` will not be tried again unless re-queued."""

AttemptOutcome: TypeAlias = Literal["succeeded", "failed", "timeout", "crashed", "dead"]
"""How one try of a handler ended: `crashed` = its process died; `dead` = it failed and no try is left."""

EventStatus: TypeAlias = Literal["dead", "failed", "pending", "handled", "unhandled"]
"""An event's status, derived from its runs: the first of these that applies."""


Data = TypeVar("Data", default=dict[str, Any])
"""An event's payload type: a TypedDict of `receiver.types` (`Event[Subscription]`); a plain dict when unsaid."""


@dataclass(frozen=True, slots=True)
class Event(Generic[Data]):
    """One Montra webhook as a handler sees it.

    `id` is the `webhook-id` header (the idempotency key: the same on every retry and
    redelivery), `body` the exact bytes received, `attempt` this handler's try, from 1.
    Delivery is at least once: a handler must be idempotent on `event.id`.

    `Event[Subscription]` types `data` with a payload of `receiver.types`; a bare `Event` is
    `Event[dict[str, Any]]`. The payload is not checked at runtime: `montra-hooks drift` reports
    stored events whose shape differs from these types.
    """

    id: str
    type: str
    data: Data
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime | None = None
    previous_attributes: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    superseded: bool = False
    """For a handler `ordered_by` a resource: it already finished a newer event (by `timestamp`) about it."""

    @property
    def refs(self) -> dict[str, str]:
        """The resources this event is about, by kind: `{"subscription": "sub_...", "customer": "cus_..."}`."""
        return dict(resource_refs(self.type, self.data))

    @classmethod
    def from_body(cls, id: str, body: bytes, headers: Mapping[str, str] | None = None, *, attempt: int = 1) -> Self:
        """Parse an envelope (`{"type": ..., "data": ..., "timestamp": ...}`) received as `body`.

        `Event[Subscription].from_body(...)` is typed as an `Event[Subscription]`, so a test can call a typed
        handler with it; the payload's shape is taken on trust (a fixture is a good source).
        """
        envelope = json.loads(body)
        return cls.from_envelope(id, envelope, body, headers or {}, attempt=attempt)

    @classmethod
    def from_envelope(
        cls, id: str, envelope: dict[str, Any], body: bytes, headers: Mapping[str, str], *, attempt: int = 1
    ) -> Self:
        data = envelope.get("data")
        previous = envelope.get("previous_attributes")
        return cls(
            id=id,
            type=envelope["type"],
            data=cast(Data, data if isinstance(data, dict) else {}),
            body=body,
            headers=headers,
            timestamp=parse_timestamp(envelope.get("timestamp")),
            previous_attributes=previous if isinstance(previous, dict) else {},
            attempt=attempt,
        )


def parse_envelope(body: bytes) -> dict[str, Any]:
    """The event envelope in `body`, as the receiver accepts it: UTF-8 JSON, an object with a string `type`."""
    try:
        envelope = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise EnvelopeError("invalid_json", "The body is not UTF-8 JSON.") from e
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str) or not envelope["type"]:
        raise EnvelopeError("invalid_event", 'The body is not a Montra event: it needs a string "type".')
    if not envelope["type"].isprintable():
        raise EnvelopeError("invalid_event", 'The event "type" holds control characters: no Montra type does.')
    return envelope


def resource_refs(event_type: str, data: object) -> list[tuple[str, str]]:
    """(kind, id) pairs an event is about: what the store keeps in `event_refs` and `Event.refs` shows.

    The type's prefix names `data.id` (`subscription.upgraded` -> ("subscription", data.id)), and each
    string `data.<kind>_id` adds (kind, value). A kind appears once: the prefix's own `data.id` wins.
    """
    if not isinstance(data, dict):
        return []
    refs: dict[str, str] = {}
    kind, dot, _ = event_type.partition(".")
    if dot and kind and _is_ref(data.get("id")):
        refs[kind] = data["id"]
    for key, value in data.items():
        if key.endswith("_id") and len(key) > 3 and _is_ref(value):
            refs.setdefault(key[:-3], value)
    return list(refs.items())


def stored_refs(event_type: str, body: bytes) -> list[tuple[str, str]]:
    """`resource_refs` of a stored event's body: the keys ingest wrote to `event_refs` for it."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):  # stored bodies are JSON objects: this is for hand-made rows
        return []
    return resource_refs(event_type, envelope.get("data")) if isinstance(envelope, dict) else []


def _is_ref(value: object) -> bool:
    # An id is a short printable string: anything else (a NUL, a megabyte) is not worth an index entry.
    return isinstance(value, str) and 0 < len(value) <= MAX_REF_CHARS and value.isprintable()


def parse_timestamp(value: object) -> datetime | None:
    """The envelope's `timestamp` as an aware datetime, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


Handler: TypeAlias = Callable[[Event], Awaitable[None] | None]
"""A handler: `async def f(event)` runs on the event loop, `def f(event)` in the dispatcher's thread pool."""

DeadCallback: TypeAlias = Callable[[Event, str, str], Awaitable[None] | None]
"""Called as `(event, handler_name, error)` when a run becomes `dead`."""
