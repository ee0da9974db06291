"""`GET /metrics` (DESIGN.md "Metrics and logs"): scraped and parsed with prometheus-client's own parser,
every value checked against what was sent; the backlog read from the store on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient
from support.db import query
from support.metrics import SERIES, by, parse
from support.signing import signed_post
from support.wait import wait_until

from receiver import Event, Hooks, NoRetry, create_app, sign
from receiver.app import MontraApp
from receiver.errors import ConfigurationError
from receiver.stores.open import open_store
from receiver.stores.postgres.store import _BACKLOG
from receiver.stores.protocol import Incoming, Store
from receiver.stores.sqlite.store import _BACKLOG_COUNTS, _BACKLOG_OLDEST
from receiver.verify import generate_secret

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LIMIT = 1024
GOOD = b'{"type": "customer.created", "data": {"id": "cus_1"}}'
TOKEN = "metrics-token-0123456789"


def scrape(client: TestClient, **headers: str) -> dict[str, Any]:
    """`GET /metrics` parsed: {family name: {labels as a sorted tuple of (name, value): value}} by sample name."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def signed(body: bytes = GOOD, *, secret: str = SECRET, msg_id: str | None = None, ts: float | None = None) -> Any:
    return {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id, timestamp=ts)}


@pytest.fixture
def app(tmp_path: Path) -> MontraApp:
    return create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], max_body=LIMIT, metrics=True)


@pytest.fixture
def client(app: MontraApp) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


# Each rejection sent a different number of times, so a count landing under the wrong outcome shows.
REJECTIONS: list[tuple[str, int, Callable[[], tuple[bytes, dict[str, str]]]]] = [
    ("body_too_large", 1, lambda: (b'{"type": "a", "pad": "' + b"x" * LIMIT + b'"}', {})),
    ("unsupported_media_type", 2, lambda: (GOOD, {**signed(), "content-type": "text/plain"})),
    ("missing_headers", 3, lambda: (GOOD, {"content-type": "application/json"})),
    ("bad_timestamp", 4, lambda: (GOOD, {**signed(), "webhook-timestamp": "12a"})),
    ("timestamp_out_of_tolerance", 5, lambda: (GOOD, signed(ts=time.time() - 3600))),
    ("invalid_signature", 6, lambda: (GOOD, signed(secret=generate_secret()))),
    ("invalid_json", 7, lambda: (b"{not json", signed(b"{not json"))),
    ("invalid_event", 8, lambda: (b'{"data": {}}', signed(b'{"data": {}}'))),
]


def test_received_counts_every_outcome_exactly(client: TestClient, tmp_path: Path) -> None:
    before = scrape(client)
    assert by(before, "montra_webhooks_received_total", "outcome") == dict.fromkeys(
        ["stored", "duplicate", *(reason for reason, _, _ in REJECTIONS), "store_unavailable", "headers_too_large"],
        0.0,
    )
    for n in range(3):
        assert client.post("/webhooks", content=GOOD, headers=signed(msg_id=f"msg_{n}")).json()["status"] == "stored"
    for _ in range(2):
        assert client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_0")).json()["status"] == "duplicate"
    for reason, times, request in REJECTIONS:
        for _ in range(times):
            body, headers = request()
            assert client.post("/webhooks", content=body, headers=headers).json()["error"] == reason

    after = scrape(client)
    expected = {"stored": 3.0, "duplicate": 2.0, "store_unavailable": 0.0, "headers_too_large": 0.0}
    expected.update({reason: float(times) for reason, times, _ in REJECTIONS})
    assert by(after, "montra_webhooks_received_total", "outcome") == expected
    # Only the five acknowledgements are timed, each in some bucket: the +Inf bucket holds them all.
    assert after["montra_webhooks_ack_seconds_count"] == {(): 5.0}
    assert after["montra_webhooks_ack_seconds_bucket"][(("le", "+Inf"),)] == 5.0
    assert after["montra_webhooks_ack_seconds_sum"][()] > 0
    assert query(tmp_path / "events.db", "SELECT count(*) FROM events") == [(3,)]
    # Every committed write counted once in some batch: at least the three events, at most one batch per write.
    count, total = after["montra_group_commit_batch_size_count"][()], after["montra_group_commit_batch_size_sum"][()]
    assert 1 <= count <= total and total >= 3


def test_every_public_series_and_nothing_else(client: TestClient) -> None:
    assert scrape(client)["types"] == SERIES


def test_handler_tries_by_outcome_and_runs_by_status(tmp_path: Path) -> None:
    hooks = Hooks()

    @hooks.on("customer.created", name="ok")
    async def ok(event: Event) -> None:
        pass

    @hooks.on("customer.created", name="flaky")
    async def flaky(event: Event) -> None:
        if event.attempt == 1:
            raise RuntimeError("first try fails")

    @hooks.on("customer.created", name="slow", timeout=0.05, max_attempts=2)
    async def slow(event: Event) -> None:
        await asyncio.sleep(30)

    @hooks.on("customer.created", name="doomed")
    async def doomed(event: Event) -> None:
        raise NoRetry("never")

    app = create_app(hooks, db=str(tmp_path / "events.db"), secrets=[SECRET], backoff=0.01, metrics=True)
    expected = {
        ("doomed", "dead"): 1.0,
        ("flaky", "failed"): 1.0,
        ("flaky", "succeeded"): 1.0,
        ("ok", "succeeded"): 1.0,
        ("slow", "dead"): 1.0,  # its second and last try timed out too: the run is dead
        ("slow", "timeout"): 1.0,
    }

    def tries(samples: dict[str, Any]) -> dict[tuple[str, str], float]:
        series = samples["montra_handler_tries_total"]
        return {(dict(k)["handler"], dict(k)["outcome"]): v for k, v in series.items() if v}

    with TestClient(app) as client:
        zero = scrape(client)
        assert set(zero["montra_handler_tries_total"].values()) == {0.0}  # every handler's outcomes, from the start
        assert len(zero["montra_handler_tries_total"]) == 4 * 4
        assert client.post("/webhooks", content=GOOD, headers=signed(msg_id="msg_1")).json()["status"] == "stored"
        wait_until(lambda: tries(scrape(client)), until=lambda seen: seen == expected, what=f"handler tries {expected}")
        samples = scrape(client)
    assert by(samples, "montra_runs", "status") == {"pending": 0.0, "running": 0.0, "failed": 0.0, "dead": 2.0}
    assert samples["montra_oldest_due_run_seconds"] == {(): 0.0}
    durations = by(samples, "montra_handler_seconds_count", "handler")
    assert durations == {"ok": 1.0, "flaky": 2.0, "slow": 2.0, "doomed": 1.0}  # one per try that ran
    assert query(tmp_path / "events.db", "SELECT handler, status FROM handler_runs ORDER BY handler") == [
        ("doomed", "dead"),
        ("flaky", "succeeded"),
        ("ok", "succeeded"),
        ("slow", "dead"),
    ]


def test_backlog_gauges_come_from_the_store(tmp_path: Path) -> None:
    """Runs left by another process (or before a restart): counted on scrape, the oldest due one's age with them."""
    db = tmp_path / "events.db"
    since = time.time() - 120

    async def leave_runs() -> None:
        store = open_store(str(db))
        try:
            for n in range(3):
                incoming = Incoming(f"msg_{n}", "customer.created", None, since, {}, GOOD, handlers=["gone.handler"])
                await store.ingest(incoming)
        finally:
            await store.close()

    asyncio.run(leave_runs())
    with TestClient(create_app(db=str(db), secrets=[SECRET], metrics=True)) as client:
        samples = scrape(client)
    assert by(samples, "montra_runs", "status") == {"pending": 3.0, "running": 0.0, "failed": 0.0, "dead": 0.0}
    # Due since `since` (their next_attempt_at is when they arrived): as old as that, read at the scrape.
    age = samples["montra_oldest_due_run_seconds"][()]
    assert 120 <= age < 180  # read a moment after they became due: not less, and not minutes more


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        ({"authorization": f"Bearer {TOKEN}"}, 200),
        ({"authorization": f"bearer {TOKEN}"}, 200),
    ],
)
def test_the_token_is_required_when_given(tmp_path: Path, headers: dict[str, str], status: int) -> None:
    app = create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], metrics_token=TOKEN)  # a token turns it on
    with TestClient(app) as client:
        response = client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "error": "unauthorized",
            "message": "Metrics need 'Authorization: Bearer <metrics token>', and that token did not match.",
        }
        assert TOKEN not in response.text
    else:
        assert "montra_webhooks_received_total" in response.text


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    with TestClient(create_app(db=str(tmp_path / "events.db"), secrets=[SECRET])) as client:
        response = client.get("/metrics")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_a_configuration_error(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigurationError, match="The metrics token is empty"):
        create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], metrics_token=token)


def test_two_apps_in_one_process_count_apart(tmp_path: Path) -> None:
    first = create_app(db=str(tmp_path / "a.db"), secrets=[SECRET], metrics=True)
    second = create_app(db=str(tmp_path / "b.db"), secrets=[SECRET], metrics=True)
    with TestClient(first) as a, TestClient(second) as b:
        signed_post("/webhooks", GOOD, SECRET, "msg_a1", client=a)
        signed_post("/webhooks", GOOD, SECRET, "msg_a2", client=a)
        signed_post("/webhooks", GOOD, SECRET, "msg_b1", client=b)
        counts = [by(scrape(c), "montra_webhooks_received_total", "outcome")["stored"] for c in (a, b)]
    assert counts == [2.0, 1.0]


# -- the store's side: Store.backlog on both backends, and what it reads --------------------------------------


def test_store_backlog_counts_by_status_and_finds_the_oldest_due_run(store_url: str) -> None:
    now = time.time()

    async def work(store: Store) -> tuple[Any, Any, Any]:
        empty = await store.backlog(now=now)

        async def arrive(event_id: str, at: float, handlers: list[str]) -> None:
            await store.ingest(Incoming(event_id, "customer.created", None, at, {}, GOOD, handlers=handlers))

        await arrive("e1", now - 100, ["a", "b", "c"])  # a stays pending, due since now - 100
        await arrive("e2", now - 50, ["a"])
        await arrive("e3", now - 40, ["a"])
        await arrive("e4", now - 30, [])
        claim = {"owner": "w1", "handlers": ["a", "b", "c"], "limit": 5}
        # e2/a: claimed long ago with a short lease its process never renewed: due again since now - 390.
        assert len(await store.claim(**claim, now=now - 400, lease=10, event_id="e2")) == 1
        for event_id, handler, status, due in (("e1", "b", "dead", None), ("e3", "a", "failed", now + 300)):
            assert len(await store.claim(**{**claim, "handlers": [handler]}, now=now, lease=60, event_id=event_id))
            finished = await store.finish(
                owner="w1",
                event_id=event_id,
                handler=handler,
                status=status,  # type: ignore[arg-type]
                error="boom",
                next_attempt_at=due,
                finished_at=now,
                duration_ms=1.0,
            )
            assert finished
        assert len(await store.claim(**{**claim, "handlers": ["c"]}, now=now, lease=60, event_id="e1")) == 1
        return empty, await store.backlog(now=now), await store.backlog(now=now - 395)

    empty, backlog, earlier = run_store(store_url, work)
    assert (dict(empty.runs), empty.oldest_due) == ({"pending": 0, "running": 0, "failed": 0, "dead": 0}, None)
    assert dict(backlog.runs) == {"pending": 1, "running": 2, "failed": 1, "dead": 1}
    assert backlog.oldest_due is not None and backlog.oldest_due.tzinfo is not None
    assert backlog.oldest_due.timestamp() == pytest.approx(now - 390, abs=1e-5)
    # Before the lease ran out and before any retry time came, nothing was due.
    assert earlier.oldest_due is None


def run_store(url: str, work: Callable[[Store], Any]) -> Any:
    async def main() -> Any:
        store = open_store(url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_sqlite_backlog_reads_index_ranges_only(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    run_store(str(db), lambda store: asyncio.sleep(0))
    for sql in (_BACKLOG_COUNTS, _BACKLOG_OLDEST):
        plan = [row[-1] for row in query(db, f"EXPLAIN QUERY PLAN {sql}")]
        searches = [step for step in plan if "handler_runs" in step]
        assert searches and all(step.startswith("SEARCH handler_runs USING") for step in searches), plan
        assert all("INDEX handler_runs_due (status=?)" in step for step in searches), plan


def test_postgres_backlog_has_an_index_for_every_part(postgres_url: str) -> None:
    run_store(postgres_url, lambda store: asyncio.sleep(0))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # On an empty table the planner would rightly scan it: forbid that, and an index must serve each part.
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(str(row[0]) for row in conn.execute(f"EXPLAIN {_BACKLOG}"))
    assert "Seq Scan" not in plan, plan
    assert "handler_runs_backlog" in plan and "handler_runs_waiting" in plan, plan


def test_histogram_buckets_are_cumulative_and_a_bound_counts_in_its_own_bucket(app: MontraApp) -> None:
    metrics = app.metrics
    assert metrics is not None
    for size in (1, 1, 2, 3, 2000):
        metrics.committed(size)
    samples = parse(generate_latest(metrics.registry).decode())
    buckets = by(samples, "montra_group_commit_batch_size_bucket", "le")
    assert buckets == {
        "1.0": 2.0,
        "2.0": 3.0,
        "4.0": 4.0,
        **{le: 4.0 for le in ("8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0", "1024.0")},
        "+Inf": 5.0,
    }
    assert samples["montra_group_commit_batch_size_count"] == {(): 5.0}
    assert samples["montra_group_commit_batch_size_sum"] == {(): 2007.0}
