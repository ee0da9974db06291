"""`GET /stream` (DESIGN.md, "Tunnel"): auth, frames, resume, filters, gaps, keep-alives and shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from support.server import ServerProcess
from support.signing import signed_post
from support.sse import sse_frame

from receiver import ConfigurationError, create_app
from receiver.app import MontraApp
from receiver.stores.open import open_store
from receiver.stores.protocol import Incoming

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "s3cret-stream-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONTRA_HOOKS_STREAM_TOKEN", raising=False)


@pytest.fixture
def db(store_url: str) -> str:
    """The stream's tests with events run on both backends: a SQLite file, and a fresh PostgreSQL schema."""
    return store_url


def make_app(db: str | Path, **kwargs: Any) -> MontraApp:
    kwargs.setdefault("stream_token", TOKEN)
    return create_app(db=db, secrets=[SECRET], **kwargs)


def body(event_type: str, n: int) -> bytes:
    return json.dumps({"type": event_type, "data": {"n": n, "note": "café\u2028 line\nbreak"}}).encode()


def post(client: TestClient, event_type: str, n: int, **headers: str) -> str:
    event_id = f"msg_{n}"
    response = signed_post("/webhooks", body(event_type, n), SECRET, event_id, client=client, headers=headers)
    assert response.json() == {"id": event_id, "status": "stored"}
    return event_id


class Frames:
    """Reads SSE frames from a streaming response: dicts of `id`, `event`, `data` (parsed), `comment`, `retry`."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes()
        self._buffer = b""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        while b"\n\n" not in self._buffer:
            self._buffer += next(self._chunks)
        raw, self._buffer = self._buffer.split(b"\n\n", 1)
        return sse_frame(raw)

    def take(self, count: int) -> list[dict[str, Any]]:
        """The next `count` frames that carry an event (comments and a lone `retry:` are not counted)."""
        taken: list[dict[str, Any]] = []
        for frame in self:
            if "event" not in frame:
                continue
            taken.append(frame)
            if len(taken) == count:
                return taken
        raise AssertionError("the stream ended")


def events_of(frames: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(f["event"], f["id"], f["data"].get("id", "")) for f in frames]


# -- auth and parameters -----------------------------------------------------------------------


def test_stream_is_off_without_a_token(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path / "events.db", stream_token=None)) as client:
        response = client.get("/stream", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "--stream-token" in response.json()["message"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}, {"authorization": f"Bearer {TOKEN}x"}],
)
def test_a_wrong_token_is_401(tmp_path: Path, headers: dict[str, str]) -> None:
    with TestClient(make_app(tmp_path / "events.db")) as client:
        response = client.get("/stream", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


def test_the_token_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONTRA_HOOKS_STREAM_TOKEN", "from-env")
    with TestClient(make_app(tmp_path / "events.db", stream_token=None)) as client:
        assert client.get("/stream", headers=AUTH).status_code == 401
        with client.stream("GET", "/stream", headers={"authorization": "Bearer from-env"}) as response:
            assert response.status_code == 200


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_a_configuration_error(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigurationError, match="stream token is empty"):
        make_app(tmp_path / "events.db", stream_token=token)


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("?since=abc", {}, "invalid_cursor"),
        ("?since=-1", {}, "invalid_cursor"),
        ("", {"last-event-id": "1.5"}, "invalid_cursor"),
        ("?types=subscription.*,*.created", {}, "invalid_types"),
        ("?types=.bad", {}, "invalid_types"),
    ],
)
def test_bad_parameters_are_400(tmp_path: Path, query: str, headers: dict[str, str], code: str) -> None:
    with TestClient(make_app(tmp_path / "events.db")) as client:
        response = client.get("/stream" + query, headers={**AUTH, **headers})
    assert response.status_code == 400
    assert response.json()["error"] == code


# -- frames --------------------------------------------------------------------------------------


def test_backlog_then_live_with_exact_bodies_and_redacted_headers(db: str) -> None:
    with TestClient(make_app(db)) as client:
        for n in (1, 2, 3):
            post(client, "refund.created", n, authorization="Bearer secret-of-the-sender", cookie="a=b")
        with client.stream("GET", "/stream?since=0", headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            assert "content-length" not in response.headers
            frames = Frames(response)
            assert next(frames) == {"retry": "2000"}
            backlog = frames.take(3)
            post(client, "refund.created", 4)
            post(client, "customer.created", 5)
            live = frames.take(2)
    assert events_of(backlog + live) == [("montra.event", str(n), f"msg_{n}") for n in (1, 2, 3, 4, 5)]
    first = backlog[0]["data"]
    assert first["seq"] == 1 and first["type"] == "refund.created"
    assert first["body"].encode() == body("refund.created", 1)  # the exact bytes, unicode line separator included
    assert "body_b64" not in first
    assert first["headers"]["authorization"] == "[redacted]"
    assert first["headers"]["cookie"] == "[redacted]"
    assert first["headers"]["webhook-id"] == "msg_1"
    assert live[1]["data"]["type"] == "customer.created"


def test_last_event_id_wins_over_since(db: str) -> None:
    with TestClient(make_app(db)) as client:
        for n in (1, 2, 3):
            post(client, "refund.created", n)
        with client.stream("GET", "/stream?since=0", headers={**AUTH, "last-event-id": "2"}) as response:
            frames = Frames(response).take(1)
    assert events_of(frames) == [("montra.event", "3", "msg_3")]


def test_no_cursor_starts_at_the_live_end_and_says_where(db: str) -> None:
    with TestClient(make_app(db)) as client:
        post(client, "refund.created", 1)
        post(client, "refund.created", 2)
        with client.stream("GET", "/stream", headers=AUTH) as response:
            frames = Frames(response)
            start = frames.take(1)
            post(client, "refund.created", 3)
            live = frames.take(1)
    assert start == [{"id": "2", "event": "cursor", "data": {"seq": 2}}]
    assert events_of(live) == [("montra.event", "3", "msg_3")]


def test_events_stored_by_another_process_flow_and_binary_bodies_travel_as_base64(db: str) -> None:
    raw = b'{"type": "refund.created", "note": "\xff\xfe not utf-8"}'

    async def store_elsewhere() -> None:
        store = open_store(db)
        try:
            incoming = Incoming(
                "msg_bin", "refund.created", None, time.time(), {"content-type": "application/json"}, raw
            )
            await store.ingest(incoming)
        finally:
            await store.close()

    with TestClient(make_app(db)) as client, client.stream("GET", "/stream?since=0", headers=AUTH) as response:
        frames = Frames(response)
        assert next(frames) == {"retry": "2000"}
        asyncio.run(store_elsewhere())  # no poke from the app: the stream's own poll finds it
        [frame] = frames.take(1)
    assert frame["data"]["id"] == "msg_bin"
    assert "body" not in frame["data"]
    assert base64.b64decode(frame["data"]["body_b64"]) == raw


def test_a_filtered_stream_moves_its_cursor_past_what_it_skips(db: str) -> None:
    with TestClient(make_app(db)) as client:
        post(client, "subscription.created", 1)
        post(client, "refund.created", 2)
        post(client, "subscription.upgraded", 3)
        post(client, "refund.created", 4)
        with client.stream("GET", "/stream?since=0&types=subscription.*&types=payment.failed", headers=AUTH) as r:
            frames = Frames(r)
            backlog = frames.take(3)
            post(client, "refund.created", 5)
            skipped = frames.take(1)
            post(client, "payment.failed", 6)
            matched = frames.take(1)
    assert events_of(backlog) == [("montra.event", "1", "msg_1"), ("montra.event", "3", "msg_3"), ("cursor", "4", "")]
    assert skipped == [{"id": "5", "event": "cursor", "data": {"seq": 5}}]
    assert events_of(matched) == [("montra.event", "6", "msg_6")]


def test_a_pruned_cursor_gets_a_gap_frame_then_the_rest(db: str) -> None:
    app = make_app(db)
    with TestClient(app) as client:
        for n in (1, 2, 3):
            post(client, "refund.created", n)
        # Prune what is there now, then store one more: the oldest left is 4.
        assert client.portal.call(lambda: app.store.prune(before=time.time() + 1))["events"] == 3
        post(client, "refund.created", 4)
        with client.stream("GET", "/stream?since=1", headers=AUTH) as response:
            frames = Frames(response).take(2)
    gap = {"reason": "pruned", "cursor": 1, "resume": 3, "oldest": 4, "newest": 4}
    assert frames[0] == {"id": "3", "event": "gap", "data": gap}
    assert events_of(frames[1:]) == [("montra.event", "4", "msg_4")]


def test_a_cursor_ahead_of_the_store_gets_a_gap_frame_and_resumes_at_its_end(db: str) -> None:
    with TestClient(make_app(db)) as client:
        post(client, "refund.created", 1)
        with client.stream("GET", "/stream", headers={**AUTH, "last-event-id": "99"}) as response:
            frames = Frames(response)
            gap = frames.take(1)
            post(client, "refund.created", 2)
            live = frames.take(1)
    assert gap == [
        {"id": "1", "event": "gap", "data": {"reason": "ahead", "cursor": 99, "resume": 1, "oldest": 1, "newest": 1}}
    ]
    assert events_of(live) == [("montra.event", "2", "msg_2")]


def test_a_large_backlog_arrives_whole_and_in_order(db: str) -> None:
    count = 1234  # more than two pages

    async def fill() -> None:
        store = open_store(db)
        try:
            await asyncio.gather(
                *(
                    store.ingest(Incoming(f"bulk_{i:05d}", "usage.reported", None, time.time(), {}, b'{"type": "x"}'))
                    for i in range(count)
                )
            )
        finally:
            await store.close()

    asyncio.run(fill())
    with TestClient(make_app(db)) as client, client.stream("GET", "/stream?since=0", headers=AUTH) as response:
        frames = Frames(response).take(count)
    assert [int(f["id"]) for f in frames] == list(range(1, count + 1))
    assert [f["data"]["seq"] for f in frames] == list(range(1, count + 1))


def test_a_quiet_stream_sends_keep_alive_comments(db: str) -> None:
    app = make_app(db, stream_keepalive=0.05)
    with TestClient(app) as client, client.stream("GET", "/stream?since=0", headers=AUTH) as response:
        frames = Frames(response)
        assert next(frames) == {"retry": "2000"}
        assert next(frames) == {"comment": "keep-alive"}
        assert next(frames) == {"comment": "keep-alive"}


# -- a real server -----------------------------------------------------------------------------


def test_sigterm_closes_open_streams_and_the_server_exits(serve: Any) -> None:
    server: ServerProcess = serve("--secret", SECRET, "--db", "events.db", "--stream-token", TOKEN)
    assert TOKEN not in server.output()
    assert "stream:   GET /stream, token required" in server.output()
    with httpx.Client(timeout=30) as client, client.stream("GET", server.url + "/stream", headers=AUTH) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"retry: 2000\n\n")
        # uvicorn waits for open connections before its lifespan shutdown: the stream must end by itself.
        # (uvicorn re-raises the SIGTERM once it has shut down gracefully, so the exit code is -15.)
        assert server.terminate(timeout=10) == -15
        assert b"".join(chunks) == b""  # the server ended the response cleanly
    assert "Application shutdown complete" in server.output()
    assert TOKEN not in server.output()
