"""Sign and verify webhooks in the Standard Webhooks 1.0 wire format (`v1` HMAC-SHA256, `v1a` Ed25519).

No web framework is imported here: the receiver, replay, trigger and the pytest plugin all sign and
verify through this one module.

>>> secret = generate_secret()
>>> headers = sign(b'{"type": "customer.created"}', secret=secret)
>>> Verifier([secret]).verify(b'{"type": "customer.created"}', headers)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import secrets as _random
import string
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from .errors import ConfigurationError, VerificationError

__all__ = ["Verifier", "generate_secret", "generate_signing_key", "sign"]

_MAX_TOKENS = 16
MAX_ID_LENGTH = 256
_MAX_TIMESTAMP_DIGITS = 12
# The longest strict base64 a signature can have (v1a: 64 bytes -> 88 chars); longer tokens cannot
# match, so they are skipped before the decoder sees them.
_MAX_SIGNATURE_B64 = 88
_ID_ALPHABET = string.ascii_letters + string.digits
_FORMS = "a whsec_ secret (or its bare base64), a whpk_ public key or a whsk_ signing key"

_Key = bytes | Ed25519PrivateKey | Ed25519PublicKey


def _b64(text: str, *, what: str) -> bytes:
    # Secrets are often pasted without their '=' padding; the reference libraries accept that.
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as e:  # binascii.Error, or non-ASCII text
        # The decoder's message never quotes its input, so chaining it cannot leak the secret.
        raise ConfigurationError(f"{what} is not valid base64; copy it again from the Montra dashboard") from e


def _parse_key(secret: object, *, what: str) -> _Key:
    """Decode one configured secret: bytes (an HMAC key), an Ed25519 private or public key."""
    if not isinstance(secret, str):
        raise ConfigurationError(f"{what} must be a str ({_FORMS}), not {type(secret).__name__}")
    if not secret:
        raise ConfigurationError(f"{what} is empty; expected {_FORMS}")
    prefix, sep, rest = secret.partition("_")
    if sep and prefix in ("whsec", "whpk", "whsk"):
        if not rest:
            raise ConfigurationError(f"{what} has nothing after its {prefix}_ prefix")
        raw = _b64(rest, what=f"{what} ({prefix}_...)")
    else:
        prefix, raw = "whsec", _b64(secret, what=f"{what} (no whsec_/whpk_/whsk_ prefix, so read as bare base64)")
    if not raw:
        raise ConfigurationError(f"{what} decodes to an empty key")
    if prefix == "whsec":
        return raw
    if prefix == "whpk":
        try:
            key = Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else load_der_public_key(raw)
        except (ValueError, UnsupportedAlgorithm) as e:
            raise ConfigurationError(f"{what} is neither a raw 32-byte Ed25519 key nor a DER public key") from e
        if not isinstance(key, Ed25519PublicKey):
            kind = type(key).__name__.lstrip("_")
            raise ConfigurationError(f"{what} is not an Ed25519 key but {kind}; v1a needs an Ed25519 key")
        return key
    if len(raw) not in (32, 64):
        raise ConfigurationError(f"{what} must be a 32-byte Ed25519 seed or 64 bytes of seed + public key")
    private = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and not hmac.compare_digest(private.public_key().public_bytes_raw(), raw[32:]):
        raise ConfigurationError(f"{what}: its public half does not match its seed; the key is corrupt")
    return private


class Verifier:
    """Checks that a webhook was signed by one of the configured secrets, recently.

    Secrets are decoded once, here; several may be given while rotating. `whsec_` secrets check
    `v1` signatures, `whpk_`/`whsk_` keys check `v1a` ones.

    >>> verifier = Verifier(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], tolerance=300)
    >>> verifier.verify(body, request.headers)  # raises VerificationError, or returns None
    """

    __slots__ = ("_ed25519", "_hmac", "_tolerance")

    def __init__(self, secrets: Sequence[str] | str, *, tolerance: int = 300) -> None:
        # A generator would be consumed by a check for emptiness, so take a copy first.
        secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        if not secrets:
            raise ConfigurationError("no webhook secret configured; pass at least one whsec_/whpk_/whsk_ secret")
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ConfigurationError(f"tolerance must be a whole number of seconds >= 0, not {tolerance!r}")
        hmac_keys: list[hmac.HMAC] = []
        ed25519: list[Ed25519PublicKey] = []
        for n, secret in enumerate(secrets, 1):
            key = _parse_key(secret, what=f"secret #{n}")
            if isinstance(key, bytes):
                # Keyed once here: copying this state per request skips hashing the padded key each time.
                hmac_keys.append(hmac.new(key, digestmod="sha256"))
            else:
                ed25519.append(key.public_key() if isinstance(key, Ed25519PrivateKey) else key)
        self._hmac = tuple(hmac_keys)
        self._ed25519 = tuple(ed25519)
        self._tolerance = tolerance

    @property
    def key_count(self) -> int:
        """How many secrets and keys are configured: a refusal's explanation names the count, never a key."""
        return len(self._hmac) + len(self._ed25519)

    @property
    def tolerance(self) -> int:
        return self._tolerance

    def __repr__(self) -> str:
        # Counts only: key material must never reach a log line or a traceback.
        return f"Verifier(<{len(self._hmac)} HMAC, {len(self._ed25519)} Ed25519 key(s)>, tolerance={self._tolerance})"

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> None:
        """Raise `VerificationError` unless `body` carries a valid, timely signature; else return None.

        `body` is the raw request body; `headers` any mapping (names are matched case-insensitively,
        `svix-*` accepted as aliases); `now` overrides the clock, in Unix seconds.
        """
        # Typed `object`: a Mapping from an unknown caller may hold anything, and anything must fail cleanly.
        msg_id: object
        timestamp: object
        signature: object
        getlist = getattr(headers, "getlist", None)
        if callable(getlist):
            # Starlette's Headers and multidicts: their .get() sees only the first of repeated lines.
            msg_id, timestamp, signature = _from_lines(getlist)
        else:
            # Lower-case lookups first: our own dicts hit here without a scan.
            get = headers.get
            msg_id = get("webhook-id") or get("svix-id")
            timestamp = get("webhook-timestamp") or get("svix-timestamp")
            signature = get("webhook-signature") or get("svix-signature")
        if not (msg_id and timestamp and signature):
            msg_id, timestamp, signature = _scan(headers, msg_id, timestamp, signature)
        if not (isinstance(msg_id, str) and isinstance(timestamp, str) and isinstance(signature, str)):
            found = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
            names = [name for name, value in found.items() if not isinstance(value, str)]
            missing = f"header {names[0]}" if len(names) == 1 else f"headers {', '.join(names[:-1])} and {names[-1]}"
            raise VerificationError(
                "missing_headers",
                f"{missing} missing: a Standard Webhooks request carries webhook-id, webhook-timestamp and "
                "webhook-signature; sign it with receiver.sign(), or send a signed test event with "
                "`montra-hooks trigger subscription.upgraded`",
            )
        if not msg_id:
            raise VerificationError(
                "missing_headers", "webhook-id is empty; it must be 1 to 256 printable ASCII characters, no spaces"
            )
        if not (len(msg_id) <= MAX_ID_LENGTH and msg_id.isascii() and msg_id.isprintable() and " " not in msg_id):
            raise VerificationError(
                "missing_headers", "webhook-id must be 1 to 256 printable ASCII characters, no spaces"
            )
        # int() alone would accept " 12", "+12", "1_2" and non-ASCII digits.
        if not (len(timestamp) <= _MAX_TIMESTAMP_DIGITS and timestamp.isascii() and timestamp.isdigit()):
            raise VerificationError("bad_timestamp", "webhook-timestamp must be Unix seconds: 1 to 12 ASCII digits")
        sent = int(timestamp)
        skew = (time.time() if now is None else now) - sent
        if not -self._tolerance <= skew <= self._tolerance:  # written so that a NaN `now` fails too
            raise VerificationError(
                "timestamp_out_of_tolerance",
                f"webhook-timestamp is {abs(skew):.0f} s {'old' if skew > 0 else 'in the future'}, beyond the "
                f"{self._tolerance} s tolerance; check the sender's and receiver's clocks",
            )

        # Decode the tokens first, then compute each key's expected value once and compare it with all
        # of them: with several secrets (rotation), no HMAC is computed twice or before it is needed.
        hmacs: list[bytes] = []
        ed25519: list[bytes] = []
        # split(" ", 16) stops scanning after 16 separators, so a hostile header costs bounded work.
        for token in signature.split(" ", _MAX_TOKENS)[:_MAX_TOKENS]:
            version, comma, encoded = token.partition(",")
            if not comma or len(encoded) > _MAX_SIGNATURE_B64 or version not in ("v1", "v1a"):
                continue  # empty, malformed or unknown-version tokens are skipped, not fatal
            try:
                # Exactly base64.b64decode(encoded, validate=True), without its Python-level wrapper.
                given = binascii.a2b_base64(encoded, strict_mode=True)
            except ValueError:  # binascii.Error (bad base64) is a ValueError, as is non-ASCII text
                continue
            if version == "v1":
                hmacs.append(given)
            elif len(given) == 64:
                ed25519.append(given)

        content = f"{msg_id}.{timestamp}.".encode() + body
        if hmacs:
            for keyed in self._hmac:
                state = keyed.copy()
                state.update(content)
                expected = state.digest()
                for given in hmacs:
                    if hmac.compare_digest(expected, given):
                        return
        if ed25519:
            for public in self._ed25519:
                for given in ed25519:
                    try:
                        public.verify(given, content)
                    except InvalidSignature:
                        continue
                    return
        raise VerificationError("invalid_signature", "no webhook-signature matches a configured secret")


_NAMES = {
    "webhook-id": 0,
    "svix-id": 0,
    "webhook-timestamp": 1,
    "svix-timestamp": 1,
    "webhook-signature": 2,
    "svix-signature": 2,
}


def _from_lines(getlist: Callable[[str], list[str]]) -> tuple[object, object, object]:
    """The three values from a mapping that keeps repeated lines: signatures joined, id and timestamp unambiguous."""
    ids = getlist("webhook-id") or getlist("svix-id")
    if any(value != ids[0] for value in ids[1:]):
        raise VerificationError("missing_headers", "webhook-id is repeated with different values; send it once")
    timestamps = getlist("webhook-timestamp") or getlist("svix-timestamp")
    if any(value != timestamps[0] for value in timestamps[1:]):
        raise VerificationError("bad_timestamp", "webhook-timestamp is repeated with different values; send it once")
    # Each signature token stands alone, so repeated lines join with a space and any valid one accepts.
    signatures = getlist("webhook-signature") or getlist("svix-signature")
    return (ids[0] if ids else None), (timestamps[0] if timestamps else None), " ".join(signatures)


def _scan(headers: Mapping[str, str], *found: object) -> tuple[object, object, object]:
    """The slow path for mixed-case names: one pass over the items, filling only what is missing."""
    values = list(found)
    for name, value in headers.items():
        slot = _NAMES.get(name.lower()) if isinstance(name, str) else None
        # A webhook-* name wins over its svix-* alias, as on the fast path.
        if slot is not None and value and (not values[slot] or name.lower().startswith("webhook")):
            values[slot] = value
    return values[0], values[1], values[2]


def sign(
    body: bytes,
    *,
    secret: str,
    msg_id: str | None = None,
    timestamp: int | float | datetime | None = None,
) -> dict[str, str]:
    """Return the three Standard Webhooks headers that sign `body`.

    A `whsec_` secret (or bare base64) signs `v1`; a `whsk_` key signs `v1a`. `timestamp` defaults
    to now; a naive datetime is taken as UTC, as the reference library does.

    >>> sign(b'{"type": "refund.created"}', secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    {'webhook-id': 'msg_2Yb...', 'webhook-timestamp': '1764090000', 'webhook-signature': 'v1,K5o...'}
    """
    key = _parse_key(secret, what="the signing secret")
    if isinstance(key, Ed25519PublicKey):
        raise ConfigurationError("a whpk_ public key can only verify; sign with its whsk_ key or a whsec_ secret")
    if msg_id is None:
        msg_id = "msg_" + "".join(_random.choice(_ID_ALPHABET) for _ in range(24))
    elif not (0 < len(msg_id) <= MAX_ID_LENGTH and msg_id.isascii() and msg_id.isprintable() and " " not in msg_id):
        raise ConfigurationError("msg_id must be 1 to 256 printable ASCII characters without spaces")
    if timestamp is None:
        seconds = int(time.time())
    elif isinstance(timestamp, datetime):
        aware = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
        seconds = math.floor(aware.timestamp())
    elif math.isfinite(timestamp):
        seconds = math.floor(timestamp)
    else:
        raise ConfigurationError(f"timestamp must be a finite number of Unix seconds, not {timestamp!r}")
    if not 0 <= seconds < 10**_MAX_TIMESTAMP_DIGITS:
        raise ConfigurationError(f"timestamp must be Unix seconds between 0 and 10**12, not {seconds}")
    content = f"{msg_id}.{seconds}.".encode() + body
    if isinstance(key, bytes):
        signature = "v1," + base64.b64encode(hmac.digest(key, content, "sha256")).decode()
    else:
        signature = "v1a," + base64.b64encode(key.sign(content)).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(seconds), "webhook-signature": signature}


def generate_secret() -> str:
    """A new random `whsec_` secret (24 random bytes), for `v1` HMAC signatures."""
    return "whsec_" + base64.b64encode(_random.token_bytes(24)).decode()


def generate_signing_key() -> tuple[str, str]:
    """A new Ed25519 pair for `v1a`: (`whsk_` signing key for the sender, `whpk_` public key for receivers).

    >>> signing_key, public_key = generate_signing_key()
    >>> Verifier([public_key]).verify(body, sign(body, secret=signing_key))
    """
    private = Ed25519PrivateKey.generate()
    seed = base64.b64encode(private.private_bytes_raw()).decode()
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    return "whsk_" + seed, "whpk_" + public
