"""Receive Montra webhooks: verify (Standard Webhooks), store durably in SQLite, dispatch to handlers.

>>> from receiver import Hooks, Event, create_app
>>> hooks = Hooks()
>>> @hooks.on("subscription.upgraded")
... async def grant_pro(event: Event) -> None: ...
>>> app = create_app(hooks, db="montra-events.db", secrets=["whsec_..."])

Delivery to handlers is at least once: make every handler idempotent on `event.id`.

Names are imported when first used, so `from receiver.verify import Verifier` (or `from receiver import
sign`) loads neither Starlette nor the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {
    "create_app": "app",
    "ConfigurationError": "errors",
    "MontraHooksError": "errors",
    "NoRetry": "errors",
    "StoreUnavailable": "errors",
    "VerificationError": "errors",
    "Event": "event",
    "Hooks": "hooks",
    "Verifier": "verify",
    "sign": "verify",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'receiver' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
