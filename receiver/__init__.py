"""Receive Montra webhooks: verify (Standard Webhooks), store durably in SQLite, dispatch to handlers.

>>> from receiver import Hooks, Event, create_app
>>> hooks = Hooks()
>>> @hooks.on("subscription.upgraded")
... async def grant_pro(event: Event) -> None: ...
>>> app = create_app(hooks, db="montra-events.db", secrets=["whsec_..."])

Delivery to handlers is at least once: make every handler idempotent on `event.id`.
"""

from .app import create_app
from .errors import ConfigurationError, MontraHooksError, NoRetry, StoreUnavailable, VerificationError
from .event import Event
from .hooks import Hooks
from .verify import Verifier, sign

__all__ = [
    "ConfigurationError",
    "Event",
    "Hooks",
    "MontraHooksError",
    "NoRetry",
    "StoreUnavailable",
    "VerificationError",
    "Verifier",
    "create_app",
    "sign",
]
