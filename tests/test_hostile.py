"""A real `montra-hooks serve` under attack from raw loopback sockets: it stays up, answers, and stays small.

Each attack is bounded in count, bytes and time; the server's timeouts are shortened through its hidden
options so that no test waits out the defaults. While each runs, a signed webhook from another socket
must be answered within 1 s (an httpx timeout, not a measured timing).
"""

from __future__ import annotations

import base64
import hmac
import json
import resource
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.db import query
from support.server import ServerProcess

from receiver import sign

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SHORT = ("--header-timeout", "1", "--body-timeout", "1")
MIB = 1024 * 1024


def body_of(msg_id: str) -> bytes:
    return json.dumps({"type": "customer.created", "data": {"id": f"cus_{msg_id}"}}).encode()


def signed_webhook_answered(server: ServerProcess, msg_id: str, within: float = 1.0) -> dict[str, str]:
    """POST a signed webhook on a connection of its own; it must be answered within `within` seconds."""
    body = body_of(msg_id)
    headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=msg_id)}
    response = httpx.post(server.url + "/webhooks", content=body, headers=headers, timeout=within)
    assert response.status_code == 200, response.text
    answer: dict[str, str] = response.json()
    return answer


def head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /webhooks HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n").encode()


def signed_head(msg_id: str, body: bytes, *extra: str) -> bytes:
    signature = sign(body, secret=SECRET, msg_id=msg_id)
    fields = [f"{name}: {value}" for name, value in signature.items()]
    return head("Content-Type: application/json", f"Content-Length: {len(body)}", *fields, *extra) + b"\r\n"


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """One response with a content-length from `sock`: (status, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(fields["content-length"]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True once the server closes `sock` (EOF or reset) within `timeout` seconds; what it sent is skipped."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def server_pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def socket_budget(wanted: int) -> int:
    """How many client sockets this test may open: `wanted`, fewer when `ulimit -n` is low."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(10, min(wanted, (soft - 200) // 2))


def send_in_background(sock: socket.socket, chunks: Iterator[bytes]) -> threading.Thread:
    """Send `chunks` from a thread until they end or the server stops taking them."""

    def run() -> None:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server closed the connection: the attack is over
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server(serve: Callable[..., ServerProcess]) -> ServerProcess:
    return serve("--secret", SECRET, "--db", "events.db", *SHORT)


def test_header_flood_is_refused_at_once_and_others_are_answered(server: ServerProcess) -> None:
    flood = head() + b"a:b\r\n" * 400_000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as attacker:
        sender = send_in_background(attacker, iter([flood]))
        assert signed_webhook_answered(server, "msg_during_flood")["status"] == "stored"
        status, answer = read_answer(attacker)
        sender.join(timeout=10)
    assert (status, answer["error"]) == (431, "headers_too_large")
    assert query(server.cwd / "events.db", "SELECT id FROM events") == [("msg_during_flood",)]
    assert "Traceback" not in server.output()  # refused and closed connections are not errors of ours


def test_endless_header_costs_bounded_memory(server: ServerProcess) -> None:
    pid = server_pid(server)
    baseline = rss_mib(pid)
    chunk = b"a" * 65536
    peak = baseline
    sent = 0

    def endless() -> Iterator[bytes]:
        nonlocal sent
        yield head() + b"X-Big: "
        deadline = time.monotonic() + 8
        while sent < 96 * MIB and time.monotonic() < deadline:  # bounded: 96 MiB or 8 s
            sent += len(chunk)
            yield chunk

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as attacker:
        sender = send_in_background(attacker, endless())
        while sender.is_alive():
            peak = max(peak, rss_mib(pid))
            sender.join(timeout=0.05)
        assert signed_webhook_answered(server, "msg_after_endless")["status"] == "stored"
        try:
            status = read_answer(attacker)[0]
        except ConnectionResetError:  # closed with the attacker's bytes unread: the 431 may be dropped with them
            status = 431
    assert status == 431  # a server that kept reading would answer nothing: recv times out
    assert peak - baseline < 50, f"RSS grew from {baseline:.0f} to {peak:.0f} MiB while {sent / MIB:.0f} MiB were sent"


def test_slowloris_connections_are_closed_and_webhooks_answered(server: ServerProcess) -> None:
    count = socket_budget(500)
    selector = selectors.DefaultSelector()
    sockets = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(count)]
    try:
        for sock in sockets:
            sock.sendall(head())  # a request begun, its headers never finished
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ones = set(sockets)
        answered = 0
        deadline = time.monotonic() + 6  # the header timeout is 1 s
        while open_ones and time.monotonic() < deadline:
            for sock in list(open_ones):
                try:
                    sock.send(b"X-a: b\r\n")  # one header line at a time, far faster than the timeout
                except OSError:
                    open_ones.discard(sock)
            if answered < 2:
                answered += 1
                assert signed_webhook_answered(server, f"msg_slowloris_{answered}")["status"] == "stored"
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    gone = not sock.recv(4096)
                except ConnectionResetError:
                    gone = True
                if gone:
                    open_ones.discard(sock)
                    selector.unregister(sock)
        assert not open_ones, f"{len(open_ones)} of {count} slow connections were still open after 6 s"
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    assert signed_webhook_answered(server, "msg_after_slowloris")["status"] == "stored"
    assert query(server.cwd / "events.db", "SELECT count(*) FROM events") == [(3,)]
    assert "Traceback" not in server.output()  # refused and closed connections are not errors of ours


def test_held_bodies_are_cut_off_and_nothing_is_stored(server: ServerProcess) -> None:
    pid = server_pid(server)
    baseline = rss_mib(pid)
    body = b'{"type": "customer.created", "pad": "' + b"x" * (MIB - 64) + b'"}'
    count = socket_budget(200)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(count)]
    try:
        for n, sock in enumerate(held):
            sock.sendall(signed_head(f"msg_held_{n}", body) + body[:1024])  # 1 KiB of 1 MiB, then nothing
        assert signed_webhook_answered(server, "msg_beside_held")["status"] == "stored"
        peak = rss_mib(pid)
        still_open = [sock for sock in held if not closed_by_server(sock, timeout=5)]
    finally:
        for sock in held:
            sock.close()
    assert still_open == []
    assert peak - baseline < 50
    assert query(server.cwd / "events.db", "SELECT id FROM events") == [("msg_beside_held",)]
    assert "Traceback" not in server.output()  # refused and closed connections are not errors of ours


def test_past_max_connections_new_requests_get_503_and_inflight_webhooks_are_stored(
    serve: Callable[..., ServerProcess],
) -> None:
    server = serve("--secret", SECRET, "--db", "events.db", "--max-connections", "20")
    body = body_of("msg_in_flight")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as in_flight:
        # In flight: the app reading its body (it asks for it: 100 Continue), and part of the body sent.
        in_flight.sendall(signed_head("msg_in_flight", body, "Expect: 100-continue"))
        assert in_flight.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        in_flight.sendall(body[:10])
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(25)]
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as late:
                late.sendall(signed_head("msg_late", body_of("msg_late")) + body_of("msg_late"))
                status, answer = read_answer(late)
            in_flight.sendall(body[10:])
            stored = read_answer(in_flight)
        finally:
            for sock in idle:
                sock.close()
    assert (status, answer["error"]) == (503, "too_many_connections")
    assert stored == (200, {"id": "msg_in_flight", "status": "stored"})
    assert query(server.cwd / "events.db", "SELECT id FROM events") == [("msg_in_flight",)]


def test_running_out_of_file_descriptors_sheds_idle_connections_quietly(
    serve: Callable[..., ServerProcess],
) -> None:
    # The server gets 96 descriptors (set before it starts, so it cannot raise them): 150 idle sockets exhaust them.
    limit = (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    server = serve("--secret", SECRET, "--db", "events.db", *SHORT, wrapper=[sys.executable, "-c", limit])
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(150)]
    try:
        time.sleep(0.5)  # let the server accept what it can
        assert signed_webhook_answered(server, "msg_out_of_fds", within=5)["status"] == "stored"
    finally:
        for sock in idle:
            sock.close()
    assert signed_webhook_answered(server, "msg_after_fds")["status"] == "stored"
    log = server.output()
    assert log.count("Traceback") == 0
    assert log.count("out of file descriptors") == 1


def raw_post(server: ServerProcess, msg_id: str, *lines: str) -> tuple[int, dict[str, str]]:
    """POST a signed body with the signature lines given (or `sign`'s, when none name one)."""
    body = body_of(msg_id)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head("Content-Type: application/json", f"Content-Length: {len(body)}", *lines) + b"\r\n" + body)
        return read_answer(sock)


def signature_lines(msg_id: str, timestamp: int | None = None) -> tuple[str, str, str]:
    signed = sign(body_of(msg_id), secret=SECRET, msg_id=msg_id, timestamp=timestamp)
    return (
        f"webhook-id: {signed['webhook-id']}",
        f"webhook-timestamp: {signed['webhook-timestamp']}",
        f"webhook-signature: {signed['webhook-signature']}",
    )


def test_empty_webhook_id_is_refused(server: ServerProcess) -> None:
    # Signed by hand over an empty id (`sign` refuses one), so only the id's emptiness can refuse it.
    timestamp = str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.digest(key, f".{timestamp}.".encode() + body_of("msg_x"), "sha256")
    signature = "v1," + base64.b64encode(digest).decode()
    lines = ("webhook-id: ", f"webhook-timestamp: {timestamp}", f"webhook-signature: {signature}")
    status, answer = raw_post(server, "msg_x", *lines)
    assert (status, answer["error"]) == (400, "missing_headers")
    assert "webhook-id" in answer["message"]
    assert query(server.cwd / "events.db", "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.parametrize("valid_first", [True, False], ids=["valid-first", "valid-last"])
def test_repeated_signature_lines_accept_whatever_the_order(server: ServerProcess, valid_first: bool) -> None:
    msg_id, timestamp, signature = signature_lines("msg_repeated_sig")
    wrong = "webhook-signature: v1," + "A" * 43 + "="
    lines = (signature, wrong) if valid_first else (wrong, signature)
    assert raw_post(server, "msg_repeated_sig", msg_id, timestamp, *lines) == (
        200,
        {"id": "msg_repeated_sig", "status": "stored"},
    )


@pytest.mark.parametrize(("name", "code"), [("webhook-id", "missing_headers"), ("webhook-timestamp", "bad_timestamp")])
def test_repeated_id_or_timestamp_with_different_values_is_refused(server: ServerProcess, name: str, code: str) -> None:
    msg_id, timestamp, signature = signature_lines("msg_twice")
    other = {"webhook-id": "webhook-id: msg_other", "webhook-timestamp": f"webhook-timestamp: {int(time.time()) - 1}"}
    status, answer = raw_post(server, "msg_twice", msg_id, timestamp, signature, other[name])
    assert (status, answer["error"]) == (400, code)
    assert answer["message"] == f"{name} is repeated with different values; send it once."
    assert query(server.cwd / "events.db", "SELECT count(*) FROM events") == [(0,)]
    # The same value twice is not ambiguous: stored.
    again = {"webhook-id": msg_id, "webhook-timestamp": timestamp}
    assert raw_post(server, "msg_twice", msg_id, timestamp, signature, again[name])[0] == 200


def test_pipelined_webhooks_are_answered_whole_and_in_order(server: ServerProcess) -> None:
    """A response's head and body leave in one send: pipelined answers must still come whole, in order."""
    ids = [f"msg_pipe_{n}" for n in range(5)]
    requests = b"".join(signed_head(msg_id, body_of(msg_id)) + body_of(msg_id) for msg_id in ids)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(requests)  # one write: the server reads them together
        answers = [read_answer(sock) for _ in ids]
    assert answers == [(200, {"id": msg_id, "status": "stored"}) for msg_id in ids]
    stored = query(server.cwd / "events.db", "SELECT id FROM events ORDER BY seq")
    assert stored == [(msg_id,) for msg_id in ids]


def test_a_connection_close_request_gets_its_whole_answer_before_the_close(server: ServerProcess) -> None:
    body = body_of("msg_close")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(signed_head("msg_close", body, "Connection: close") + body)
        data = b""
        while chunk := sock.recv(65536):  # until the server closes
            data += chunk
    top, _, answer = data.partition(b"\r\n\r\n")
    assert top.startswith(b"HTTP/1.1 200 ") and b"connection: close" in top.lower()
    assert json.loads(answer) == {"id": "msg_close", "status": "stored"}
