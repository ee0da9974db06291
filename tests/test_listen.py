"""`montra-hooks listen` end to end: a relay, the listener and a local target, each a real process.

The relay is `montra-hooks serve --stream-token`; the local target is either another `serve` (with
its own secret, so every delivery proves the re-signing) or `tunnel_target.py`, which can answer
500 or 400 on demand. Waits poll for exact states: rows in a store, lines in an output.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.server import ServerProcess
from support.tunnel import (
    LOCAL_SECRET,
    RELAY_SECRET,
    TOKEN,
    QuickRelay,
    Target,
    event_body,
    listen_process,
    send,
    stored,
    stored_ids,
)
from support.wait import wait_until

from replay.cli import cli
from replay.listen import CursorFile

Serve = Callable[..., ServerProcess]


@pytest.fixture
def relay(serve: Serve) -> ServerProcess:
    return serve("--secret", RELAY_SECRET, "--db", "relay.db", "--stream-token", TOKEN, name="relay")


@pytest.fixture
def local(serve: Serve) -> ServerProcess:
    return serve("--secret", LOCAL_SECRET, "--db", "local.db", name="local")


def cursor_in(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["cursor"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def test_live_delivery_resigned_with_the_exact_body(tmp_path: Path, relay: ServerProcess, local: ServerProcess) -> None:
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks").start()
    try:
        listen.wait_for_output("connected to")
        ids = [send(relay.url, "refund.created", n) for n in range(3)]
        wait_until(lambda: len(stored(tmp_path / "local.db")) == 3, what="3 events in the local store")
        relay_rows, local_rows = stored(tmp_path / "relay.db"), stored(tmp_path / "local.db")
        assert [row[1:] for row in local_rows] == [row[1:] for row in relay_rows]  # same ids, types, bodies, order
        assert [row[1] for row in local_rows] == ids
        assert local_rows[0][3] == event_body("refund.created", 0)
        for event_id in ids:
            listen.wait_for_output(f"--> refund.created [{event_id}]")
        listen.wait_for_output("<-- [200] (", count=3)
        assert "starting at the live end" in listen.output()
        assert listen.terminate() == 0  # SIGTERM is a normal stop
        assert "stopped after seq 3 (3 delivered); a restart resumes from there" in listen.output()
        assert TOKEN not in listen.output()
    finally:
        listen.kill()


def test_sigkill_while_events_keep_arriving_loses_nothing(
    tmp_path: Path, relay: ServerProcess, local: ServerProcess
) -> None:
    state = tmp_path / "cursor.json"
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--state", str(state)).start()
    sent: list[str] = []
    stop = threading.Event()

    def keep_sending() -> None:
        n = 100
        while not stop.is_set():
            sent.append(send(relay.url, "usage.reported", n))
            n += 1

    try:
        listen.wait_for_output("connected to")
        sent.extend(send(relay.url, "customer.created", n) for n in range(5))
        wait_until(lambda: cursor_in(state) == 5, what="the cursor saved at seq 5")
        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            wait_until(lambda: len(stored(tmp_path / "local.db")) >= 10, what="deliveries under way")
            listen.kill()
            killed_at = cursor_in(state)
            assert killed_at is not None
            wait_until(
                lambda: len(sent) >= len(stored(tmp_path / "local.db")) + 10, what="events sent while it is down"
            )
            listen.start()
            listen.wait_for_output(f"resuming after seq {killed_at}")
            sent_at_restart = len(sent)
            wait_until(
                lambda: len(stored(tmp_path / "local.db")) >= sent_at_restart + 5, what="caught up, still receiving"
            )
        finally:
            stop.set()
            sender.join()
        wait_until(lambda: stored_ids(tmp_path / "local.db") == stored_ids(tmp_path / "relay.db"), what="every event")
    finally:
        listen.kill()
    assert stored_ids(tmp_path / "local.db") == sent  # all of them, once each, in the order the relay stored them


def test_a_target_answering_500_is_retried_and_nothing_is_skipped(tmp_path: Path, relay: ServerProcess) -> None:
    target = Target(tmp_path).start()
    listen = listen_process(tmp_path, relay.url, target.url).start()
    try:
        listen.wait_for_output("connected to")
        target.fail(True)
        ids = [send(relay.url, "payment.succeeded", n) for n in range(3)]
        listen.wait_for_output("it answered 500", count=3)
        assert "(seq 1 is not skipped)" in listen.output()
        assert target.received() == []
        target.fail(False)
        wait_until(lambda: len(target.received()) == 3, what="3 events at the target")
        assert target.received() == [(event_id, event_body("payment.succeeded", n)) for n, event_id in enumerate(ids)]
    finally:
        listen.kill()
        target.kill()


def test_a_target_that_is_down_is_waited_for(tmp_path: Path, relay: ServerProcess) -> None:
    local = ServerProcess(["--secret", LOCAL_SECRET, "--db", "local.db"], cwd=tmp_path, name="late-local")
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks").start()
    try:
        listen.wait_for_output("connected to")
        ids = [send(relay.url, "checkout.completed", n) for n in range(2)]
        listen.wait_for_output(f"waiting for {local.url}/webhooks: cannot connect", count=2)
        local.start()
        wait_until(lambda: stored_ids(tmp_path / "local.db") == ids, what="both events once the target is up")
    finally:
        listen.kill()
        local.kill()


def test_a_4xx_is_shown_and_passed(tmp_path: Path, relay: ServerProcess) -> None:
    target = Target(tmp_path).start()
    listen = listen_process(tmp_path, relay.url, target.url, "--json").start()
    try:
        listen.wait_for_output("connected to")
        target.reject("msg_refund_created_1")
        ids = [send(relay.url, "refund.created", n) for n in range(3)]
        wait_until(lambda: len(target.received()) == 2, what="the two accepted events")
        listen.wait_for_output('"seq": 3')
    finally:
        listen.kill()
        target.kill()
    assert [event_id for event_id, _ in target.received()] == [ids[0], ids[2]]
    records = [json.loads(line) for line in listen.output().splitlines() if line.startswith("{")]
    assert [(r["seq"], r["id"], r["type"], r["status"], r["attempts"]) for r in records] == [
        (1, ids[0], "refund.created", 200, 1),
        (2, ids[1], "refund.created", 400, 1),
        (3, ids[2], "refund.created", 200, 1),
    ]
    assert "rejected" in records[1]["error"]
    assert "400 is a local bug, not an outage: passed, not retried" in listen.output()


def test_the_relay_restarted_the_listener_reconnects(
    tmp_path: Path, relay: ServerProcess, local: ServerProcess
) -> None:
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks").start()
    try:
        listen.wait_for_output("connected to")
        first = send(relay.url, "subscription.created", 1)
        wait_until(lambda: stored_ids(tmp_path / "local.db") == [first], what="the first event")
        relay.kill()
        listen.wait_for_output("reconnecting in")
        relay.start()
        listen.wait_for_output("connected to http", count=2)
        assert "after seq 1" in listen.output()
        more = [send(relay.url, "subscription.upgraded", n) for n in range(2, 5)]
        wait_until(
            lambda: stored_ids(tmp_path / "local.db") == [first, *more], what="the events sent after the restart"
        )
    finally:
        listen.kill()


def test_a_silent_relay_trips_the_watchdog_and_the_listener_reconnects(tmp_path: Path, local: ServerProcess) -> None:
    relay = QuickRelay(tmp_path, keepalive=0.2).start()
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--silence", "1.5").start()
    try:
        listen.wait_for_output("connected to")
        first = send(relay.url, "meter.created", 1)
        wait_until(lambda: stored_ids(tmp_path / "local.db") == [first], what="the first event")
        relay.pause()
        try:
            listen.wait_for_output("reconnecting in")
        finally:
            relay.resume()
        assert "no data from the relay for 1.5 s" in listen.output()
        listen.wait_for_output("connected to http", count=2)
        second = send(relay.url, "meter.created", 2)
        wait_until(lambda: stored_ids(tmp_path / "local.db") == [first, second], what="an event after the reconnect")
    finally:
        listen.kill()
        relay.kill()


def test_a_wrong_token_exits_2(tmp_path: Path, relay: ServerProcess, local: ServerProcess) -> None:
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--token", "not-the-token").start()
    assert listen.wait() == 2
    assert "The relay refused the token (401)" in listen.output()
    assert "Traceback" not in listen.output()


def test_start_all_after_a_prune_reports_the_gap(tmp_path: Path, relay: ServerProcess, local: ServerProcess) -> None:
    for n in range(3):
        send(relay.url, "refund.created", n)
    assert CliRunner().invoke(cli, ["prune", "--db", str(tmp_path / "relay.db"), "--older-than", "0s"]).exit_code == 0
    kept = send(relay.url, "refund.created", 3)
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--start", "all").start()
    try:
        wait_until(lambda: stored_ids(tmp_path / "local.db") == [kept], what="the event the relay still holds")
        listen.wait_for_output("warning: the relay no longer holds events 1 to 3")
    finally:
        listen.kill()


def test_events_filter_and_the_cursor_moves_past_skipped_events(
    tmp_path: Path, relay: ServerProcess, local: ServerProcess
) -> None:
    state = tmp_path / "cursor.json"
    args = ("--events", "subscription.*", "--events", "payment.failed", "--start", "1", "--state", str(state))
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", *args)
    wanted = [send(relay.url, "subscription.created", 1)]
    send(relay.url, "refund.created", 2)
    wanted.append(send(relay.url, "payment.failed", 3))
    send(relay.url, "customer.created", 4)
    listen.start()
    try:
        wait_until(lambda: stored_ids(tmp_path / "local.db") == wanted, what="only the matching events")
        wait_until(lambda: cursor_in(state) == 4, what="the cursor past the last skipped event")
        wanted.append(send(relay.url, "subscription.canceled", 5))
        wait_until(lambda: stored_ids(tmp_path / "local.db") == wanted, what="a live matching event")
    finally:
        listen.kill()
    assert "refund.created" not in listen.output()


# -- usage errors (exit 2, one line) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--forward-to", "http://192.0.2.1/webhooks"], "is not on loopback: pass --allow-remote"),
        (["--forward-to", "ftp://127.0.0.1/x"], "is not an http(s) URL"),
        (["--start", "0"], "use live, all, or a seq of 1 or more"),
        (["--start", "soon"], "use live, all, or a seq of 1 or more"),
        (["--events", "*.created"], "Bad event pattern"),
        (["--secret", "whsec_!!!"], "--secret"),
    ],
)
def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["listen", "--from", "http://127.0.0.1:9", "--token", "T", "--forward-to", "http://127.0.0.1:9/webhooks"]
    result = CliRunner().invoke(cli, [*base, "--secret", LOCAL_SECRET, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_no_secret_and_no_dev_secret_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_SECRETS", raising=False)
    args = ["listen", "--from", "http://127.0.0.1:9", "--token", "T", "--forward-to", "http://127.0.0.1:9/webhooks"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "No secret to sign with: pass --secret" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not a listen cursor file"),
        ('{"from": "http://127.0.0.1:9", "cursor": -3}', "holds no valid cursor"),
        ('{"from": "https://elsewhere.example", "cursor": 3}', "holds the cursor of https://elsewhere.example"),
    ],
)
def test_a_bad_cursor_file_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cursor.json").write_text(content)
    args = ["listen", "--from", "http://127.0.0.1:9", "--token", "T", "--forward-to", "http://127.0.0.1:9/webhooks"]
    result = CliRunner().invoke(cli, [*args, "--secret", LOCAL_SECRET, "--state", "cursor.json"])
    assert result.exit_code == 2
    assert message in result.output


# -- a local target that refuses every event: stop before it, say what to fix ---------------------

WRONG_SECRET = "whsec_bm90LXRoZS1sb2NhbC1yZWNlaXZlcnMtc2VjcmV0"


def test_a_wrong_local_secret_stops_listen_before_the_event_and_a_restart_delivers_it(
    tmp_path: Path, relay: ServerProcess, local: ServerProcess
) -> None:
    state = tmp_path / "cursor.json"
    local_db = tmp_path / "local.db"
    first = send(relay.url, "customer.created", 1)
    listen = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--start", "all", "--state", str(state))
    listen.start()
    try:
        wait_until(lambda: cursor_in(state) == 1, what="the first event delivered and its cursor saved")
        assert listen.terminate() == 0
    finally:
        listen.kill()
    later = [send(relay.url, "subscription.created", 2), send(relay.url, "subscription.upgraded", 3)]

    # The local receiver checks LOCAL_SECRET: every event would be refused, so none may be passed.
    args = ("--state", str(state), "--secret", WRONG_SECRET)
    wrong = listen_process(tmp_path, relay.url, local.url + "/webhooks", *args, name="listen-wrong").start()
    try:
        assert wrong.wait() == 1
    finally:
        wrong.kill()
    output = wrong.output()
    assert f"--> subscription.created [{later[0]}]\n<-- [401] (" in output
    assert (
        f"Error: listen stopped before seq 2 ({later[0]}), which is not delivered: the local receiver at "
        f"{local.url}/webhooks refused the signature (401): pass --secret with the local receiver's secret, "
        "or run both with the dev secret in .montra-hooks/dev-secret"
    ) in output
    assert "A restart resumes with that event." in output
    assert later[1] not in output  # nothing after it was tried
    assert "Traceback" not in output
    assert cursor_in(state) == 1
    assert stored_ids(local_db) == [first]

    right = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--state", str(state), name="listen-right")
    right.start()
    try:
        wait_until(lambda: stored_ids(local_db) == [first, *later], what="both held-back events at the local receiver")
        wait_until(lambda: cursor_in(state) == 3, what="the cursor after them")
    finally:
        right.kill()
    assert "resuming after seq 1" in right.output()


def test_starting_live_with_a_wrong_secret_keeps_the_first_event(
    tmp_path: Path, relay: ServerProcess, local: ServerProcess
) -> None:
    # No saved cursor: listen starts at the live end, so the cursor it saves on stopping is the one before the event.
    state = tmp_path / "cursor.json"
    args = ("--state", str(state), "--secret", WRONG_SECRET)
    wrong = listen_process(tmp_path, relay.url, local.url + "/webhooks", *args, name="listen-wrong").start()
    try:
        wrong.wait_for_output("connected to")
        sent = [send(relay.url, "payment.succeeded", n) for n in range(2)]
        assert wrong.wait() == 1
    finally:
        wrong.kill()
    assert f"Error: listen stopped before seq 1 ({sent[0]})" in wrong.output()
    assert cursor_in(state) == 0
    right = listen_process(tmp_path, relay.url, local.url + "/webhooks", "--state", str(state), name="listen-right")
    right.start()
    try:
        wait_until(lambda: stored_ids(tmp_path / "local.db") == sent, what="both events once the secret is right")
    finally:
        right.kill()


def test_a_wrong_forward_to_path_stops_listen(tmp_path: Path, relay: ServerProcess, local: ServerProcess) -> None:
    sent = send(relay.url, "refund.created", 1)
    for path, status in (("/hooks", 404), ("/healthz", 405)):  # no such route; a route that takes GET only
        state = tmp_path / f"cursor-{status}.json"
        args = ("--start", "all", "--state", str(state))
        listen = listen_process(tmp_path, relay.url, local.url + path, *args, name=f"listen-{status}").start()
        try:
            assert listen.wait() == 1
        finally:
            listen.kill()
        assert (
            f"Error: listen stopped before seq 1 ({sent}), which is not delivered: {local.url}{path} does not take "
            f"webhooks ({status}): check --forward-to's path (the local receiver's --path, /webhooks by default)."
        ) in listen.output()
        assert cursor_in(state) == 0
    assert stored_ids(tmp_path / "local.db") == []


def test_the_cursor_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    state = tmp_path / "cursor.json"
    (tmp_path / "cursor.json.tmp").symlink_to(victim)  # the temporary name the cursor used to be written to
    cursor = CursorFile(state, "http://127.0.0.1:9")
    cursor.save(7)
    assert victim.read_text() == "keep me\n"
    assert (cursor.load(), state.is_symlink()) == (7, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cursor.json", "cursor.json.tmp", "victim.txt"]
