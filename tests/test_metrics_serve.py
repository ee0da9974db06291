"""`serve --metrics` and `--log-format json` as real processes: a real Prometheus scrapes a real receiver on
loopback; every line a JSON-logging receiver writes is a JSON object; a stream that stops reading shows as lag."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.db import query
from support.metrics import ALERTS, PROMETHEUS, dashboard_exprs, needs_prometheus, parse
from support.net import free_port
from support.server import ServerProcess
from support.signing import signed_post
from support.wait import wait_until

from receiver.stores.open import open_store
from receiver.stores.protocol import Incoming
from receiver.stream import PAGE_SIZE

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "metrics-token-0123456789"
STREAM_TOKEN = "stream-token-0123456789"
GOOD = b'{"type": "customer.created", "data": {"id": "cus_1"}}'


def scrape(server: ServerProcess, token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(server.url + "/metrics", headers=headers, timeout=10.0)
    assert response.status_code == 200, response.text
    return parse(response.text)


# -- a real Prometheus -------------------------------------------------------------------------------------------


class Prometheus:
    """Debian's `prometheus` on a free loopback port, its storage and config in `folder`, scraping every second."""

    def __init__(self, folder: Path, target: str, token: str) -> None:
        folder.mkdir()
        (folder / "token").write_text(token)
        # JSON is YAML. Paths are absolute: Prometheus reads them relative to its working directory.
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "montra",
                    "authorization": {"credentials_file": str(folder / "token")},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        assert PROMETHEUS is not None
        command = [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def api(self, path: str, **params: str) -> Any:
        try:
            response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5.0)
        except httpx.TransportError:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()[-3000:]}"
            return None
        if response.status_code == 503:  # still starting: its storage is not ready yet
            return None
        payload = response.json()
        assert payload["status"] == "success", payload
        return payload["data"]

    def value(self, promql: str, label: str) -> dict[str, float]:
        """An instant query's result by one label: {that label's value: the sample's value}."""
        data = self.api("query", query=promql)
        if data is None:
            return {}
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in data["result"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str, str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str, token: str) -> Prometheus:
        started.append(Prometheus(tmp_path / "prometheus", target, token))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@needs_prometheus
def test_a_real_prometheus_scrapes_serve_and_reads_the_stored_count(serve: Any, prometheus: Any) -> None:
    server = serve("--secret", SECRET, "--db", "events.db", "--metrics-token", TOKEN)
    assert httpx.get(server.url + "/metrics", timeout=10.0).status_code == 401
    sent = {"stored": 7, "duplicate": 2, "invalid_signature": 3}
    for n in range(sent["stored"]):
        assert signed_post(server.url + "/webhooks", GOOD, SECRET, f"msg_{n}").json()["status"] == "stored"
    for _ in range(sent["duplicate"]):
        assert signed_post(server.url + "/webhooks", GOOD, SECRET, "msg_0").json()["status"] == "duplicate"
    for n in range(sent["invalid_signature"]):
        response = signed_post(server.url + "/webhooks", GOOD, "whsec_" + "A" * 43, f"bad_{n}")
        assert response.json()["error"] == "invalid_signature"

    prom = prometheus(f"127.0.0.1:{server.port}", TOKEN)
    query_ = 'montra_webhooks_received_total{job="montra"}'
    received = wait_until(
        lambda: prom.value(query_, "outcome"), until=lambda seen: seen.get("stored") == 7, what="7 stored in Prometheus"
    )
    assert {k: v for k, v in received.items() if v} == sent
    assert prom.value('up{job="montra"}', "job") == {"montra": 1.0}
    assert prom.value("montra_runs", "status") == {"pending": 0.0, "running": 0.0, "failed": 0.0, "dead": 0.0}
    # The dashboard's queries and the alert rules parse and run against what was scraped.
    for expr in dashboard_exprs():
        concrete = expr.replace("$__rate_interval", "1m").replace("$job", "montra")
        assert prom.api("query", query=concrete) is not None, concrete

    def rules() -> list[tuple[str, str, str]]:
        groups = prom.api("rules")["groups"]
        return [(r["name"], r["health"], r["state"]) for group in groups for r in group["rules"]]

    expected = [(name, "ok", "inactive") for name in ("HandlerRunsDead", "OldestDueRunLate", "WebhookRejectionSpike")]
    expected = [("Montra" + name, health, state) for name, health, state in expected]
    wait_until(rules, until=lambda seen: seen == expected, what=f"the alert rules evaluated: {expected}")


# -- JSON logs ---------------------------------------------------------------------------------------------------

HANDLERS = """
from receiver import Hooks, NoRetry

hooks = Hooks()


@hooks.on("customer.created", name="flaky")
async def flaky(event):
    if event.attempt == 1:
        raise RuntimeError("first try fails")


@hooks.on("customer.created", name="doomed")
async def doomed(event):
    raise NoRetry("never")
"""

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_logs_are_one_object_per_line_uvicorns_included(serve: Any, tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    server = serve(
        *("--app", "handlers:hooks", "--secret", SECRET, "--db", "events.db", "--backoff", "0.01"),
        *("--log-format", "json", "--access-log", "--metrics"),
    )
    assert signed_post(server.url + "/webhooks", GOOD, SECRET, "msg_1").json()["status"] == "stored"
    assert httpx.post(server.url + "/webhooks", content=GOOD, timeout=10.0).status_code == 400
    done = [("doomed", "dead"), ("flaky", "succeeded")]
    runs = "SELECT handler, status FROM handler_runs ORDER BY handler"
    wait_until(lambda: query(tmp_path / "events.db", runs), until=lambda seen: seen == done, what=f"runs {done}")
    server.terminate()  # a graceful stop: uvicorn's shutdown lines are logged too

    lines = [json.loads(line) for line in server.output().splitlines()]  # each line, stdout and stderr: JSON
    assert all({"time", "level", "message", "logger"} <= set(line) for line in lines)
    assert all(ISO_UTC.match(line["time"]) for line in lines)
    assert {line["level"] for line in lines} <= {"debug", "info", "warning", "error", "critical"}
    about_runs = [
        {key: line[key] for key in ("event_id", "type", "handler", "attempt", "outcome", "level")}
        for line in lines
        if "handler" in line
    ]
    run = {"event_id": "msg_1", "type": "customer.created", "attempt": 1}
    # The two handlers run concurrently: their lines come in either order.
    assert sorted(about_runs, key=lambda line: line["handler"]) == [
        {**run, "handler": "doomed", "outcome": "dead", "level": "error"},
        {**run, "handler": "flaky", "outcome": "failed", "level": "warning"},
    ]
    uvicorn = [line["message"] for line in lines if line["logger"].startswith("uvicorn")]
    assert "Application startup complete." in uvicorn
    assert "Application shutdown complete." in uvicorn
    assert any('"POST /webhooks HTTP/1.1" 200' in message for message in uvicorn)  # the access log
    assert any('"POST /webhooks HTTP/1.1" 400' in message for message in uvicorn)
    assert lines[0]["message"].startswith("montra-hooks: receiving on http://127.0.0.1:")  # the banner too
    assert SECRET not in server.output()


def test_text_logs_stay_the_default_and_the_token_comes_from_the_environment(serve: Any) -> None:
    server = serve("--secret", SECRET, "--db", "events.db", env={"MONTRA_HOOKS_METRICS_TOKEN": TOKEN})
    assert httpx.get(server.url + "/metrics", timeout=10.0).status_code == 401
    assert scrape(server, TOKEN)["montra_webhooks_received_total"][(("outcome", "stored"),)] == 0.0
    server.terminate()
    output = server.output()
    assert output.startswith("montra-hooks: receiving on http://127.0.0.1:")
    assert f"  metrics:  http://127.0.0.1:{server.port}/metrics, token required\n" in output
    assert "Application startup complete." in output
    assert not any(line.startswith("{") for line in output.splitlines())
    assert TOKEN not in output


# -- streams ----------------------------------------------------------------------------------------------------


def test_a_stream_that_stops_reading_shows_as_lag(serve: Any, tmp_path: Path) -> None:
    """A client that reads nothing: its socket fills, the stream's send waits, and its cursor stays behind."""
    count, body = 600, json.dumps({"type": "customer.created", "data": {"pad": "x" * 16_000}}).encode()

    async def fill() -> None:
        store = open_store(str(tmp_path / "events.db"))
        try:
            await asyncio.gather(
                *(
                    store.ingest(Incoming(f"msg_{n}", "customer.created", None, time.time(), {}, body))
                    for n in range(count)
                )
            )
        finally:
            await store.close()

    asyncio.run(fill())
    server = serve("--secret", SECRET, "--db", "events.db", "--metrics", "--stream-token", STREAM_TOKEN)
    assert scrape(server)["montra_stream_clients"] == {(): 0.0}

    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    client.connect(("127.0.0.1", server.port))
    request = f"GET /stream?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {STREAM_TOKEN}\r\n\r\n"
    client.sendall(request.encode())
    try:
        samples = wait_until(lambda: scrape(server), until=lambda m: m["montra_stream_clients"] == {(): 1.0})
        # The cursor is what the client was sent: a whole number of pages. The kernel's buffers can take in more
        # than the first page (8 MB) on some machines, never all 600 events: some lag always shows.
        lag = samples["montra_stream_lag_events"][()]
        assert lag in {float(count - pages * PAGE_SIZE) for pages in range(count // PAGE_SIZE + 1)}, lag
    finally:
        client.close()
    samples = wait_until(lambda: scrape(server), until=lambda m: m["montra_stream_clients"] == {(): 0.0})
    assert samples["montra_stream_lag_events"] == {(): 0.0}
