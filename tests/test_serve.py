"""A real `montra-hooks serve` process: what only an HTTP server shows, and that no secret ever leaks."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from support.db import query
from support.server import ServerProcess
from support.signing import signed_post

from receiver import create_app, sign
from receiver.verify import generate_secret
from replay.cli import cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GOOD = b'{"type": "customer.created", "data": {"id": "cus_1"}}'


def signed(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", **sign(body, secret=SECRET)}


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (with a content-length) from `sock`: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(fields.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), body


def request_head(headers: dict[str, str], *framing: str) -> bytes:
    lines = ["POST /webhooks HTTP/1.1", "Host: 127.0.0.1", *framing, *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_server_refuses_a_chunked_body_over_the_limit_while_it_streams(serve: Callable[..., ServerProcess]) -> None:
    server = serve("--secret", SECRET, "--db", "events.db", "--max-body", "1024")
    chunk = b"x" * 512
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_head(signed(b"x" * 4096), "Transfer-Encoding: chunked"))
        for _ in range(3):  # 1536 bytes: over the limit, and the body is not finished (no last chunk)
            sock.sendall(b"200\r\n" + chunk + b"\r\n")
        status, body = read_response(sock)  # answered before the body ends: the limit is enforced while reading
    assert (status, json.loads(body)["error"]) == (413, "body_too_large")
    assert query(server.cwd / "events.db", "SELECT count(*) FROM events") == [(0,)]
    assert signed_post(server.url + "/webhooks", GOOD, SECRET).json()["status"] == "stored"


def test_server_refuses_a_lying_content_length(serve: Callable[..., ServerProcess]) -> None:
    server = serve("--secret", SECRET, "--db", "events.db")
    body = b'{"type": "customer.created", "pad": "' + b"z" * 100 + b'"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # Says 10 bytes, sends more: the server reads 10, and the rest is not a request.
        sock.sendall(request_head(signed(body), "Content-Length: 10") + body)
        status, _ = read_response(sock)
    assert status >= 400
    assert query(server.cwd / "events.db", "SELECT count(*) FROM events") == [(0,)]
    assert signed_post(server.url + "/webhooks", GOOD, SECRET).json()["status"] == "stored"  # it kept serving


def test_no_secret_anywhere(
    serve: Callable[..., ServerProcess], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configured secret reaches no response, log line, database page or CLI output."""
    caplog.set_level(logging.DEBUG)
    secret = generate_secret()
    key = secret.removeprefix("whsec_")
    needles = [secret, key]
    db = tmp_path / "events.db"
    server = serve("--secret", secret, "--db", str(db), "--max-body", "4096", "--access-log")
    url = server.url + "/webhooks"
    body = b'{"type": "subscription.upgraded", "data": {"id": "sub_1"}}'
    answers = [signed_post(url, body, secret, msg_id=f"msg_{n}") for n in range(5)]
    answers.append(signed_post(url, body, secret, msg_id="msg_0"))  # a duplicate
    rejected: list[tuple[bytes, dict[str, str]]] = [
        (body, sign(body, secret=generate_secret())),  # invalid_signature
        (body, sign(body, secret=secret, timestamp=time.time() - 3600)),  # timestamp_out_of_tolerance
        (body, {}),  # missing_headers
        (b"not json", sign(b"not json", secret=secret)),  # invalid_json
        (b'{"no": "type"}', sign(b'{"no": "type"}', secret=secret)),  # invalid_event
        (body, {**sign(body, secret=secret), "content-type": "text/plain"}),  # unsupported_media_type
        (b"x" * 5000, sign(b"x" * 5000, secret=secret)),  # body_too_large
    ]
    answers += [httpx.post(url, content=b, headers=h, timeout=10) for b, h in rejected]
    assert [a.status_code for a in answers] == [200] * 6 + [401, 401, 400, 400, 400, 415, 413]

    runner = CliRunner()
    commands = [
        ["events", "list", "--db", str(db)],
        ["events", "list", "--db", str(db), "--json"],
        ["events", "show", "msg_0", "--db", str(db)],
        ["events", "show", "msg_0", "--db", str(db), "--json"],
        ["retry", "--db", str(db)],
        ["prune", "--older-than", "30d", "--db", str(db)],
    ]
    outputs = [runner.invoke(cli, args) for args in commands]
    assert [r.exit_code for r in outputs] == [0] * len(commands), [r.output for r in outputs]
    assert "msg_0" in outputs[0].output

    def on_disk() -> list[bytes]:
        return [p.read_bytes() for p in tmp_path.glob("events.db*")]

    while_running = on_disk()
    assert any(p.name == "events.db-wal" for p in tmp_path.iterdir())  # the WAL is checked, not just the main file
    server.terminate()
    assert "Application shutdown complete" in server.output()
    files = while_running + on_disk()

    # In-process too, with every logger at DEBUG, including a store failure's error lines.
    app = create_app(db=str(tmp_path / "app.db"), secrets=[secret])
    with TestClient(app) as client:
        answers.append(signed_post("/webhooks", body, secret, client=client))
        answers.append(client.post("/webhooks", content=body, headers=sign(body, secret=generate_secret())))
        assert client.get("/healthz").status_code == 200  # the rejection's write is done: the writer is idle
        app.store._writer.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]
        answers.append(signed_post("/webhooks", body, secret, client=client))
        app.store._writer.execute("PRAGMA query_only = OFF")  # type: ignore[attr-defined]
    assert [a.status_code for a in answers[-3:]] == [200, 401, 503]
    assert "store write failed" in caplog.text  # the failure was logged, so the log was worth searching

    texts = [a.text for a in answers] + [r.output for r in outputs] + [server.output(), caplog.text]
    for needle in needles:
        assert not [t for t in texts if needle in t]
        assert not [f for f in files if needle.encode() in f]
    raw_key = base64.b64decode(key)
    assert not [f for f in files if raw_key in f]
