"""The exceptions this package raises on purpose, in one hierarchy."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "REJECTION_REASONS",
    "ConfigurationError",
    "EnvelopeError",
    "MontraHooksError",
    "NoRetry",
    "RejectionReason",
    "StoreUnavailable",
    "UnknownEventTypeWarning",
    "VerificationError",
    "VerificationReason",
]

VerificationReason = Literal["missing_headers", "bad_timestamp", "timestamp_out_of_tolerance", "invalid_signature"]
RejectionReason = Literal[
    VerificationReason, "invalid_json", "invalid_event", "body_too_large", "unsupported_media_type"
]
"""Why the receiver refused a request it then recorded in `rejections` (the HTTP error body's `error`)."""
REJECTION_REASONS: tuple[RejectionReason, ...] = get_args(RejectionReason)


class MontraHooksError(Exception):
    """Base class of every error montra-webhooks raises itself."""


class ConfigurationError(MontraHooksError, ValueError):
    """A secret, key or option cannot be used as given; the message says how to fix it."""


class VerificationError(MontraHooksError):
    """A webhook failed verification; `code` is the reason, as the HTTP error body names it.

    >>> try:
    ...     Verifier(["whsec_..."]).verify(body, headers)
    ... except VerificationError as e:
    ...     e.code  # "missing_headers", "bad_timestamp", "timestamp_out_of_tolerance" or "invalid_signature"
    """

    def __init__(self, code: VerificationReason, message: str) -> None:
        super().__init__(message)
        self.code: VerificationReason = code
        self.message = message


class EnvelopeError(MontraHooksError):
    """A verified body that is not a Montra event; `code` is `invalid_json` or `invalid_event`."""

    def __init__(self, code: Literal["invalid_json", "invalid_event"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class StoreUnavailable(MontraHooksError):
    """The store could not durably write; nothing in the failed batch was kept."""


class NoRetry(Exception):
    """Raise from a handler to mark its run `dead` at once, with no further attempts.

    >>> @hooks.on("refund.created")
    ... def refund(event):
    ...     if "transaction_id" not in event.data:
    ...         raise NoRetry("refund without transaction_id: retrying will not help")
    """


class UnknownEventTypeWarning(UserWarning):
    """`hooks.on` was given an event type (or `prefix.*`) that no type of `receiver.types` matches.

    The handler is registered anyway: Montra may send types this version does not know. When the
    name is right (a type newer than this version, or one of your own fixtures), silence it:

    >>> warnings.filterwarnings("ignore", category=UnknownEventTypeWarning)
    """
