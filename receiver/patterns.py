"""Event patterns: what `hooks.on` accepts (`subscription.upgraded`, `subscription.*`, `*`), what each
matches, and the closest known type to one that matches nothing Montra sends."""

from __future__ import annotations

import difflib

from .errors import ConfigurationError
from .types import EVENT_TYPES

__all__ = ["matches", "unknown_type_hint", "validate_pattern"]


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is an event type, `prefix.*` or `*`; raise ConfigurationError otherwise."""
    if not isinstance(pattern, str):
        raise ConfigurationError(
            f"Event patterns are strings, got {pattern!r}: write @hooks.on('subscription.upgraded'), "
            "with the parentheses and at least one type."
        )
    body = pattern[:-2] if pattern.endswith(".*") else pattern
    # Empty segments ('a..b', '.a', 'a.') and inner wildcards can never match a Montra type: refuse them early.
    if pattern != "*" and (not body or "*" in body or "" in body.split(".") or body != body.strip()):
        raise ConfigurationError(
            f"Bad event pattern {pattern!r}: use an exact type ('subscription.upgraded'), "
            "a prefix ('subscription.*') or '*'."
        )
    return pattern


def unknown_type_hint(pattern: str) -> str | None:
    """None when `pattern` can match a known event type; else what `hooks.on` warns, with the closest known name.

    >>> unknown_type_hint("subscription.cancelled")
    "hooks.on('subscription.cancelled'): not a known Montra event type; did you mean 'subscription.canceled'? ..."
    """
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(known.startswith(prefix) for known in EVENT_TYPES):
            return None
        # Every prefix pattern that matches something: `subscription.*`, `subscription.scheduled_change.*`.
        candidates = sorted({".".join(known.split(".")[:n]) + ".*" for known in EVENT_TYPES for n in (1, 2)})
        what = "no known Montra event type starts with " + repr(prefix)
    else:
        candidates, what = list(EVENT_TYPES), "not a known Montra event type"
    close = difflib.get_close_matches(pattern, candidates, n=1, cutoff=0.6)
    guess = f"; did you mean {close[0]!r}?" if close else " (receiver.types.EVENT_TYPES lists them)."
    return (
        f"hooks.on({pattern!r}): {what}{guess} Registered anyway (Montra may add types); "
        "if the name is right, silence this with "
        'warnings.filterwarnings("ignore", category=receiver.errors.UnknownEventTypeWarning).'
    )


def matches(pattern: str, event_type: str) -> bool:
    """`*` matches every type, `prefix.*` every type below `prefix` at any depth, anything else itself."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type
