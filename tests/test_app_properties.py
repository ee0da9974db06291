"""Properties of `POST /webhooks` over arbitrary headers and bodies: never a 5xx, never a rejected event stored."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from support.db import query

from receiver import create_app, sign
from receiver.app import _answer_body
from receiver.stores.protocol import redact, redacted_json

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LIMIT = 2048
ERRORS = {
    "body_too_large",
    "unsupported_media_type",
    "missing_headers",
    "bad_timestamp",
    "timestamp_out_of_tolerance",
    "invalid_signature",
    "invalid_json",
    "invalid_event",
}
_ids = itertools.count()

# Header values as an HTTP server may pass them: any byte but CR, LF and NUL, and no edge spaces (servers strip them).
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40).map(
    str.strip
)
names = st.sampled_from(
    [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "content-type",
        "authorization",
        "cookie",
        "x-anything",
        "User-Agent",
    ]
) | st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z")
content_types = st.sampled_from(
    [
        None,
        None,
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "application/x+json",
        "text/plain",
        "",
        "json",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
envelopes = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=30) | st.sampled_from(["customer.created", "", 1, None])},
    optional={"data": json_values, "timestamp": st.text(max_size=25) | st.integers(), "id": st.text(max_size=10)},
)
bodies = st.one_of(
    st.binary(max_size=300),
    envelopes.map(lambda e: json.dumps(e).encode()),
    envelopes.map(lambda e: json.dumps(e, ensure_ascii=False).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(LIMIT - 50, LIMIT + 50).map(lambda n: b'{"type": "a.b", "p": "' + b"x" * n + b'"}'),
)
# How the three Standard Webhooks headers are made: signed (under either name), tampered with, or arbitrary.
modes = st.sampled_from(["signed", "svix", "wrong_body", "stale", "arbitrary", "absent"])


def test_arbitrary_requests_never_crash_and_never_store_a_rejection(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    app = create_app(db=str(db), secrets=[SECRET], max_body=LIMIT)
    with TestClient(app) as client:

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            body=bodies,
            mode=modes,
            extra=st.dictionaries(names, values, max_size=5),
            content_type=content_types,
            timestamp=values,
        )
        def check(body: bytes, mode: str, extra: dict[str, str], content_type: str | None, timestamp: str) -> None:
            msg_id = f"msg_prop{next(_ids)}"
            headers: dict[str, str] = {}
            if mode in ("signed", "svix", "wrong_body", "stale"):
                ts = time.time() - 3600 if mode == "stale" else None
                headers = sign(
                    body + (b"!" if mode == "wrong_body" else b""), secret=SECRET, msg_id=msg_id, timestamp=ts
                )
                if mode == "svix":
                    headers = {k.replace("webhook-", "svix-"): v for k, v in headers.items()}
            elif mode == "arbitrary":
                headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": "v1," + timestamp}
            if content_type is not None:
                headers["content-type"] = content_type
            headers = {**extra, **headers} if mode != "arbitrary" else {**headers, **extra}
            before = query(db, "SELECT count(*) FROM events")[0][0]

            # As bytes: a str value outside ASCII would be refused by the client before the app sees it.
            raw = {name: value.encode("latin-1") for name, value in headers.items()}
            response = client.post("/webhooks", content=body, headers=raw)

            assert response.status_code < 500, response.text
            after = query(db, "SELECT count(*) FROM events")[0][0]
            payload = response.json()
            if response.status_code != 200:
                assert set(payload) == {"error", "message"} and payload["error"] in ERRORS
                assert after == before
                return
            # Accepted: only a validly signed JSON event with a string type, and stored byte for byte.
            assert mode in ("signed", "svix")
            assert json.loads(body)["type"]
            assert payload == {"id": msg_id, "status": "stored"}
            ((stored_body, stored_headers),) = query(db, "SELECT body, headers FROM events WHERE id = ?", (msg_id,))
            assert stored_body == body
            assert all(name == name.lower() for name in json.loads(stored_headers))
            assert after == before + 1

        check()


@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=8))
def test_stored_headers_are_what_json_dumps_writes(headers: dict[str, str]) -> None:
    assert redacted_json(headers) == json.dumps(redact(headers))


@given(st.text(), st.sampled_from(["stored", "duplicate"]))
def test_an_acknowledgement_is_what_json_dumps_writes(event_id: str, status: str) -> None:
    payload = {"id": event_id, "status": status}
    assert _answer_body(payload) == json.dumps(payload).encode()
