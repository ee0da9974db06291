"""Signing and verification: the Standard Webhooks vectors, every rule of the wire format, interop, fuzzing."""

from __future__ import annotations

import base64
import hmac
import json
import string
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from starlette.datastructures import Headers

from receiver.errors import ConfigurationError, VerificationError
from receiver.verify import Verifier, generate_secret, generate_signing_key, sign

VECTORS = Path(__file__).resolve().parent / "vectors" / "standard-webhooks.json"
"""A copy of the project's public vectors (../shared/vectors beside a checkout), so any clone runs them."""
SHARED_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"

BODY = b'{"id": "evt_1", "type": "subscription.upgraded", "data": {"id": "sub_1", "plan": "pro"}}'
TS = 1_764_090_000  # 2025-11-25T17:00:00Z: a fixed clock, so no test depends on the machine's
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def reason(verifier: Verifier, body: bytes, headers: Any, *, now: float = TS) -> str | None:
    """The verification outcome as a value: None when accepted, else the error code."""
    try:
        verifier.verify(body, headers, now=now)
    except VerificationError as e:
        return e.code
    return None


def signed(secret: str = SECRET, *, body: bytes = BODY, msg_id: str = "msg_test1", ts: int = TS) -> dict[str, str]:
    return sign(body, secret=secret, msg_id=msg_id, timestamp=ts)


@pytest.fixture(scope="module")
def ed25519() -> dict[str, str]:
    """One Ed25519 key pair in every encoding the wire format allows."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key()
    return {
        "whsk32": "whsk_" + b64(seed),
        "whsk64": "whsk_" + b64(seed + public.public_bytes_raw()),
        "whpk_raw": "whpk_" + b64(public.public_bytes_raw()),
        "whpk_der": "whpk_" + b64(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)),
    }


# --- public test vectors ---------------------------------------------------------------------------------------


def _vectors(kind: str) -> list[Any]:
    cases = json.loads(VECTORS.read_text())[kind]
    return [pytest.param(case, id=f"{kind}{n}") for n, case in enumerate(cases)]


def _vector_headers(case: dict[str, Any]) -> dict[str, str]:
    return {
        "webhook-id": case["msg_id"],
        "webhook-timestamp": str(case["timestamp"]),
        "webhook-signature": case["signature"],
    }


def test_the_vectors_are_a_copy_of_the_shared_ones() -> None:
    if not SHARED_VECTORS.is_dir():
        pytest.skip(f"{SHARED_VECTORS} not found (a clone on its own): nothing to compare tests/vectors with")
    shared = {path.name: path.read_bytes() for path in SHARED_VECTORS.iterdir() if path.is_file()}
    ours = {path.name: path.read_bytes() for path in VECTORS.parent.iterdir() if path.is_file()}
    assert sorted(ours) == sorted(shared), f"copy {SHARED_VECTORS} into tests/vectors again"
    changed = [name for name in shared if ours[name] != shared[name]]
    assert changed == [], f"tests/vectors differs from {SHARED_VECTORS}: copy it again"


@pytest.mark.parametrize("case", _vectors("valid"))
def test_valid_vectors_verify(case: dict[str, Any]) -> None:
    verifier = Verifier([case["secret"]])
    verifier.verify(case["body"].encode(), _vector_headers(case), now=case["timestamp"])
    # The vectors are years old: on the real clock the same request is stale.
    with pytest.raises(VerificationError) as e:
        verifier.verify(case["body"].encode(), _vector_headers(case))
    assert e.value.code == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("case", _vectors("invalid"))
def test_invalid_vectors_are_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as e:
        Verifier([case["secret"]]).verify(case["body"].encode(), _vector_headers(case), now=case["timestamp"])
    assert e.value.code == "invalid_signature"


# --- sign ------------------------------------------------------------------------------------------------------


def test_sign_v1_is_base64_hmac_sha256_of_id_timestamp_body() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = b64(hmac.digest(key, b"msg_test1.%d." % TS + BODY, "sha256"))
    assert signed() == {"webhook-id": "msg_test1", "webhook-timestamp": str(TS), "webhook-signature": "v1," + expected}


def test_sign_defaults_fresh_id_and_now() -> None:
    first, second = sign(BODY, secret=SECRET), sign(BODY, secret=SECRET)
    for headers in (first, second):
        msg_id = headers["webhook-id"]
        assert msg_id.startswith("msg_")
        assert len(msg_id) == 28
        assert set(msg_id[4:]) <= set(string.ascii_letters + string.digits)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) <= 2
        Verifier(SECRET).verify(BODY, headers)
    assert first["webhook-id"] != second["webhook-id"]


@pytest.mark.parametrize(
    "timestamp",
    [
        TS,
        TS + 0.999,
        datetime.fromtimestamp(TS, tz=UTC),
        datetime.fromtimestamp(TS, tz=UTC).replace(tzinfo=None),  # naive: taken as UTC
        datetime.fromtimestamp(TS, tz=UTC).astimezone(timezone(timedelta(hours=-5))),
    ],
    ids=["int", "float", "aware", "naive", "other-zone"],
)
def test_sign_timestamp_forms(timestamp: int | float | datetime) -> None:
    assert sign(BODY, secret=SECRET, msg_id="m", timestamp=timestamp)["webhook-timestamp"] == str(TS)


def test_sign_with_public_key_is_a_configuration_error(ed25519: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="whpk_ public key can only verify"):
        sign(BODY, secret=ed25519["whpk_raw"])


@pytest.mark.parametrize("msg_id", ["", "a b", "x" * 257, "caf\u00e9", "id\n"])
def test_sign_refuses_ids_the_receiver_would_refuse(msg_id: str) -> None:
    with pytest.raises(ConfigurationError, match="msg_id"):
        sign(BODY, secret=SECRET, msg_id=msg_id, timestamp=TS)


@pytest.mark.parametrize("timestamp", [-1, 10**12, float("nan"), float("inf")])
def test_sign_refuses_timestamps_outside_twelve_digits(timestamp: float) -> None:
    with pytest.raises(ConfigurationError, match="timestamp"):
        sign(BODY, secret=SECRET, timestamp=timestamp)


# --- secrets and keys ------------------------------------------------------------------------------------------

KEY32 = bytes(range(32))  # b64 of 32 bytes ends in one '=', so there is padding to drop


@pytest.mark.parametrize(
    "secret",
    ["whsec_" + b64(KEY32), b64(KEY32), "whsec_" + b64(KEY32).rstrip("="), b64(KEY32).rstrip("="), SECRET],
    ids=["prefixed", "bare", "prefixed-unpadded", "bare-unpadded", "no-padding-needed"],
)
def test_hmac_secret_forms_round_trip(secret: str) -> None:
    Verifier([secret]).verify(BODY, signed(secret), now=TS)
    # Every form of one key is the same key.
    if secret != SECRET:
        Verifier(["whsec_" + b64(KEY32)]).verify(BODY, signed(secret), now=TS)


@pytest.mark.parametrize("signer", ["whsk32", "whsk64"])
@pytest.mark.parametrize("checker", ["whpk_raw", "whpk_der", "whsk32", "whsk64"])
def test_ed25519_round_trip(ed25519: dict[str, str], signer: str, checker: str) -> None:
    headers = signed(ed25519[signer])
    assert headers["webhook-signature"].startswith("v1a,")
    Verifier([ed25519[checker]]).verify(BODY, headers, now=TS)


def test_generated_keys_round_trip() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:], validate=True)) == 24
    signing_key, public_key = generate_signing_key()
    assert (signing_key[:5], public_key[:5]) == ("whsk_", "whpk_")
    Verifier(secret).verify(BODY, sign(BODY, secret=secret))
    Verifier(public_key).verify(BODY, sign(BODY, secret=signing_key))
    assert generate_secret() != secret


def test_rotation_accepts_any_configured_secret(ed25519: dict[str, str]) -> None:
    old, new = generate_secret(), generate_secret()
    verifier = Verifier([old, new, ed25519["whpk_raw"]])
    assert reason(verifier, BODY, signed(old)) is None
    assert reason(verifier, BODY, signed(new)) is None
    assert reason(verifier, BODY, signed(ed25519["whsk32"])) is None
    assert reason(verifier, BODY, signed(generate_secret())) == "invalid_signature"
    # A sender mid-rotation signs with both; a receiver holding either one accepts.
    both = signed(old)
    both["webhook-signature"] += " " + signed(new)["webhook-signature"]
    assert reason(Verifier([new]), BODY, both) is None
    assert reason(Verifier([old]), BODY, both) is None


def _spki(public_key: Any) -> str:
    return "whpk_" + b64(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _mismatched_whsk64() -> str:
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return "whsk_" + b64(seed + other)


BAD_SECRETS = {
    "empty": ("", "is empty"),
    "whsec-only-prefix": ("whsec_", "nothing after its whsec_ prefix"),
    "whpk-only-prefix": ("whpk_", "nothing after its whpk_ prefix"),
    "whsk-only-prefix": ("whsk_", "nothing after its whsk_ prefix"),
    "whsec-not-base64": ("whsec_sEcReT!not*base64", "not valid base64"),
    "bare-not-base64": ("hunter2-is-my-password", "not valid base64"),
    "whsec-impossible-length": ("whsec_" + b64(KEY32).rstrip("=") + "QQ", "not valid base64"),  # 45 chars
    "whsec-non-ascii": ("whsec_s\u00e9cret", "not valid base64"),
    "whpk-garbage": ("whpk_" + b64(b"\x30\x82garbage-that-is-not-der"), "neither a raw 32-byte Ed25519 key"),
    "whpk-x25519-spki": (_spki(x25519.X25519PrivateKey.generate().public_key()), "needs an Ed25519 key"),
    "whpk-ec-spki": (_spki(ec.generate_private_key(ec.SECP256R1()).public_key()), "needs an Ed25519 key"),
    "whsk-wrong-length": ("whsk_" + b64(bytes(48)), "32-byte Ed25519 seed or 64 bytes"),
    "whsk64-mismatched-public-half": (_mismatched_whsk64(), "public half does not match its seed"),
}


@pytest.mark.parametrize(("secret", "message"), BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_unusable_secrets_are_configuration_errors_that_do_not_leak(secret: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as e:
        Verifier(["whsec_" + b64(KEY32), secret])
    assert str(e.value).startswith("secret #2")
    secret_body = secret.partition("_")[2] if secret.startswith("wh") else secret
    for text in (str(e.value), repr(e.value), str(e.value.__cause__ or "")):
        assert not secret_body or secret_body not in text
    with pytest.raises(ConfigurationError):
        sign(BODY, secret=secret)


@pytest.mark.parametrize("secrets", [[], (), iter([])], ids=["list", "tuple", "empty-iterator"])
def test_no_secret_is_a_configuration_error(secrets: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="no webhook secret configured"):
        Verifier(secrets)


def test_secrets_from_an_iterator_are_all_used() -> None:
    other = generate_secret()
    verifier = Verifier(s for s in (other, SECRET))  # type: ignore[arg-type]
    assert reason(verifier, BODY, signed()) is None
    assert reason(verifier, BODY, signed(other)) is None


@pytest.mark.parametrize("tolerance", [-1, 1.5, True])
def test_bad_tolerance_is_a_configuration_error(tolerance: Any) -> None:
    with pytest.raises(ConfigurationError, match="tolerance"):
        Verifier(SECRET, tolerance=tolerance)


def test_non_str_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="must be a str"):
        Verifier([KEY32])  # type: ignore[list-item]


def test_repr_never_shows_key_material(ed25519: dict[str, str]) -> None:
    verifier = Verifier([SECRET, ed25519["whsk64"]], tolerance=60)
    shown = repr(verifier) + str(verifier)
    assert shown == 2 * "Verifier(<1 HMAC, 1 Ed25519 key(s)>, tolerance=60)"
    raw = base64.b64decode(SECRET[6:])
    for secret_text in (SECRET, SECRET[6:], ed25519["whsk64"][5:], repr(raw), raw.hex()):
        assert secret_text not in shown


# --- headers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rename",
    [
        {},
        {"webhook-id": "svix-id", "webhook-timestamp": "svix-timestamp", "webhook-signature": "svix-signature"},
        {
            "webhook-id": "Webhook-Id",
            "webhook-timestamp": "WEBHOOK-TIMESTAMP",
            "webhook-signature": "Webhook-Signature",
        },
        {"webhook-id": "Svix-Id", "webhook-timestamp": "SVIX-TIMESTAMP", "webhook-signature": "svix-signature"},
        {"webhook-signature": "svix-signature"},
        {"webhook-id": "WebHook-ID"},
    ],
    ids=["lower", "svix", "mixed-case", "svix-mixed-case", "one-alias", "one-mixed"],
)
def test_header_names_are_case_insensitive_with_svix_aliases(rename: dict[str, str]) -> None:
    headers = {rename.get(name, name): value for name, value in signed().items()}
    assert reason(Verifier(SECRET), BODY, headers) is None
    assert reason(Verifier(SECRET), BODY, MappingProxyType(headers)) is None
    assert reason(Verifier(SECRET), BODY, Headers(headers=headers)) is None


def test_webhook_names_win_over_svix_aliases() -> None:
    headers = {**signed(), "svix-id": "msg_other", "svix-signature": "v1,AAAA"}
    assert reason(Verifier(SECRET), BODY, headers) is None
    mixed = {**{k.upper(): v for k, v in signed().items()}, "svix-id": "msg_other"}
    assert reason(Verifier(SECRET), BODY, mixed) is None


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
@pytest.mark.parametrize("how", ["absent", "empty", "not-str"])
def test_missing_header(missing: str, how: str) -> None:
    headers: dict[str, Any] = signed()
    if how == "absent":
        del headers[missing]
    else:
        headers[missing] = "" if how == "empty" else headers[missing].encode()
    assert reason(Verifier(SECRET), BODY, headers) == "missing_headers"


@pytest.mark.parametrize(
    ("msg_id", "expected"),
    [
        ("x" * 256, None),
        ("evt_1.r_2:~!", None),
        ("x" * 257, "missing_headers"),
        ("msg 1", "missing_headers"),
        (" msg1", "missing_headers"),
        ("msg\t1", "missing_headers"),
        ("msg\x001", "missing_headers"),
        ("msg\u00e91", "missing_headers"),
        ("\u0661\u0662", "missing_headers"),
    ],
)
def test_webhook_id_format(msg_id: str, expected: str | None) -> None:
    headers = signed()
    headers["webhook-id"] = msg_id
    key = base64.b64decode(SECRET[6:])
    # Sign by hand: sign() itself refuses the malformed ids.
    content = msg_id.encode() + b".%d." % TS + BODY
    headers["webhook-signature"] = "v1," + b64(hmac.digest(key, content, "sha256"))
    assert reason(Verifier(SECRET), BODY, headers) == expected


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (" 12", "bad_timestamp"),
        ("12 ", "bad_timestamp"),
        ("+12", "bad_timestamp"),
        ("-5", "bad_timestamp"),
        ("1_2", "bad_timestamp"),
        ("\u0661\u0662\u0663", "bad_timestamp"),  # Arabic-Indic digits: int() takes them
        ("\uff11\uff12", "bad_timestamp"),  # fullwidth digits
        ("\u00b2", "bad_timestamp"),  # superscript two: isdigit() is True
        ("1234567890123", "bad_timestamp"),  # 13 digits
        ("12.5", "bad_timestamp"),
        ("1e9", "bad_timestamp"),
        ("0x10", "bad_timestamp"),
        ("", "missing_headers"),
    ],
)
def test_timestamp_format(timestamp: str, expected: str) -> None:
    headers = {**signed(), "webhook-timestamp": timestamp}
    assert reason(Verifier(SECRET), BODY, headers, now=12) == expected


def test_twelve_digit_timestamp_is_well_formed() -> None:
    headers = signed(ts=999_999_999_999)
    assert reason(Verifier(SECRET), BODY, headers, now=999_999_999_999) is None
    padded = {**signed(ts=12), "webhook-timestamp": "000000000012"}
    # Well-formed, so the check goes on to the signature, which covered "12", not "000000000012".
    assert reason(Verifier(SECRET), BODY, padded, now=12) == "invalid_signature"


@pytest.mark.parametrize(
    ("tolerance", "offset", "expected"),
    [
        (300, 0, None),
        (300, 300, None),
        (300, -300, None),
        (300, 301, "timestamp_out_of_tolerance"),
        (300, -301, "timestamp_out_of_tolerance"),
        (300, 300.5, "timestamp_out_of_tolerance"),
        (10, 10, None),
        (10, -10, None),
        (10, 11, "timestamp_out_of_tolerance"),
        (10, -11, "timestamp_out_of_tolerance"),
        (0, 0, None),
        (0, 1, "timestamp_out_of_tolerance"),
        (3600, -3600, None),
        (3600, 3601, "timestamp_out_of_tolerance"),
    ],
)
def test_tolerance_both_directions(tolerance: int, offset: float, expected: str | None) -> None:
    # offset > 0: the clock is ahead of the timestamp (an old request); < 0: a request from the future.
    assert reason(Verifier(SECRET, tolerance=tolerance), BODY, signed(), now=TS + offset) == expected


def test_tolerance_uses_the_real_clock_by_default() -> None:
    now = int(time.time())
    Verifier(SECRET).verify(BODY, signed(ts=now))
    with pytest.raises(VerificationError, match=r"360[01] s old, beyond the 300 s tolerance") as e:
        Verifier(SECRET).verify(BODY, signed(ts=now - 3600))
    assert e.value.code == "timestamp_out_of_tolerance"


def test_checks_run_in_order() -> None:
    # Every check fails at once: the first in the contract's order is reported.
    verifier = Verifier(SECRET)
    headers = {"webhook-id": "bad id", "webhook-timestamp": "+1", "webhook-signature": "v9,x"}
    assert reason(verifier, BODY, headers) == "missing_headers"
    headers["webhook-id"] = "msg_1"
    assert reason(verifier, BODY, headers) == "bad_timestamp"
    headers["webhook-timestamp"] = "1"
    assert reason(verifier, BODY, headers) == "timestamp_out_of_tolerance"
    headers["webhook-timestamp"] = str(TS)
    assert reason(verifier, BODY, headers) == "invalid_signature"


# --- signature tokens ------------------------------------------------------------------------------------------

VALID = signed()["webhook-signature"]  # "v1,<44 chars of base64>"
SIG = VALID.removeprefix("v1,")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (VALID, None),
        ("  " + VALID + "  ", None),  # empty tokens are skipped
        ("v2,AAAA v1a,AAAA garbage " + VALID, None),
        ("v1," + SIG[:20] + "*" + SIG[20:], "invalid_signature"),  # a lenient decoder drops the '*'
        ("v1," + SIG[:20] + "\n" + SIG[20:], "invalid_signature"),
        ("v1," + SIG.rstrip("="), "invalid_signature"),  # unpadded: not strict base64
        ("v1," + SIG + "=", "invalid_signature"),
        ("v1,!!!!", "invalid_signature"),
        ("v1,\u0661\u0662\u0663\u0664", "invalid_signature"),
        ("v1" + SIG, "invalid_signature"),  # no comma
        ("v1;" + SIG, "invalid_signature"),
        ("v1 ," + SIG, "invalid_signature"),
        ("v2," + SIG, "invalid_signature"),  # unknown version only
        ("V1," + SIG, "invalid_signature"),
        ("v1a," + SIG, "invalid_signature"),  # an HMAC is not an Ed25519 signature
        (",", "invalid_signature"),
        ("v1,", "invalid_signature"),
        ("v1," + SIG[:-2] + "A=", "invalid_signature"),
        ("v1,AAAA " * 200_000, "invalid_signature"),  # 1.4 MB: only 16 tokens are looked at
    ],
)
def test_signature_tokens(header: str, expected: str | None) -> None:
    assert reason(Verifier(SECRET), BODY, {**signed(), "webhook-signature": header}) == expected


@pytest.mark.parametrize(("position", "expected"), [(1, None), (16, None), (17, "invalid_signature")])
def test_at_most_sixteen_tokens_are_examined(position: int, expected: str | None) -> None:
    tokens = ["v1," + b64(bytes(32))] * 16
    tokens.insert(position - 1, VALID)
    assert reason(Verifier(SECRET), BODY, {**signed(), "webhook-signature": " ".join(tokens)}) == expected


def test_v1a_token_lengths(ed25519: dict[str, str]) -> None:
    headers = signed(ed25519["whsk32"])
    signature = base64.b64decode(headers["webhook-signature"].removeprefix("v1a,"))
    verifier = Verifier(ed25519["whpk_raw"])
    for wrong in (signature[:32], signature + b"\0", bytes(64)):
        assert reason(verifier, BODY, {**headers, "webhook-signature": "v1a," + b64(wrong)}) == "invalid_signature"
    # A v1a-only verifier does not accept a v1 token, nor an HMAC verifier a v1a one.
    assert reason(verifier, BODY, signed()) == "invalid_signature"
    assert reason(Verifier(SECRET), BODY, headers) == "invalid_signature"


@pytest.mark.parametrize("scheme", ["hmac", "ed25519"])
@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: (h, b.replace(b"pro", b"max")),
        lambda h, b: (h, b""),
        lambda h, b: ({**h, "webhook-id": h["webhook-id"] + "x"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(TS + 1)}, b),
    ],
    ids=["body-appended", "body-changed", "body-empty", "id-changed", "timestamp-changed"],
)
def test_tampering_is_detected(ed25519: dict[str, str], scheme: str, tamper: Any) -> None:
    secret, checker = (SECRET, SECRET) if scheme == "hmac" else (ed25519["whsk64"], ed25519["whpk_der"])
    headers, body = tamper(signed(secret), BODY)
    assert reason(Verifier(checker), body, headers) == "invalid_signature"


def test_wrong_key_is_rejected(ed25519: dict[str, str]) -> None:
    assert reason(Verifier(generate_secret()), BODY, signed()) == "invalid_signature"
    assert reason(Verifier(generate_signing_key()[1]), BODY, signed(ed25519["whsk32"])) == "invalid_signature"


# --- interop with the standardwebhooks reference library ------------------------------------------------------


@pytest.mark.parametrize("secret", [SECRET, SECRET.removeprefix("whsec_"), "whsec_" + b64(KEY32).rstrip("=")])
def test_reference_library_verifies_our_signatures(secret: str) -> None:
    headers = sign(BODY, secret=secret)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


@pytest.mark.parametrize("secret", [SECRET, SECRET.removeprefix("whsec_"), "whsec_" + b64(KEY32).rstrip("=")])
def test_we_verify_the_reference_library_signatures(secret: str) -> None:
    when = datetime.fromtimestamp(TS, tz=UTC)
    signature = Webhook(secret).sign("msg_ref1", when, BODY.decode())
    headers = {"webhook-id": "msg_ref1", "webhook-timestamp": str(TS), "webhook-signature": signature}
    assert reason(Verifier(secret), BODY, headers) is None
    assert reason(Verifier(secret), BODY + b"\n", headers) == "invalid_signature"


# --- fuzzing ---------------------------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(
    ["webhook-id", "webhook-timestamp", "webhook-signature", "svix-id", "Webhook-Signature", "WEBHOOK-TIMESTAMP"]
)
LONG_TEXT = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=8), st.integers(1, 40_000))
TOKENS = st.lists(
    st.tuples(st.sampled_from(["v1", "v1a", "v2", "", "V1"]), st.sampled_from([",", "", ";"]), st.text(max_size=100))
    .map("".join)
    .filter(lambda token: " " not in token),
    max_size=20,
).map(" ".join)
VALUES = st.one_of(
    st.text(),
    LONG_TEXT,
    TOKENS,
    st.from_regex(r"\A[0-9]{0,14}\Z"),
    st.integers(TS - 400, TS + 400).map(str),
)


@settings(max_examples=400, deadline=None)
@given(headers=st.dictionaries(st.one_of(HEADER_NAMES, st.text()), VALUES, max_size=8), body=st.binary())
def test_arbitrary_input_only_ever_fails_with_verification_error(headers: dict[str, str], body: bytes) -> None:
    result = reason(Verifier([SECRET, generate_signing_key()[1]]), body, headers)
    assert result in (None, "missing_headers", "bad_timestamp", "timestamp_out_of_tolerance", "invalid_signature")


@settings(max_examples=200, deadline=None)
@given(name=HEADER_NAMES, value=VALUES, body=st.binary())
def test_corrupting_one_header_of_a_valid_request(name: str, value: str, body: bytes) -> None:
    # Starting from a valid request reaches the deep checks (the signature loop) far more often.
    headers = {**signed(body=body), name: value}
    result = reason(Verifier(SECRET), body, headers)
    assert result in (None, "missing_headers", "bad_timestamp", "timestamp_out_of_tolerance", "invalid_signature")


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=4096),
    msg_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=256),
    ts=st.integers(0, 10**12 - 1),
)
def test_any_body_signed_verifies(body: bytes, msg_id: str, ts: int) -> None:
    headers = sign(body, secret=SECRET, msg_id=msg_id, timestamp=ts)
    assert reason(Verifier(SECRET), body, headers, now=ts) is None
    assert reason(Verifier(SECRET), body + b"x", headers, now=ts) == "invalid_signature"


@settings(max_examples=100, deadline=None)
@given(body=st.text())
def test_any_text_body_interoperates_with_the_reference(body: str) -> None:
    # The reference library decodes the body as UTF-8 before signing, so it only handles text.
    raw = body.encode()
    assert Webhook(SECRET).verify(raw, sign(raw, secret=SECRET), json_parse=False) is None
    signature = Webhook(SECRET).sign("msg_h", datetime.fromtimestamp(TS, tz=UTC), body)
    headers = {"webhook-id": "msg_h", "webhook-timestamp": str(TS), "webhook-signature": signature}
    assert reason(Verifier(SECRET), raw, headers) is None
