"""Why a request was refused, in words: what `montra-hooks rejections` (and any page listing them) says.

Built from the stored row alone (its reason, headers, time and the counts kept with it), so a refusal
recorded before the counts were kept is still explained, with less precision.
"""

from __future__ import annotations

import base64
from typing import Any

from .stores.protocol import Rejection, iso

__all__ = ["explain", "rejection_json"]

_SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def explain(rejection: Rejection) -> str:
    """One sentence: which check failed and by how much (`timestamp 412 s old, tolerance 300 s`)."""
    headers = rejection.headers
    detail = rejection.detail or {}
    reason = rejection.reason
    if reason == "missing_headers":
        missing = [name for name in _SIGNATURE_HEADERS if not _header(headers, name)]
        if missing:
            return f"header {' and '.join(missing)} missing"
        return _first_clause(rejection.message) or "a signature header is malformed"
    if reason == "bad_timestamp":
        return f"webhook-timestamp {_header(headers, 'webhook-timestamp')!r} is not Unix seconds"
    if reason == "timestamp_out_of_tolerance":
        return _skew(rejection, detail.get("tolerance"))
    if reason == "invalid_signature":
        count = detail.get("secrets")
        tokens = len((_header(headers, "webhook-signature") or "").split())
        given = f"({tokens} signature{'' if tokens == 1 else 's'} given)"
        if count == 1:
            return f"not signed with the one configured secret {given}"
        if isinstance(count, int):
            return f"signed with none of the {count} configured secrets {given}"
        return f"signed with none of the configured secrets {given}"
    return _first_clause(rejection.message) or reason.replace("_", " ")


def _skew(rejection: Rejection, tolerance: object) -> str:
    sent = _header(rejection.headers, "webhook-timestamp")
    limit = f", tolerance {tolerance} s" if isinstance(tolerance, int) else ", beyond the tolerance"
    if sent is None or not sent.isdigit():
        return "timestamp outside the tolerance" + limit
    skew = rejection.received_at.timestamp() - int(sent)
    when = "old" if skew > 0 else "in the future"
    return f"timestamp {int(abs(skew))} s {when}{limit}"  # whole seconds, as the header counts them


def _header(headers: dict[str, str], name: str) -> str | None:
    # Stored names are lower-case; a Svix sender uses `svix-*` for the same three headers.
    return headers.get(name) or headers.get(name.replace("webhook-", "svix-"))


def _first_clause(message: str | None) -> str:
    return (message or "").split(":")[0].split(";")[0].strip()


def rejection_json(rejection: Rejection) -> dict[str, Any]:
    """A refusal as JSON (`rejections show --json`, the inspector's API): the body as text, or base64 if not UTF-8."""
    try:
        body: dict[str, str] = {"body": rejection.body.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"body_b64": base64.b64encode(rejection.body).decode("ascii")}
    return {
        "id": rejection.id,
        "received_at": iso(rejection.received_at),
        "reason": rejection.reason,
        "explanation": explain(rejection),
        "message": rejection.message,
        "remote": rejection.remote,
        "headers": rejection.headers,
        **body,
    }
