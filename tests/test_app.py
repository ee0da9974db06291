"""The receiver's HTTP contract (DESIGN.md, "Receiver HTTP contract"), row by row, in its order, on a real app."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from support.db import query

from receiver import create_app, sign
from receiver.app import DEFAULT_MAX_BODY, MAX_HEADER_BYTES, MontraApp
from receiver.stores.protocol import REJECTED_BODY_BYTES
from receiver.stores.sqlite import store as sqlite_store_module
from receiver.verify import generate_secret

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = generate_secret()
LIMIT = 8192
GOOD = b'{"type": "customer.created", "timestamp": "2026-11-25T17:00:00Z", "data": {"id": "cus_1"}}'
BIG = b'{"type": "customer.created", "pad": "' + b"x" * LIMIT + b'"}'
# Valid JSON that Python's parser cannot read (it recurses once per level): still a 400, never a crash.
DEEP = b"[" * 2000 + b"]" * 2000


def signed(
    body: bytes = GOOD, *, secret: str = SECRET, msg_id: str | None = None, ts: float | None = None
) -> dict[str, str]:
    return {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id, timestamp=ts)}


def without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in names}


def settle(client: TestClient) -> None:
    """Wait until queued writes (rejections are written without waiting) are committed: /healthz commits after them."""
    assert client.get("/healthz").status_code == 200


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, response.headers["content-type"]) == (status, "application/json")
    payload = response.json()
    assert set(payload) == {"error", "message"}
    assert payload["error"] == code
    assert isinstance(payload["message"], str) and payload["message"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def app(db: Path) -> MontraApp:
    return create_app(db=str(db), secrets=[SECRET], max_body=LIMIT)


@pytest.fixture
def client(app: MontraApp) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def old() -> float:
    return time.time() - 600


# (name, headers, body, status, error): every rejection row of the contract, and pairs that show the order.
REJECTED: list[tuple[str, Callable[[], dict[str, str]], bytes, int, str]] = [
    ("too_large_by_header", lambda: signed(BIG), BIG, 413, "body_too_large"),
    ("too_large_beats_content_type", lambda: {**signed(BIG), "content-type": "text/plain"}, BIG, 413, "body_too_large"),
    ("too_large_beats_missing_headers", lambda: {}, BIG, 413, "body_too_large"),
    ("text_plain", lambda: {**signed(), "content-type": "text/plain"}, GOOD, 415, "unsupported_media_type"),
    (
        "form",
        lambda: {**signed(), "content-type": "application/x-www-form-urlencoded"},
        GOOD,
        415,
        "unsupported_media_type",
    ),
    (
        "content_type_beats_signature",
        lambda: {**signed(), "content-type": "text/plain", "webhook-signature": "v1,AAAA"},
        GOOD,
        415,
        "unsupported_media_type",
    ),
    ("content_type_beats_missing_headers", lambda: {"content-type": "text/html"}, GOOD, 415, "unsupported_media_type"),
    ("no_headers", lambda: {"content-type": "application/json"}, GOOD, 400, "missing_headers"),
    ("missing_id", lambda: without(signed(), "webhook-id"), GOOD, 400, "missing_headers"),
    ("missing_timestamp", lambda: without(signed(), "webhook-timestamp"), GOOD, 400, "missing_headers"),
    ("missing_signature", lambda: without(signed(), "webhook-signature"), GOOD, 400, "missing_headers"),
    ("empty_id", lambda: {**signed(), "webhook-id": ""}, GOOD, 400, "missing_headers"),
    ("id_with_space", lambda: {**signed(), "webhook-id": "msg 1"}, GOOD, 400, "missing_headers"),
    (
        "missing_beats_bad_timestamp",
        lambda: {**without(signed(), "webhook-signature"), "webhook-timestamp": "soon"},
        GOOD,
        400,
        "missing_headers",
    ),
    ("timestamp_letters", lambda: {**signed(), "webhook-timestamp": "17a4090000"}, GOOD, 400, "bad_timestamp"),
    ("timestamp_plus", lambda: {**signed(), "webhook-timestamp": "+1764090000"}, GOOD, 400, "bad_timestamp"),
    ("timestamp_underscore", lambda: {**signed(), "webhook-timestamp": "1_764_090_000"}, GOOD, 400, "bad_timestamp"),
    ("timestamp_fraction", lambda: {**signed(), "webhook-timestamp": "1764090000.5"}, GOOD, 400, "bad_timestamp"),
    ("timestamp_13_digits", lambda: {**signed(), "webhook-timestamp": "1" * 13}, GOOD, 400, "bad_timestamp"),
    (
        "bad_timestamp_beats_signature",
        lambda: {**signed(), "webhook-timestamp": "x", "webhook-signature": "v1,AAAA"},
        GOOD,
        400,
        "bad_timestamp",
    ),
    ("too_old", lambda: signed(ts=old()), GOOD, 401, "timestamp_out_of_tolerance"),
    ("in_the_future", lambda: signed(ts=time.time() + 600), GOOD, 401, "timestamp_out_of_tolerance"),
    (
        "tolerance_beats_signature",
        lambda: {**signed(ts=old()), "webhook-signature": "v1,AAAA"},
        GOOD,
        401,
        "timestamp_out_of_tolerance",
    ),
    ("wrong_secret", lambda: signed(secret=OTHER_SECRET), GOOD, 401, "invalid_signature"),
    ("tampered_body", lambda: signed(GOOD), GOOD + b" ", 401, "invalid_signature"),
    ("unknown_version_only", lambda: {**signed(), "webhook-signature": "v9,AAAA"}, GOOD, 401, "invalid_signature"),
    ("bad_base64", lambda: {**signed(), "webhook-signature": "v1,!!!not-base64!!!"}, GOOD, 401, "invalid_signature"),
    ("malformed_token", lambda: {**signed(), "webhook-signature": "v1"}, GOOD, 401, "invalid_signature"),
    ("signature_beats_json", lambda: signed(GOOD), b"not json", 401, "invalid_signature"),
    ("signature_beats_event", lambda: signed(GOOD), b"[]", 401, "invalid_signature"),
    ("not_json", lambda: signed(b"not json"), b"not json", 400, "invalid_json"),
    ("empty_body", lambda: signed(b""), b"", 400, "invalid_json"),
    ("not_utf8", lambda: signed(b'{"type": "\xff"}'), b'{"type": "\xff"}', 400, "invalid_json"),
    ("nested_too_deep", lambda: signed(DEEP), DEEP, 400, "invalid_json"),
    ("no_type", lambda: signed(b'{"data": {}}'), b'{"data": {}}', 400, "invalid_event"),
    ("type_not_string", lambda: signed(b'{"type": 5}'), b'{"type": 5}', 400, "invalid_event"),
    ("type_empty", lambda: signed(b'{"type": ""}'), b'{"type": ""}', 400, "invalid_event"),
    ("type_nul", lambda: signed(b'{"type": "a\\u0000b"}'), b'{"type": "a\\u0000b"}', 400, "invalid_event"),
    ("type_newline", lambda: signed(b'{"type": "a.b\\n"}'), b'{"type": "a.b\\n"}', 400, "invalid_event"),
    ("array", lambda: signed(b'[{"type": "a.b"}]'), b'[{"type": "a.b"}]', 400, "invalid_event"),
    ("string", lambda: signed(b'"customer.created"'), b'"customer.created"', 400, "invalid_event"),
    ("null", lambda: signed(b"null"), b"null", 400, "invalid_event"),
]


@pytest.mark.parametrize(("headers", "body", "status", "code"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected(
    client: TestClient, db: Path, headers: Callable[[], dict[str, str]], body: bytes, status: int, code: str
) -> None:
    assert_error(client.post("/webhooks", content=body, headers=headers()), status, code)
    settle(client)
    assert query(db, "SELECT count(*) FROM events") == [(0,)]
    ((reason, stored, names),) = query(db, "SELECT reason, body, headers FROM rejections")
    assert reason == code
    # Over the limit by its header, the body is never read at all.
    assert stored == (b"" if code == "body_too_large" else body[:REJECTED_BODY_BYTES])
    assert all(name == name.lower() for name in json.loads(names))


ACCEPTED: list[tuple[str, Callable[[bytes], dict[str, str]]]] = [
    ("json", lambda body: signed(body)),
    ("no_content_type", lambda body: without(signed(body), "content-type")),
    ("charset", lambda body: {**signed(body), "content-type": "application/json; charset=utf-8"}),
    ("upper_case", lambda body: {**signed(body), "content-type": "APPLICATION/JSON"}),
    ("plus_json", lambda body: {**signed(body), "content-type": "application/vnd.montra+json"}),
    ("svix_aliases", lambda body: {k.replace("webhook-", "svix-"): v for k, v in signed(body).items()}),
    ("rotated_secret", lambda body: signed(body, secret=OTHER_SECRET)),
    (
        "junk_tokens_then_valid",
        lambda body: (
            (h := signed(body, msg_id="msg_junk"))
            | {"webhook-signature": "v0,xx v1,!!! v1a,AAAA v1," + "A" * 44 + " " + h["webhook-signature"]}
        ),
    ),
]


@pytest.mark.parametrize("headers", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(db: Path, headers: Callable[[bytes], dict[str, str]]) -> None:
    body = b'{"type": "montra.brand_new_type", "data": {"note": "caf\xc3\xa9"}}'  # unknown types are stored too
    sent = headers(body)
    app = create_app(db=str(db), secrets=[SECRET, OTHER_SECRET], max_body=LIMIT)
    with TestClient(app) as client:
        response = client.post("/webhooks", content=body, headers=sent)
        msg_id = sent.get("webhook-id") or sent["svix-id"]
        assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})
        settle(client)
    ((stored_id, event_type, stored_body, stored_headers, status),) = query(
        db, "SELECT id, type, body, headers, status FROM events"
    )
    assert (stored_id, event_type, stored_body, status) == (msg_id, "montra.brand_new_type", body, "unhandled")
    assert {k: v for k, v in json.loads(stored_headers).items() if k in sent} == sent
    assert query(db, "SELECT count(*) FROM rejections") == [(0,)]


def test_default_body_limit_is_one_mib(tmp_path: Path) -> None:
    app = create_app(db=str(tmp_path / "events.db"), secrets=[SECRET])
    head = b'{"type": "customer.created", "pad": "'
    exact = head + b"x" * (DEFAULT_MAX_BODY - len(head) - 2) + b'"}'
    assert len(exact) == DEFAULT_MAX_BODY == 1024 * 1024
    with TestClient(app) as client:
        assert client.post("/webhooks", content=exact, headers=signed(exact)).json()["status"] == "stored"
        over = exact + b" "
        assert_error(client.post("/webhooks", content=over, headers=signed(over)), 413, "body_too_large")


def test_body_limit_while_reading_a_chunked_body(client: TestClient, db: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield BIG

    response = client.post("/webhooks", content=chunks(), headers=signed(BIG))
    assert "content-length" not in response.request.headers  # so only the reading can catch it
    assert_error(response, 413, "body_too_large")
    settle(client)
    assert query(db, "SELECT count(*) FROM events") == [(0,)]
    assert query(db, "SELECT reason FROM rejections") == [("body_too_large",)]


def test_stored_then_duplicate(client: TestClient, db: Path) -> None:
    first = client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_dup"))
    assert (first.status_code, first.json()) == (200, {"id": "msg_dup", "status": "stored"})
    other_body = GOOD.replace(b"cus_1", b"cus_2")
    again = client.post("/webhooks", content=other_body, headers=signed(other_body, msg_id="msg_dup"))
    assert (again.status_code, again.json()) == (200, {"id": "msg_dup", "status": "duplicate"})
    assert query(db, "SELECT id, body FROM events") == [("msg_dup", GOOD)]  # the first delivery's bytes stay


def test_one_id_sent_concurrently_is_stored_once(app: MontraApp, client: TestClient, db: Path) -> None:
    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            return await asyncio.gather(
                *(http.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_same")) for _ in range(10))
            )

    # On the app's own event loop, so the ten requests meet in the group commit.
    responses = client.portal.call(burst)  # type: ignore[union-attr]
    assert {r.status_code for r in responses} == {200}
    assert sorted(r.json()["status"] for r in responses) == ["duplicate"] * 9 + ["stored"]
    assert query(db, "SELECT id FROM events") == [("msg_same",)]


def test_headers_stored_lower_cased_and_redacted(client: TestClient, db: Path) -> None:
    secrets_sent = {"Authorization": "Bearer tok_live", "Cookie": "session=abc", "Proxy-Authorization": "Basic eDp5"}
    extra = {**secrets_sent, "X-Montra-Note": "Kept As Sent"}
    assert client.post("/webhooks", content=GOOD, headers={**signed(msg_id="msg_h"), **extra}).status_code == 200
    bad = {**signed(), **extra, "webhook-signature": "v1,AAAA"}
    assert client.post("/webhooks", content=GOOD, headers=bad).status_code == 401
    settle(client)
    ((event_headers,),) = query(db, "SELECT headers FROM events")
    ((rejection_headers,),) = query(db, "SELECT headers FROM rejections")
    for stored in (json.loads(event_headers), json.loads(rejection_headers)):
        assert all(name == name.lower() for name in stored)
        assert {k: stored[k] for k in ("authorization", "cookie", "proxy-authorization")} == dict.fromkeys(
            ("authorization", "cookie", "proxy-authorization"), "[redacted]"
        )
        assert stored["x-montra-note"] == "Kept As Sent"
    wal = db.with_name(db.name + "-wal")
    on_disk = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for value in secrets_sent.values():
        assert value.encode() not in on_disk


def test_mixed_case_names_from_the_asgi_server(app: MontraApp, client: TestClient, db: Path) -> None:
    """An ASGI server may pass names as sent; the app lower-cases them, and ignores a content-length it cannot read."""
    sent = sign(GOOD, secret=SECRET, msg_id="msg_case")
    raw = [(name.title().encode(), value.encode()) for name, value in sent.items()]
    raw += [(b"X-Mixed-Case", b"Yes"), (b"Content-Length", "\N{SUPERSCRIPT TWO}".encode("latin-1"))]
    answer: list[dict[str, Any]] = []

    async def call() -> None:
        scope = {"type": "http", "method": "POST", "path": "/webhooks", "root_path": "", "headers": raw}
        scope |= {"query_string": b"", "client": ("127.0.0.1", 1), "server": ("testserver", 80), "scheme": "http"}
        scope |= {"http_version": "1.1", "asgi": {"version": "3.0"}}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": GOOD, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            answer.append(message)

        await app(scope, receive, send)

    client.portal.call(call)  # type: ignore[union-attr]
    assert answer[0]["status"] == 200
    assert json.loads(answer[1]["body"]) == {"id": "msg_case", "status": "stored"}
    ((headers,),) = query(db, "SELECT headers FROM events")
    assert json.loads(headers)["x-mixed-case"] == "Yes"
    assert all(name == name.lower() for name in json.loads(headers))


def test_rejections_keep_a_bounded_prefix(client: TestClient, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store_module, "MAX_REJECTIONS", 5)
    long_body = b'{"type": "customer.created", "pad": "' + b"y" * (LIMIT - 100) + b'"}'
    assert len(long_body) > REJECTED_BODY_BYTES
    assert client.post("/webhooks", content=long_body, headers=signed(long_body)).status_code == 200
    for n in range(12):
        headers = {**signed(long_body), "webhook-signature": "v1,AAAA", "x-n": str(n)}
        assert_error(client.post("/webhooks", content=long_body, headers=headers), 401, "invalid_signature")
    settle(client)
    rows = query(db, "SELECT reason, body, headers FROM rejections ORDER BY id")
    assert [reason for reason, _, _ in rows] == ["invalid_signature"] * 5
    assert [body for _, body, _ in rows] == [long_body[:REJECTED_BODY_BYTES]] * 5
    assert [json.loads(h)["x-n"] for _, _, h in rows] == ["7", "8", "9", "10", "11"]  # the newest are kept
    assert query(db, "SELECT count(*) FROM events") == [(1,)]


def test_store_not_writable_then_writable_again(app: MontraApp, client: TestClient, db: Path) -> None:
    writer: sqlite3.Connection = app.store._writer  # type: ignore[attr-defined]
    assert client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_before")).status_code == 200
    settle(client)
    writer.execute("PRAGMA query_only = ON")  # every write now fails inside SQLite, as on a read-only disk
    try:
        # A rejection is written without waiting; the /healthz after it makes sure its write was tried.
        assert_error(client.post("/webhooks", content=b"x", headers=signed(b"x")), 400, "invalid_json")
        health = client.get("/healthz")
        assert (health.status_code, health.json()["error"]) == (503, "store_unavailable")
        response = client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_down"))
        assert_error(response, 503, "store_unavailable")
    finally:
        writer.execute("PRAGMA query_only = OFF")
    assert client.get("/healthz").status_code == 200
    again = client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_down"))
    assert (again.status_code, again.json()) == (200, {"id": "msg_down", "status": "stored"})
    assert query(db, "SELECT id FROM events ORDER BY seq") == [("msg_before",), ("msg_down",)]
    assert query(db, "SELECT count(*) FROM rejections") == [(0,)]  # the one rejected while down was lost, not kept


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/webhooks", 405, "method_not_allowed"),
        ("PUT", "/webhooks", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/webhooks/extra", 404, "not_found"),
    ],
)
def test_other_routes_answer_json(client: TestClient, method: str, path: str, status: int, code: str) -> None:
    assert_error(client.request(method, path), status, code)


def test_oversized_headers_are_refused_before_anything_else(client: TestClient, db: Path) -> None:
    headers = {**signed(msg_id="msg_big_headers"), "x-padding": "p" * MAX_HEADER_BYTES}
    assert_error(client.post("/webhooks", content=GOOD, headers=headers), 431, "headers_too_large")
    settle(client)
    assert query(db, "SELECT count(*) FROM events") == [(0,)]


def test_the_root_says_where_everything_is(client: TestClient) -> None:
    response = client.get("/")
    assert (response.status_code, response.json()) == (
        200,
        {
            "service": "montra-webhooks",
            "webhooks": "POST /webhooks (Standard Webhooks signatures)",
            "health": "GET /healthz",
        },
    )
    nowhere = client.get("/nowhere").json()["message"]
    assert nowhere == "Nothing at /nowhere: GET / lists this receiver's routes."


def test_the_root_names_the_stream_and_inspector_when_on(db: Path) -> None:
    app = create_app(db=str(db), secrets=[SECRET], stream_token="s" * 20, inspect=True, inspect_token="t" * 20)
    with TestClient(app) as client:
        index = client.get("/").json()
    assert (index["stream"], index["inspector"]) == ("GET /stream (bearer token)", "GET /inspect (token)")


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        (("webhook-signature",), "header webhook-signature missing"),
        (("webhook-id", "webhook-timestamp"), "headers webhook-id and webhook-timestamp missing"),
        (
            ("webhook-id", "webhook-timestamp", "webhook-signature"),
            "headers webhook-id, webhook-timestamp and webhook-signature missing",
        ),
    ],
)
def test_a_missing_header_is_named_with_how_to_sign(client: TestClient, dropped: tuple[str, ...], named: str) -> None:
    response = client.post("/webhooks", content=GOOD, headers=without(signed(), *dropped))
    assert_error(response, 400, "missing_headers")
    message = response.json()["message"]
    assert message.startswith(named + ": ")
    assert "receiver.sign()" in message and "montra-hooks trigger" in message


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_mounted_under_a_prefix(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    montra = create_app(db=str(db), secrets=[SECRET])
    parent = Starlette(routes=[Mount("/montra", app=montra)], lifespan=montra.lifespan)
    with TestClient(parent) as client:
        response = client.post("/montra/webhooks", content=GOOD, headers=signed(msg_id="msg_mounted"))
        assert (response.status_code, response.json()) == (200, {"id": "msg_mounted", "status": "stored"})
        assert client.get("/montra/healthz").status_code == 200
        assert client.post("/webhooks", content=GOOD, headers=signed()).status_code == 404
    assert query(db, "SELECT id FROM events") == [("msg_mounted",)]
    assert "lifespan did not run" not in caplog.text  # the parent ran it
