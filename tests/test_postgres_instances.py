"""Several real `montra-hooks serve` instances on one PostgreSQL database (issue 7), and the CLI against it.

Each test gets a fresh schema (`postgres_url`), passed as `--db`; the servers are real processes on
loopback ports, serving `tests/support/apps/recording.py` where handlers matter: its start and end
lines (with pid and time) show which instance ran which try, and whether two tries ever overlapped.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner, Result
from support.dispatch import SECRET, envelope, install_recording_app, read_log
from support.instances import (
    PASSWORD,
    STREAM_TOKEN,
    RunHistory,
    StalledWriter,
    StreamTap,
    all_succeeded,
    statuses,
    with_password,
)
from support.postgres import pg_query, postgres_base_url
from support.server import ServerProcess
from support.signing import async_post, signed_post
from support.wait import wait_until

from receiver.stores.open import open_store
from replay.cli import cli

Serve = Callable[..., ServerProcess]

LEASE = "2"
"""Seconds a claim holds a run unrenewed: a killed instance's runs are taken over about this long after."""


def start(serve: Serve, url: str, *options: str, name: str) -> ServerProcess:
    return serve("--app", "recording:hooks", "--db", url, "--secret", SECRET, *options, name=name)


def pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


# -- two instances under load, one killed --------------------------------------------------------------------------


def test_two_instances_under_load_store_each_event_once_and_never_run_a_run_twice_at_once(
    postgres_url: str, serve: Serve, tmp_path: Path
) -> None:
    log_path = install_recording_app(tmp_path)
    a = start(serve, postgres_url, "--lease", LEASE, "--backoff", "0.05", name="a")
    b = start(serve, postgres_url, "--lease", LEASE, "--backoff", "0.05", name="b")
    # One run per instance that blocks until `go` exists (the instance that stores an event claims it at once):
    # the one whose instance is killed is then certainly mid-try.
    blocking = envelope("customer.created", plan={"*": {"block": "go"}})
    for server, msg_id in ((a, "blk_a"), (b, "blk_b")):
        response = signed_post(server.url + "/webhooks", blocking, SECRET, msg_id)
        assert (response.status_code, response.json()) == (200, {"id": msg_id, "status": "stored"})

    def blockers() -> dict[str, int]:
        found = {line["event"]: line["pid"] for line in read_log(log_path) if line["phase"] == "start"}
        return found if len(found) == 2 else {}

    # The victim is whichever instance runs blk_b (b, unless a claimed it first).
    victim, survivor = (a, b) if wait_until(blockers, what="both blocking runs to start")["blk_b"] == pid(a) else (b, a)

    count = 300
    body = envelope("subscription.created", plan={"*": {"sleep": 0.005}})  # two runs each: prefix, everything
    answers: dict[str, list[tuple[str, Any]]] = {}
    acked = Counter[str]()
    lock = threading.Lock()

    def deliver(client: httpx.Client, n: int) -> None:
        # Alternately to both instances; what the victim cannot take goes to the other, as a load balancer retries.
        msg_id, first = f"msg_{n:04d}", (a, b)[n % 2]
        for server in [first] if first is survivor else [victim, survivor]:
            try:
                response = signed_post(server.url + "/webhooks", body, SECRET, msg_id, client=client)
            except httpx.TransportError:
                answers.setdefault(msg_id, []).append((server.name, "unreachable"))
                continue
            answers.setdefault(msg_id, []).append((server.name, (response.status_code, response.json()["status"])))
            with lock:
                acked[server.name] += response.status_code == 200
            return

    def sender(jobs: range) -> None:
        with httpx.Client(timeout=10.0) as client:
            for n in jobs:
                deliver(client, n)

    with ThreadPoolExecutor(8) as pool:
        senders = [pool.submit(sender, range(i, count, 8)) for i in range(8)]
        wait_until(lambda: acked.total() >= count // 3, what="a third of the events to be acknowledged")
        victim.kill()
        killed_at = time.time()
        for future in senders:
            future.result()
    (tmp_path / "go").touch()

    # Every event acknowledged, stored once; `duplicate` only for one the victim may have stored before it died.
    ids = {f"msg_{n:04d}" for n in range(count)}
    assert answers.keys() == ids
    for tried in answers.values():
        *failed, (_, answer) = tried
        assert failed == [(victim.name, "unreachable")] * len(failed), tried
        assert answer == (200, "stored") or (failed and answer == (200, "duplicate")), tried
    assert sorted(pg_query(postgres_url, "SELECT id, count(*) FROM events GROUP BY id")) == sorted(
        (event_id, 1) for event_id in ids | {"blk_a", "blk_b"}
    )
    rows = all_succeeded(postgres_url, 2 * count + 2)
    assert {owner for _, _, owner in rows.values()} == {None}
    assert pg_query(postgres_url, "SELECT DISTINCT status FROM events") == [("handled",)]

    # Every run ended in one try that succeeded; a run with earlier tries had them in the killed instance,
    # and the survivor took it over after the kill; no two tries of a run overlapped.
    history = RunHistory(read_log(log_path))
    assert history.tries.keys() == rows.keys()
    assert history.overlaps(killed_at=killed_at) == []
    taken_over = 0
    for key, (_, attempts, _) in rows.items():
        *earlier, last = history.tries[key]
        assert (last.attempt, last.outcome) == (attempts, "ok"), (key, history.tries[key])
        assert [t.attempt for t in history.tries[key]] == sorted({t.attempt for t in history.tries[key]})
        assert all(t.pid == pid(victim) and t.start < killed_at for t in earlier), (key, history.tries[key])
        if attempts > 1:
            taken_over += 1
            assert last.pid == pid(survivor) and last.start >= killed_at, (key, history.tries[key])
        else:
            assert earlier == [], (key, history.tries[key])
    blocked = history.tries["blk_b", "everything"]
    assert [(t.attempt, t.pid, t.outcome) for t in blocked] == [(1, pid(victim), None), (2, pid(survivor), "ok")]
    # SKIP LOCKED claims spread the work: both instances ran handlers of the load.
    load_tries = [t for (event_id, _), run in history.tries.items() if event_id.startswith("msg_") for t in run]
    by_instance = Counter({pid(a): "a", pid(b): "b"}[t.pid] for t in load_tries if t.outcome == "ok")
    assert set(by_instance) == {"a", "b"}
    ended_twice = sum(1 for run in history.tries.values() if sum(t.outcome == "ok" for t in run) > 1)
    # Seen with -s: how the work was shared, and what the kill cost.
    print(f"\nkilled {victim.name}; tries that succeeded by instance {dict(by_instance)}; acknowledged {dict(acked)}")
    print(f"runs taken over after the kill: {taken_over}; runs whose handler succeeded twice: {ended_twice}")


def test_one_event_sent_to_both_instances_at_once_is_stored_once_and_handled_once(
    postgres_url: str, serve: Serve, tmp_path: Path
) -> None:
    log_path = install_recording_app(tmp_path)
    a = start(serve, postgres_url, name="a")
    b = start(serve, postgres_url, name="b")
    count = 60
    body = envelope("customer.created")  # one run each: everything
    # Both deliveries of an id side by side in the queue, so that they race (a sender's retry to another instance).
    jobs = [(server, f"msg_{n:03d}") for n in range(count) for server in (a, b)]

    def deliver(job: tuple[ServerProcess, str]) -> tuple[str, int, str]:
        server, msg_id = job
        response = signed_post(server.url + "/webhooks", body, SECRET, msg_id)
        return msg_id, response.status_code, response.json()["status"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, jobs))
    by_id: dict[str, list[tuple[int, str]]] = {}
    for msg_id, status, answer in answers:
        by_id.setdefault(msg_id, []).append((status, answer))
    assert {msg_id: sorted(got) for msg_id, got in by_id.items()} == {
        f"msg_{n:03d}": [(200, "duplicate"), (200, "stored")] for n in range(count)
    }
    assert sorted(pg_query(postgres_url, "SELECT id, count(*) FROM events GROUP BY id")) == [
        (f"msg_{n:03d}", 1) for n in range(count)
    ]
    rows = all_succeeded(postgres_url, count)
    assert {attempts for _, attempts, _ in rows.values()} == {1}
    starts = Counter(line["event"] for line in read_log(log_path) if line["phase"] == "start")
    assert starts == {f"msg_{n:03d}": 1 for n in range(count)}


# -- the stream through either instance, with a writer stalled before its commit -----------------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_the_stream_of_either_instance_waits_for_a_stalled_writer_and_skips_nothing(
    postgres_url: str, serve: Serve, outcome: str
) -> None:
    options = ("--db", postgres_url, "--secret", SECRET, "--stream-token", STREAM_TOKEN)
    a, b = serve(*options, name="a"), serve(*options, name="b")
    body = envelope("refund.created")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client, AsyncExitStack() as stack:

            async def post(server: ServerProcess, n: int) -> None:
                response = await async_post(client, server.url + "/webhooks", body, SECRET, f"msg_{n}")
                assert (response.status_code, response.json()) == (200, {"id": f"msg_{n}", "status": "stored"})

            async def tap(server: ServerProcess, since: int | None = None) -> StreamTap:
                return await stack.enter_async_context(StreamTap(client, server.url, since=since))

            await post(a, 1)
            await post(b, 2)
            early = [await tap(a, since=0), await tap(b, since=0)]
            for stream in early:
                await stream.wait_for_seq(2)

            stalled = StalledWriter(postgres_url)
            stack.callback(stalled.close)
            assert stalled.insert("msg_3", "refund.created", body) == 3
            for n in (4, 5, 6, 7):  # committed while seq 3 is not: out of seq order
                await post((a, b)[n % 2], n)
            committed = pg_query(postgres_url, "SELECT seq FROM events ORDER BY seq")
            assert committed == [(1,), (2,), (4,), (5,), (6,), (7,)]
            # A stream opened now starts at the live end, which is before the stalled seq, on either instance.
            live = [await tap(a), await tap(b)]
            for stream in live:
                assert await stream.first_frame() == {"id": "2", "event": "cursor", "data": {"seq": 2}}
            # Longer than a stream's poll (1 s): nothing after seq 2 goes out while seq 3 may still appear.
            await asyncio.sleep(1.5)
            assert [stream.event_seqs() for stream in early + live] == [[1, 2], [1, 2], [], []]

            if outcome == "commit":
                stalled.commit()
            else:
                stalled.rollback()
            await post(b, 8)  # one more after the hole is settled: once it arrives, everything before it has
            for stream in early + live:
                await stream.wait_for_seq(8)
            after = [(seq, f"msg_{seq}") for seq in ([3, 4, 5, 6, 7, 8] if outcome == "commit" else [4, 5, 6, 7, 8])]
            since_start = [(1, "msg_1"), (2, "msg_2"), *after]
            assert [stream.events() for stream in early + live] == [since_start, since_start, after, after]
            # No `gap` frame, and no `cursor` frame but the live streams' first: nothing was skipped.
            kinds = [[frame["event"] for frame in stream.frames if "event" in frame] for stream in early + live]
            events = ["montra.event"] * len(after)
            assert kinds == [["montra.event"] * 2 + events] * 2 + [["cursor", *events]] * 2

    asyncio.run(scenario())


# -- the CLI against PostgreSQL ----------------------------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"MONTRA_HOOKS_SECRETS": None, "MONTRA_HOOKS_DB": None})


def test_events_retry_replay_and_prune_work_on_a_postgres_store(
    postgres_url: str, serve: Serve, tmp_path: Path
) -> None:
    log_path = install_recording_app(tmp_path)
    server = start(serve, postgres_url, "--backoff", "0.02", name="receiver")
    url = server.url + "/webhooks"
    # The banner's next command names this store, quoted so that a shell gives back the exact URL.
    banner = next(line for line in server.output().splitlines() if line.startswith("Next, in another terminal:"))
    assert shlex.split(banner.partition(" && ")[2])[1:] == ["events", "list", "--db", postgres_url]

    (tmp_path / "refuse").touch()
    refused = {"everything": {"no_retry_while": "refuse"}}
    bodies = {f"msg_{n}": envelope("discount.created", n=n, plan=refused) for n in range(3)}
    bodies["msg_ok"] = envelope("customer.created")
    for msg_id, body in bodies.items():
        assert signed_post(url, body, SECRET, msg_id).json() == {"id": msg_id, "status": "stored"}
    ended = {"msg_0": "dead", "msg_1": "dead", "msg_2": "dead", "msg_ok": "succeeded"}
    wait_until(lambda: statuses(postgres_url) == ended, what="the runs to end")

    listed = invoke("events", "list", "--db", postgres_url, "--status", "dead", "--json")
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["id"] for line in listed.output.splitlines()] == ["msg_2", "msg_1", "msg_0"]
    table = invoke("events", "list", "--db", postgres_url)
    assert [line.split()[:4] for line in table.output.splitlines()] == [
        ["SEQ", "ID", "TYPE", "STATUS"],
        ["4", "msg_ok", "customer.created", "handled"],
        *(([str(n + 1), f"msg_{n}", "discount.created", "dead"]) for n in (2, 1, 0)),
    ]
    shown = invoke("events", "show", "msg_1", "--db", postgres_url)
    assert shown.output.startswith("discount.created [msg_1]  seq 2  dead\n")
    assert "\neverything: dead, 1 attempt(s)\n  Traceback (most recent call last):\n" in shown.output
    assert shown.output.endswith("NoRetry: everything refused msg_1 while refuse exists\n")
    as_json = json.loads(invoke("events", "show", "msg_1", "--db", postgres_url, "--json").output)
    assert as_json["body"].encode() == bodies["msg_1"]
    assert [(run["handler"], run["status"]) for run in as_json["runs"]] == [("everything", "dead")]
    missing = invoke("events", "show", "msg_nope", "--db", postgres_url)
    assert missing.exit_code == 1
    assert missing.output.splitlines()[-1] == (
        f"Error: No event 'msg_nope' in {postgres_url}: `montra-hooks events list` shows what is stored."
    )

    (tmp_path / "refuse").unlink()
    retried = invoke("retry", "--db", postgres_url, "--id", "msg_0", "--id", "msg_2")
    assert retried.output == "Re-queued 2 run(s); a running receiver picks them up within a second.\n"
    ended = {"msg_0": "succeeded", "msg_1": "dead", "msg_2": "succeeded", "msg_ok": "succeeded"}
    wait_until(lambda: statuses(postgres_url) == ended, what="the running receiver to take the re-queued runs")
    assert invoke("retry", "--db", postgres_url, "--status", "dead").output.startswith("Re-queued 1 run(s);")
    all_succeeded(postgres_url, 4)
    starts = Counter(line["event"] for line in read_log(log_path) if line["phase"] == "start")
    assert starts == {"msg_0": 2, "msg_1": 2, "msg_2": 2, "msg_ok": 1}

    # A replay into its own receiver: new ids, same bodies, only the rows there were when it started.
    replayed = invoke("replay", "--db", postgres_url, "--type", "discount.*", "--to", url, "--secret", SECRET, "--json")
    assert replayed.exit_code == 0, replayed.output
    *lines, summary = [json.loads(line) for line in replayed.output.splitlines()]
    assert (summary["summary"]["total"], summary["summary"]["by_answer"]) == (3, {"stored": 3})
    assert sorted(line["id"] for line in lines) == ["msg_0", "msg_1", "msg_2"]
    for line in lines:
        assert re.fullmatch(rf"{line['id']}_r[0-9a-f]{{8}}", line["replayed_as"]), line
    copies = pg_query(postgres_url, "SELECT id, headers->>'montra-replay-of', body FROM events WHERE seq > 4")
    assert sorted((copy_id, original, bytes(body)) for copy_id, original, body in copies) == sorted(
        (line["replayed_as"], line["id"], bodies[line["id"]]) for line in lines
    )
    all_succeeded(postgres_url, 7)

    # Prune: two old events (with their runs) and an old rejection go; the rest stay.
    assert signed_post(url, bodies["msg_ok"], "whsec_" + "A" * 32, "msg_forged").status_code == 401
    wait_until(lambda: pg_query(postgres_url, "SELECT count(*) FROM rejections") == [(1,)], what="the rejection")
    pg_query(postgres_url, "UPDATE events SET received_at = now() - interval '40 days' WHERE id IN ('msg_ok', 'msg_1')")
    pg_query(postgres_url, "UPDATE rejections SET received_at = now() - interval '40 days'")
    pruned = invoke("prune", "--db", postgres_url, "--older-than", "30d")
    assert (pruned.exit_code, pruned.output) == (0, "2 events, 2 handler_runs, 1 rejections deleted.\n")
    left = invoke("events", "list", "--db", postgres_url, "--json")
    assert sorted(json.loads(line)["id"] for line in left.output.splitlines()) == sorted(
        ["msg_0", "msg_2", *(line["replayed_as"] for line in lines)]
    )
    assert pg_query(postgres_url, "SELECT count(*) FROM handler_runs") == [(5,)]


def test_replay_sends_a_committed_event_while_an_unrelated_transaction_is_open(
    postgres_url: str, serve: Serve, tmp_path: Path
) -> None:
    server = serve("--db", postgres_url, "--secret", SECRET, name="receiver")
    url = server.url + "/webhooks"
    assert signed_post(url, envelope("refund.created"), SECRET, "msg_1").status_code == 200
    base = postgres_base_url()
    assert base is not None
    # The merchant's own application on the same server, in a write transaction that touches none of our tables.
    with psycopg.connect(base) as unrelated:
        unrelated.execute("SELECT pg_current_xact_id()")
        assert signed_post(url, envelope("refund.created"), SECRET, "msg_2").status_code == 200
        listed = invoke("events", "list", "--db", postgres_url, "--json")
        assert [json.loads(line)["id"] for line in listed.output.splitlines()] == ["msg_2", "msg_1"]
        replayed = invoke("replay", "--db", postgres_url, "--id", "msg_2", "--to", url, "--secret", SECRET, "--json")
        unrelated.rollback()
    assert replayed.exit_code == 0, replayed.output
    *lines, summary = [json.loads(line) for line in replayed.output.splitlines()]
    assert [(line["id"], line["answer"]) for line in lines] == [("msg_2", "stored")]
    assert summary["summary"]["by_answer"] == {"stored": 1}


def test_the_database_password_stays_out_of_serve_output(postgres_url: str, serve: Serve) -> None:
    url = with_password(postgres_url)
    server = serve("--db", url, "--secret", SECRET, name="receiver")
    assert signed_post(server.url + "/webhooks", envelope("refund.created"), SECRET, "msg_1").status_code == 200
    assert "  store:    " + url.replace(f":{PASSWORD}@", "@") in server.output()
    listed = invoke("events", "list", "--db", url, "--json")
    assert [json.loads(line)["id"] for line in listed.output.splitlines()] == ["msg_1"]
    assert PASSWORD not in server.output() + listed.output


def test_the_database_password_stays_out_of_cli_errors(postgres_url: str) -> None:
    url = with_password(postgres_url)
    asyncio.run(open_store(postgres_url).close())  # a store to look in: reading commands never create one
    missing = invoke("events", "show", "msg_nope", "--db", url)
    assert missing.exit_code == 1
    assert PASSWORD not in missing.output
    assert f"No event 'msg_nope' in {url.replace(f':{PASSWORD}@', '@')}:" in missing.output


# -- the database connection cut under load -------------------------------------------------------------------------


def test_connections_cut_mid_load_lose_no_acknowledged_event_and_the_receiver_recovers(
    postgres_url: str, serve: Serve
) -> None:
    """Every connection of the receiver's is terminated by the server while events arrive (a failover, a restart):
    requests in flight may get 503 `store_unavailable`, never a 2xx for an event that is not stored, never a 500;
    the pool reconnects and the receiver goes on."""
    # Its own application_name, so the cut ends the receiver's connections only, not those of other test runs
    # that share the database (terminating every client of it broke them).
    name = f"montra_cut_{secrets.token_hex(4)}"
    server = serve("--db", f"{postgres_url}&application_name={name}", "--secret", SECRET, name="receiver")
    url = server.url + "/webhooks"
    count = 400
    answers: dict[str, tuple[int, str]] = {}
    lock = threading.Lock()

    def sender(jobs: range) -> None:
        with httpx.Client(timeout=10.0) as client:
            for n in jobs:
                msg_id = f"msg_{n:04d}"
                response = signed_post(url, envelope("refund.created"), SECRET, msg_id, client=client)
                body = response.json()
                with lock:
                    answers[msg_id] = (response.status_code, body.get("status") or body.get("error"))

    cut = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s"
    with ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(sender, range(i, count, 4)) for i in range(4)]
        for third in (1, 2):
            wait_until(lambda third=third: len(answers) >= count * third // 3, what="events to be answered")
            assert pg_query(postgres_url, cut, (name,))[0][0] >= 1  # the pool's connections and the LISTEN one
        for future in senders:
            future.result()

    assert set(answers.values()) <= {(200, "stored"), (503, "store_unavailable")}
    acknowledged = sorted(msg_id for msg_id, answer in answers.items() if answer == (200, "stored"))
    assert len(acknowledged) >= count // 2
    stored = [event_id for (event_id,) in pg_query(postgres_url, "SELECT id FROM events ORDER BY id")]
    assert set(acknowledged) <= set(stored)  # a 503 may still have committed: the sender's retry is a duplicate
    response = signed_post(url, envelope("refund.created"), SECRET, "msg_after")
    assert (response.status_code, response.json()) == (200, {"id": "msg_after", "status": "stored"})
    assert server.running
