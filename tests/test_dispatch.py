"""The dispatcher in-process (DESIGN.md, "Dispatch"): a real app on a real SQLite file, through TestClient.

Background dispatch, retries and `dead`, NoRetry, timeouts, duplicates, inline mode, graceful stop,
the mounted app's lifespan and its lazy start, unregistered handlers, and the CLI on what dispatch left.
Real `montra-hooks serve` processes are in test_dispatch_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from support.dispatch import SECRET, envelope, event_status, runs, settled
from support.signing import signed_post
from support.wait import wait_until

from receiver import Event, Hooks, NoRetry, create_app, sign
from receiver.dispatch import Dispatcher, DispatchSettings
from receiver.pacing import AcknowledgementsFirst
from receiver.stores.open import open_store
from receiver.stores.protocol import Incoming
from replay.cli import cli


@pytest.fixture
def db(store_url: str) -> str:
    """Every test here runs on both backends: a SQLite file, and a fresh PostgreSQL schema."""
    return store_url


def post(client: TestClient, body: bytes, msg_id: str) -> httpx.Response:
    return signed_post("/webhooks", body, SECRET, msg_id, client=client)


def seed(db: Path, msg_id: str, event_type: str, handlers: list[str]) -> None:
    """Store an event with pending runs, as a receiver that died before dispatching would leave it."""

    async def ingest() -> None:
        store = open_store(db)
        try:
            body = envelope(event_type)
            incoming = Incoming(msg_id, event_type, None, time.time(), {"webhook-id": msg_id}, body, handlers)
            await store.ingest(incoming)
        finally:
            await store.close()

    asyncio.run(ingest())


def test_background_dispatch_runs_every_matching_handler(db: Path) -> None:
    hooks = Hooks()
    calls: list[tuple[str, str, str, int]] = []

    def record(name: str, event: Event) -> None:
        calls.append((event.id, name, event.type, event.attempt))

    @hooks.on("subscription.upgraded", name="exact")
    async def exact(event: Event) -> None:
        record("exact", event)

    @hooks.on("subscription.*", name="prefix")
    async def prefix(event: Event) -> None:
        record("prefix", event)

    @hooks.on("refund.created", name="refunds")
    def refunds(event: Event) -> None:
        assert threading.current_thread().name.startswith("montra-handler")  # the dispatcher's own pool
        record("refunds", event)

    @hooks.on("*", name="everything")
    async def everything(event: Event) -> None:
        record("everything", event)

    app = create_app(hooks, db=db, secrets=[SECRET])
    sent = {
        "msg_up": "subscription.upgraded",
        "msg_deep": "subscription.scheduled_change.created",
        "msg_refund": "refund.created",
        "msg_lookalike": "subscriptions.created",
        "msg_other": "customer.created",
    }
    with TestClient(app) as client:
        for msg_id, event_type in sent.items():
            response = post(client, envelope(event_type, id=msg_id), msg_id)
            assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})
        rows = settled(db, 9)
    assert sorted(calls) == sorted(
        [
            ("msg_up", "exact", "subscription.upgraded", 1),
            ("msg_up", "prefix", "subscription.upgraded", 1),
            ("msg_up", "everything", "subscription.upgraded", 1),
            ("msg_deep", "prefix", "subscription.scheduled_change.created", 1),
            ("msg_deep", "everything", "subscription.scheduled_change.created", 1),
            ("msg_refund", "refunds", "refund.created", 1),
            ("msg_refund", "everything", "refund.created", 1),
            ("msg_lookalike", "everything", "subscriptions.created", 1),
            ("msg_other", "everything", "customer.created", 1),
        ]
    )
    assert {key: (row["status"], row["attempts"], row["last_error"]) for key, row in rows.items()} == {
        (event_id, handler): ("succeeded", 1, None) for event_id, handler, _, _ in calls
    }
    assert all(row["lease_owner"] is None and row["finished_at"] >= row["started_at"] for row in rows.values())
    assert {event_status(db, msg_id) for msg_id in sent} == {"handled"}


def test_retries_count_the_first_try_then_dead_with_on_dead(db: Path) -> None:
    hooks = Hooks()
    tries: dict[str, list[int]] = {"broken": [], "limited": [], "sibling": []}
    dead: list[tuple[str, str, str, int]] = []

    @hooks.on("refund.created", name="broken")
    async def broken(event: Event) -> None:
        tries["broken"].append(event.attempt)
        raise ValueError(f"no transaction on try {event.attempt}")

    @hooks.on("refund.created", name="limited", max_attempts=2)  # the handler's own limit wins over the app's
    def limited(event: Event) -> None:
        tries["limited"].append(event.attempt)
        raise RuntimeError("still broken")

    @hooks.on("refund.created", name="sibling")
    async def sibling(event: Event) -> None:
        tries["sibling"].append(event.attempt)

    @hooks.on_dead
    async def alert(event: Event, handler: str, error: str) -> None:
        dead.append((event.id, handler, error, event.attempt))

    app = create_app(hooks, db=db, secrets=[SECRET], max_attempts=4, backoff=0.01)
    with TestClient(app) as client:
        assert post(client, envelope("refund.created"), "msg_r").json() == {"id": "msg_r", "status": "stored"}
        rows = settled(db, 3)
        wait_until(lambda: len(dead) == 2, what="two on_dead calls")
    assert tries == {"broken": [1, 2, 3, 4], "limited": [1, 2], "sibling": [1]}
    broken_row, limited_row = rows["msg_r", "broken"], rows["msg_r", "limited"]
    assert (broken_row["status"], broken_row["attempts"]) == ("dead", 4)
    assert broken_row["last_error"].startswith("Traceback (most recent call last):\n")
    assert broken_row["last_error"].endswith("ValueError: no transaction on try 4\n")
    assert 'raise ValueError(f"no transaction on try {event.attempt}")' in broken_row["last_error"]
    assert (limited_row["status"], limited_row["attempts"]) == ("dead", 2)
    assert limited_row["last_error"].endswith("RuntimeError: still broken\n")
    assert (rows["msg_r", "sibling"]["status"], rows["msg_r", "sibling"]["attempts"]) == ("succeeded", 1)
    assert sorted(dead) == [
        ("msg_r", "broken", broken_row["last_error"], 4),
        ("msg_r", "limited", limited_row["last_error"], 2),
    ]
    assert event_status(db, "msg_r") == "dead"


def test_no_retry_is_dead_at_once(db: Path) -> None:
    hooks = Hooks()
    tries: list[int] = []
    dead: list[tuple[str, str, str, str]] = []

    @hooks.on("payment.failed", name="email")
    async def email(event: Event) -> None:
        tries.append(event.attempt)
        raise NoRetry("payment.failed without customer_id: retrying cannot fix it")

    @hooks.on_dead
    def alert(event: Event, handler: str, error: str) -> None:  # a sync callback runs off the loop
        dead.append((event.id, handler, error, threading.current_thread().name[:14]))

    app = create_app(hooks, db=db, secrets=[SECRET], backoff=0.01)
    with TestClient(app) as client:
        post(client, envelope("payment.failed"), "msg_p")
        row = settled(db, 1)["msg_p", "email"]
        wait_until(lambda: dead, what="on_dead")
    assert tries == [1]
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("dead", 1, None)
    assert row["last_error"].endswith(
        "receiver.errors.NoRetry: payment.failed without customer_id: retrying cannot fix it\n"
    )
    assert dead == [("msg_p", "email", row["last_error"], "montra-handler")]


def test_an_async_timeout_is_a_failed_try(db: Path) -> None:
    hooks = Hooks()
    tries: list[tuple[int, str]] = []

    @hooks.on("*", name="slow_async", timeout=0.05, max_attempts=2)
    async def slow_async(event: Event) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            tries.append((event.attempt, "interrupted"))

    app = create_app(hooks, db=db, secrets=[SECRET], backoff=0.01)
    with TestClient(app) as client:
        post(client, envelope("customer.created"), "msg_t")
        row = settled(db, 1)["msg_t", "slow_async"]
    assert tries == [(1, "interrupted"), (2, "interrupted")]
    assert (row["status"], row["attempts"]) == ("dead", 2)
    assert row["last_error"].endswith("HandlerTimeout: slow_async took longer than its timeout of 0.05 s.\n")
    assert "await asyncio.sleep(30)" in row["last_error"]  # where the handler was when its time ran out


def test_a_sync_timeout_waits_for_the_thread_before_the_next_try(db: Path) -> None:
    hooks = Hooks()
    tries: list[tuple[int, float, float]] = []

    @hooks.on("*", name="slow_sync", timeout=0.05, max_attempts=2)
    def slow_sync(event: Event) -> None:
        start = time.monotonic()
        time.sleep(0.3)
        tries.append((event.attempt, start, time.monotonic()))

    app = create_app(hooks, db=db, secrets=[SECRET], backoff=0.01)
    with TestClient(app) as client:
        post(client, envelope("customer.created"), "msg_s")
        row = settled(db, 1)["msg_s", "slow_sync"]
    assert [attempt for attempt, _, _ in tries] == [1, 2]
    (_, _, first_end), (_, second_start, _) = tries
    assert second_start >= first_end  # the thread of try 1 had returned before try 2 began
    assert (row["status"], row["attempts"]) == ("dead", 2)
    assert (
        "HandlerTimeout: slow_sync took longer than its timeout of 0.05 s (its thread returned after"
        in (row["last_error"])
    )


def test_a_duplicate_requeues_only_dead_runs(db: Path) -> None:
    hooks = Hooks()
    calls: dict[str, list[int]] = {"ok": [], "dies_once": [], "waits": []}

    @hooks.on("subscription.paused", name="ok")
    async def ok(event: Event) -> None:
        calls["ok"].append(event.attempt)

    @hooks.on("subscription.paused", name="dies_once")
    async def dies_once(event: Event) -> None:
        calls["dies_once"].append(event.attempt)
        if len(calls["dies_once"]) == 1:
            raise NoRetry("not yet")

    @hooks.on("subscription.paused", name="waits")
    async def waits(event: Event) -> None:
        calls["waits"].append(event.attempt)
        raise ValueError("try later")

    # backoff 60 s: `waits` stays `failed` (waiting to retry) for the whole test.
    app = create_app(hooks, db=db, secrets=[SECRET], backoff=60)
    body = envelope("subscription.paused")
    with TestClient(app) as client:
        assert post(client, body, "msg_d").json() == {"id": "msg_d", "status": "stored"}
        settled(db, 3, frozenset({"succeeded", "dead", "failed"}))
        assert event_status(db, "msg_d") == "dead"
        assert post(client, body, "msg_d").json() == {"id": "msg_d", "status": "duplicate"}
        rows = wait_until(
            lambda: (found := runs(db))["msg_d", "dies_once"]["status"] == "succeeded" and found,
            what="the dead run to run again",
        )
        assert post(client, body, "msg_d").json() == {"id": "msg_d", "status": "duplicate"}  # nothing dead now
        assert client.get("/healthz").status_code == 200
    # A fresh cycle: attempts start again at 1. `ok` (succeeded) and `waits` (failed) were left alone.
    assert calls == {"ok": [1], "dies_once": [1, 1], "waits": [1]}
    assert {handler: (row["status"], row["attempts"]) for (_, handler), row in rows.items()} == {
        "ok": ("succeeded", 1),
        "dies_once": ("succeeded", 1),
        "waits": ("failed", 1),
    }
    assert event_status(db, "msg_d") == "failed"


def inline_hooks(calls: dict[str, list[int]], failures: dict[str, int]) -> Hooks:
    """`ok` always succeeds; `flaky` fails its first `failures["flaky"]` calls; both share one parsed body."""
    hooks = Hooks()

    @hooks.on("checkout.completed", name="ok")
    async def ok(event: Event) -> None:
        calls["ok"].append(event.attempt)
        calls.setdefault("data", []).append(id(event.data))

    @hooks.on("checkout.*", name="flaky")
    def flaky(event: Event) -> None:
        calls["flaky"].append(event.attempt)
        calls.setdefault("data", []).append(id(event.data))
        if len(calls["flaky"]) <= failures["flaky"]:
            raise ValueError(f"flaky failed try {event.attempt}")

    return hooks


def test_inline_answers_200_after_every_handler_ran(db: Path) -> None:
    calls: dict[str, list[int]] = {"ok": [], "flaky": []}
    app = create_app(inline_hooks(calls, {"flaky": 0}), db=db, secrets=[SECRET], dispatch="inline")
    with TestClient(app) as client:
        response = post(client, envelope("checkout.completed"), "msg_i")
        # Answered after the handlers ran, not before.
        assert (response.status_code, response.json(), calls["ok"], calls["flaky"]) == (
            200,
            {"id": "msg_i", "status": "stored"},
            [1],
            [1],
        )
    assert calls["data"][0] == calls["data"][1]  # the body was parsed once for both handlers
    assert {handler: (row["status"], row["attempts"]) for (_, handler), row in runs(db).items()} == {
        "ok": ("succeeded", 1),
        "flaky": ("succeeded", 1),
    }


def test_inline_answers_500_and_a_resend_reruns_only_unfinished_runs(db: Path) -> None:
    calls: dict[str, list[int]] = {"ok": [], "flaky": []}
    app = create_app(inline_hooks(calls, {"flaky": 1}), db=db, secrets=[SECRET], dispatch="inline", backoff=0.01)
    body = envelope("checkout.completed")
    with TestClient(app) as client:
        first = post(client, body, "msg_f")
        assert (first.status_code, first.json()) == (
            500,
            {
                "error": "handler_failed",
                "message": "Stored, but handler(s) failed: flaky. Send it again to retry them.",
                "id": "msg_f",
            },
        )
        assert event_status(db, "msg_f") == "failed"  # stored, waiting for the sender's retry
        assert runs(db)["msg_f", "flaky"]["last_error"].endswith("ValueError: flaky failed try 1\n")
        time.sleep(0.1)  # far past the backoff: inline mode has no background retries
        assert calls == {"ok": [1], "flaky": [1], "data": calls["data"]}
        second = post(client, body, "msg_f")
        assert (second.status_code, second.json()) == (200, {"id": "msg_f", "status": "duplicate"})
        third = post(client, body, "msg_f")
        assert (third.status_code, third.json()) == (200, {"id": "msg_f", "status": "duplicate"})
    assert (calls["ok"], calls["flaky"]) == ([1], [1, 2])
    assert {handler: (row["status"], row["attempts"]) for (_, handler), row in runs(db).items()} == {
        "ok": ("succeeded", 1),
        "flaky": ("succeeded", 2),
    }
    assert event_status(db, "msg_f") == "handled"


def test_inline_dead_then_a_resend_starts_a_fresh_cycle(db: Path) -> None:
    calls: dict[str, list[int]] = {"ok": [], "flaky": []}
    dead: list[str] = []
    hooks = inline_hooks(calls, {"flaky": 2})
    hooks.on_dead(lambda event, handler, error: dead.append(handler))
    app = create_app(hooks, db=db, secrets=[SECRET], dispatch="inline", max_attempts=2)
    body = envelope("checkout.completed")
    with TestClient(app) as client:
        assert [post(client, body, "msg_x").status_code for _ in range(2)] == [500, 500]
        assert (runs(db)["msg_x", "flaky"]["status"], dead) == ("dead", ["flaky"])
        assert post(client, body, "msg_x").json() == {"id": "msg_x", "status": "duplicate"}
    assert (calls["ok"], calls["flaky"], dead) == ([1], [1, 2, 1], ["flaky"])
    assert (runs(db)["msg_x", "flaky"]["status"], runs(db)["msg_x", "flaky"]["attempts"]) == ("succeeded", 1)


def test_shutdown_lets_running_handlers_finish_and_leaves_the_rest_pending(db: Path) -> None:
    hooks = Hooks()
    started: list[str] = []
    first_started, release = asyncio.Event(), asyncio.Event()

    @hooks.on("usage.reported", name="slow")
    async def slow(event: Event) -> None:
        started.append(event.id)
        first_started.set()
        await release.wait()

    # Entered as a parent app would enter it, with an ASGI client that does not run lifespans itself.
    app = create_app(hooks, db=db, secrets=[SECRET], concurrency=1)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            stopping: asyncio.Task[None] | None = None
            async with app.lifespan(None):
                for n in range(3):
                    body = envelope("usage.reported")
                    headers = {"content-type": "application/json", **sign(body, secret=SECRET, msg_id=f"msg_{n}")}
                    assert (await client.post("/webhooks", content=body, headers=headers)).status_code == 200
                await first_started.wait()

                async def finish_later() -> None:
                    await asyncio.sleep(0.1)  # the shutdown below has stopped claiming by now
                    release.set()

                stopping = asyncio.create_task(finish_later())
            assert stopping.done()  # the shutdown waited for the running handler

    asyncio.run(scenario())
    rows = runs(db)
    assert started == ["msg_0"]
    assert {event_id: (row["status"], row["attempts"], row["lease_owner"]) for (event_id, _), row in rows.items()} == {
        "msg_0": ("succeeded", 1, None),
        "msg_1": ("pending", 0, None),
        "msg_2": ("pending", 0, None),
    }


@pytest.mark.parametrize("form", ["lifespan=montra.lifespan", "inside the parent's own lifespan"])
def test_mounted_with_its_lifespan_it_recovers_at_start(db: Path, caplog: pytest.LogCaptureFixture, form: str) -> None:
    seed(db, "msg_left", "refund.created", ["recover"])
    hooks = Hooks()
    seen: list[str] = []
    hooks.on("refund.created", name="recover")(lambda event: seen.append(event.id))
    montra = create_app(hooks, db=db, secrets=[SECRET])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:  # the README's second form
        async with montra.lifespan(app):
            yield

    chosen = montra.lifespan if form == "lifespan=montra.lifespan" else lifespan
    parent = Starlette(routes=[Mount("/montra", app=montra)], lifespan=chosen)
    with caplog.at_level(logging.WARNING), TestClient(parent) as client:
        # No request yet: the lifespan started the dispatcher, which resumed the run a crash left.
        settled(db, 1)
        assert seen == ["msg_left"]
        response = signed_post("/montra/webhooks", envelope("refund.created"), SECRET, "msg_new", client=client)
        assert response.json() == {"id": "msg_new", "status": "stored"}
        settled(db, 2)
    assert seen == ["msg_left", "msg_new"]
    assert not [r for r in caplog.records if "lifespan did not run" in r.getMessage()]


def test_mounted_without_its_lifespan_it_starts_on_the_first_request(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db, "msg_left", "refund.created", ["recover"])
    hooks = Hooks()
    seen: list[str] = []
    hooks.on("refund.created", name="recover")(lambda event: seen.append(event.id))
    montra = create_app(hooks, db=db, secrets=[SECRET])
    parent = Starlette(routes=[Mount("/montra", app=montra)])
    with caplog.at_level(logging.WARNING, logger="montra.receiver"), TestClient(parent) as client:
        assert runs(db)["msg_left", "recover"]["status"] == "pending"  # nothing started it yet
        assert client.get("/montra/healthz").status_code == 200
        settled(db, 1)
        assert seen == ["msg_left"]
        warnings = [r.getMessage() for r in caplog.records if r.name == "montra.receiver"]
        assert len(warnings) == 1 and "its lifespan did not run, so crash recovery waited for traffic" in warnings[0]


def test_runs_of_unregistered_handlers_are_reported_and_left(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed(db, "msg_old", "refund.created", ["billing.removed_handler", "billing.kept"])
    hooks = Hooks()
    hooks.on("refund.created", name="billing.kept")(lambda event: None)
    app = create_app(hooks, db=db, secrets=[SECRET], backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="montra.dispatch"), TestClient(app):
        settled(db, 2, frozenset({"succeeded", "pending"}))
        wait_until(lambda: runs(db)["msg_old", "billing.kept"]["status"] == "succeeded", what="the kept handler")
    assert [r.getMessage() for r in caplog.records if r.name == "montra.dispatch"] == [
        "1 unfinished run(s) of handler 'billing.removed_handler', which is not registered: left as they are"
    ]
    orphan = runs(db)["msg_old", "billing.removed_handler"]
    assert (orphan["status"], orphan["attempts"], orphan["lease_owner"], orphan["last_error"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert event_status(db, "msg_old") == "pending"


def test_inline_mode_reports_runs_of_unregistered_handlers_too(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed(db, "msg_old", "refund.created", ["billing.removed_handler"])
    app = create_app(Hooks(), db=db, secrets=[SECRET], dispatch="inline")
    with caplog.at_level(logging.WARNING, logger="montra.dispatch"), TestClient(app):
        pass
    assert [r.getMessage() for r in caplog.records if r.name == "montra.dispatch"] == [
        "1 unfinished run(s) of handler 'billing.removed_handler', which is not registered: left as they are"
    ]
    assert runs(db)["msg_old", "billing.removed_handler"]["status"] == "pending"


def test_cli_shows_dead_runs_and_retry_hands_them_to_the_running_receiver(db: Path) -> None:
    hooks = Hooks()
    refuse = threading.Event()
    refuse.set()
    calls: list[int] = []

    @hooks.on("refund.created", name="refund")
    def refund(event: Event) -> None:
        calls.append(event.attempt)
        if refuse.is_set():
            raise NoRetry("refund without transaction_id")

    app = create_app(hooks, db=db, secrets=[SECRET], backoff=0.01)
    runner = CliRunner()
    with TestClient(app) as client:
        post(client, envelope("refund.created"), "msg_dead")
        post(client, envelope("customer.created"), "msg_unhandled")
        settled(db, 1)
        listed = runner.invoke(cli, ["events", "list", "--db", str(db), "--status", "dead", "--json"])
        assert listed.exit_code == 0, listed.output
        assert [(e["id"], e["status"]) for e in map(json.loads, listed.output.splitlines())] == [("msg_dead", "dead")]
        shown = runner.invoke(cli, ["events", "show", "msg_dead", "--db", str(db)])
        assert shown.exit_code == 0, shown.output
        assert "refund.created [msg_dead]" in shown.output
        assert "\nrefund: dead, 1 attempt(s)\n  Traceback (most recent call last):\n" in shown.output
        assert shown.output.endswith("  receiver.errors.NoRetry: refund without transaction_id\n")
        as_json = json.loads(runner.invoke(cli, ["events", "show", "msg_dead", "--db", str(db), "--json"]).output)
        assert [(r["handler"], r["status"], r["attempts"]) for r in as_json["runs"]] == [("refund", "dead", 1)]
        assert as_json["runs"][0]["last_error"].endswith("NoRetry: refund without transaction_id\n")

        refuse.clear()
        retried = runner.invoke(cli, ["retry", "--db", str(db), "--status", "dead"])
        assert (retried.exit_code, retried.output) == (
            0,
            "Re-queued 1 run(s); a running receiver picks them up within a second.\n",
        )
        row = wait_until(
            lambda: (r := runs(db)["msg_dead", "refund"])["status"] == "succeeded" and r, what="the re-queued run"
        )
    assert calls == [1, 1]
    assert (row["attempts"], row["last_error"]) == (1, None)
    assert event_status(db, "msg_dead") == "handled"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:hooks", "cannot import 'no_such_module': no module named 'no_such_module'."),
        ("handlers_here:missing", "handlers_here:missing is nothing, not a receiver.Hooks."),
        ("handlers_here:value", "handlers_here:value is int, not a receiver.Hooks."),
        ("handlers_here", "'handlers_here' is not MODULE:HOOKS"),
    ],
)
def test_serve_app_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str) -> None:
    (tmp_path / "handlers_here.py").write_text("value = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # serve makes the working directory importable
    monkeypatch.delitem(sys.modules, "handlers_here", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--app", spec, "--db", str(tmp_path / "e.db"), "--secret", SECRET])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")


def test_a_handler_past_the_grace_period_is_interrupted_and_its_run_left_pending(db: Path) -> None:
    hooks = Hooks()
    started, cancelled = asyncio.Event(), []

    @hooks.on("*", name="stuck")
    async def stuck(event: Event) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(event.id)
            raise

    async def scenario() -> None:
        store = open_store(db)
        dispatcher = Dispatcher(hooks, store, DispatchSettings(concurrency=1, grace=0.05))
        try:
            await dispatcher.start()
            for msg_id in ("msg_a", "msg_b"):
                await store.ingest(
                    Incoming(msg_id, "customer.created", None, time.time(), {}, envelope("x.y"), ["stuck"])
                )
            dispatcher.wake()
            await started.wait()
            await dispatcher.stop()  # returns after the grace period, though the handler would sleep on
        finally:
            await store.close()

    asyncio.run(scenario())
    assert cancelled == ["msg_a"]
    assert {
        event_id: (row["status"], row["attempts"], row["lease_owner"]) for (event_id, _), row in runs(db).items()
    } == {
        "msg_a": ("pending", 0, None),  # interrupted: handed back, its try not counted
        "msg_b": ("pending", 0, None),  # never claimed
    }


def test_concurrency_is_bounded(db: Path) -> None:
    hooks = Hooks()
    lock = threading.Lock()
    now, most = [0], [0]

    @hooks.on("*", name="counted")
    async def counted(event: Event) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        # Stay until the bound is reached (or 2 s pass), so a slow machine still shows three at once.
        for _ in range(200):
            if now[0] >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        with lock:
            now[0] -= 1

    app = create_app(hooks, db=db, secrets=[SECRET], concurrency=3)
    with TestClient(app) as client:
        for n in range(12):
            post(client, envelope("customer.created"), f"msg_{n}")
        settled(db, 12)
    assert most[0] == 3


def test_a_broken_on_dead_callback_does_not_stop_the_others(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    told: list[str] = []

    @hooks.on("*", name="refuses")
    async def refuses(event: Event) -> None:
        raise NoRetry("no")

    @hooks.on_dead
    async def broken_alert(event: Event, handler: str, error: str) -> None:
        raise RuntimeError("the pager is down")

    @hooks.on_dead
    async def alert(event: Event, handler: str, error: str) -> None:
        told.append(f"{handler} on {event.id}")

    app = create_app(hooks, db=db, secrets=[SECRET])
    with caplog.at_level(logging.ERROR, logger="montra.dispatch"), TestClient(app) as client:
        post(client, envelope("customer.created"), "msg_b")
        wait_until(lambda: told, what="the second on_dead callback")
    assert told == ["refuses on msg_b"]
    failures = [r for r in caplog.records if r.getMessage().startswith("on_dead callback")]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert str(failures[0].exc_info[1]) == "the pager is down"


def test_inline_duplicate_while_the_first_delivery_still_runs_answers_500(db: Path) -> None:
    hooks = Hooks()
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    @hooks.on("*", name="slow")
    def slow(event: Event) -> None:
        calls.append(event.attempt)
        entered.set()
        release.wait(10)

    app = create_app(hooks, db=db, secrets=[SECRET], dispatch="inline")
    body = envelope("customer.created")
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, client, body, "msg_c")
        assert entered.wait(10)
        second = post(client, body, "msg_c")
        release.set()
        assert (first.result().status_code, first.result().json()) == (200, {"id": "msg_c", "status": "stored"})
    # The handler had not succeeded when the resend came: the sender must not stop retrying on its answer.
    assert (second.status_code, second.json()["error"], second.json()["message"]) == (
        500,
        "handler_failed",
        "Stored, but handler(s) failed: slow. Send it again to retry them.",
    )
    assert calls == [1]
    assert (runs(db)["msg_c", "slow"]["status"], runs(db)["msg_c", "slow"]["attempts"]) == ("succeeded", 1)


def test_acknowledgements_first_pauses_a_backlog_only_on_a_saturated_core_while_webhooks_arrive() -> None:
    clock, cpu = [0.0], [0.0]
    pacing = AcknowledgementsFirst(clock=lambda: clock[0], cpu=lambda: cpu[0])

    def after(seconds: float, cores: float) -> bool:
        clock[0] += seconds
        cpu[0] += seconds * cores
        return pacing.should_wait()

    assert not after(0.1, 1.0)  # a saturated core, but no webhook arriving: the backlog goes on
    pacing.arrived()
    assert after(0.06, 1.0)  # arriving, and a whole core in use: wait
    pacing.arrived()
    assert after(0.01, 0.2)  # too short a window to measure again: still saturated
    pacing.arrived()
    assert not after(0.06, 0.3)  # CPU to spare: go
    pacing.arrived()
    assert after(0.06, 0.95)
    assert not after(0.2, 0.95)  # nothing arrived for 0.2 s: the backlog goes at full speed
