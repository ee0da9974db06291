"""The inspector's event list, bulk actions and rejections pages over a real app and SQLite store.

Events older than the test are stored through the Store API with their received time; the rest are
delivered signed over HTTP to the app, whose handlers run inline (outcomes are recorded before a POST
answers; --backoff of an hour keeps a failed run waiting for the re-run button).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from support.db import query
from support.postgres import pg_query
from support.signing import signed_post
from support.wait import wait_until

from receiver import Event, Hooks, NoRetry, create_app, sign
from receiver.app import MontraApp
from receiver.event import resource_refs
from receiver.inspector.listing import id_parts, short_time
from receiver.stores.protocol import Incoming, iso
from receiver.stores.sqlite.store import SQLiteStore
from receiver.verify import generate_signing_key

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "inspect-token-0d5c7be2a4"
LOCAL = "http://127.0.0.1:8000"
ORIGIN = {"origin": LOCAL}
NOW = time.time()
DAY = 86400.0
NEWEST_FIRST = ["msg_r1", "msg_s1", "msg_p2", "msg_p1", "msg_c1", "old_2", "old_1"]


@dataclass
class Outage:
    """What the handlers do: billing fails while `billing_down`, audit gives up while `audit_down`."""

    billing_down: bool = True
    audit_down: bool = True


def make_hooks(outage: Outage) -> Hooks:
    hooks = Hooks()

    @hooks.on("customer.*", name="crm.sync")
    async def sync(event: Event) -> None:
        pass

    @hooks.on("payment.failed", name="billing.charge")
    async def charge(event: Event) -> None:
        if outage.billing_down:
            raise RuntimeError("card processor unreachable")

    @hooks.on("subscription.canceled", name="audit.log")
    async def audit(event: Event) -> None:
        if outage.audit_down:
            raise NoRetry("audit log is read-only")

    return hooks


def old_event(event_id: str, event_type: str, data: dict[str, Any], *, at: float) -> Incoming:
    body = json.dumps({"type": event_type, "data": data}).encode()
    headers = {"webhook-id": event_id, "content-type": "application/json"}
    return Incoming(event_id, event_type, None, at, headers, body, refs=resource_refs(event_type, data))


def deliver(client: TestClient, event_type: str, msg_id: str, **data: object) -> int:
    body = json.dumps({"type": event_type, "data": data}).encode()
    return signed_post("/webhooks", body, SECRET, msg_id, client=client).status_code


def shown(page: str) -> list[str]:
    """The ids of the list's rows, top to bottom (each row's link holds its id in `title`)."""
    return re.findall(r'<a href="/inspect/events/[^"]*" id="id-\d+" title="([^"( ]*)', page)


def seqs(page: str) -> list[int]:
    return [int(seq) for seq in re.findall(r'<tr data-seq="(\d+)">', page)]


def counts(page: str) -> dict[str, str]:
    pills = re.findall(r'data-status="(\w+)".*?<strong>([\d,+]+)</strong>', page, flags=re.S)
    return dict(pills)


def notice(page: str) -> str | None:
    found = re.search(r'<p class="alert ok" role="status" id="notice">([^<]*)</p>', page)
    return found.group(1) if found else None


@dataclass
class Setup:
    client: TestClient
    app: MontraApp
    outage: Outage
    db: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    db = tmp_path / "events.db"

    async def older() -> None:
        store = SQLiteStore(db)
        await store.ingest(old_event("old_1", "customer.created", {"id": "cus_A"}, at=NOW - 3 * DAY))
        await store.ingest(
            old_event("old_2", "refund.created", {"id": "re_0", "customer_id": "cus_B"}, at=NOW - 2 * DAY)
        )
        await store.close()

    asyncio.run(older())
    outage = Outage()
    app = create_app(make_hooks(outage), db=db, secrets=[SECRET], inspect_token=TOKEN, dispatch="inline", backoff=3600)
    with TestClient(app, base_url=LOCAL, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        assert deliver(client, "customer.created", "msg_c1", id="cus_A") == 200
        assert deliver(client, "payment.failed", "msg_p1", id="pay_1", customer_id="cus_A") == 500
        assert deliver(client, "payment.failed", "msg_p2", id="pay_2", customer_id="cus_B") == 500
        assert deliver(client, "subscription.canceled", "msg_s1", id="sub_1", customer_id="cus_A") == 500
        assert deliver(client, "refund.created", "msg_r1", id="re_1") == 200
        yield Setup(client, app, outage, db)


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        ("", NEWEST_FIRST),
        ("handler=billing.charge", ["msg_p2", "msg_p1"]),
        ("handler=crm.sync", ["msg_c1"]),
        ("handler=nobody.here", []),
        ("ref=cus_A", ["msg_s1", "msg_p1", "msg_c1", "old_1"]),
        ("ref=cus_B", ["msg_p2", "old_2"]),
        ("ref=cus_A&status=failed", ["msg_p1"]),
        ("ref=cus_A&type=customer.*", ["msg_c1", "old_1"]),
        ("type=payment.*&ref=cus_B&handler=billing.charge&status=failed", ["msg_p2"]),
        ("since=1h", ["msg_r1", "msg_s1", "msg_p2", "msg_p1", "msg_c1"]),
        ("until=1h", ["old_2", "old_1"]),
        ("since=60h&until=1h", ["old_2"]),
        ("since=4d&until=60h", ["old_1"]),
        (f"since={iso(NOW - 2.5 * DAY)}&until={iso(NOW - DAY)}", ["old_2"]),
        (f"since={datetime.fromtimestamp(NOW - 4 * DAY, UTC).date().isoformat()}", NEWEST_FIRST),
        ("status=dead&since=1h", ["msg_s1"]),
        ("status=unhandled", ["msg_r1", "old_2", "old_1"]),
    ],
)
def test_filters_combine_and_the_json_twin_agrees(setup: Setup, query_string: str, expected: list[str]) -> None:
    page = setup.client.get(f"/inspect?{query_string}")
    assert page.status_code == 200
    assert shown(page.text) == expected
    api = setup.client.get(f"/inspect/api/events?{query_string}")
    assert [e["id"] for e in api.json()["events"]] == expected


def test_the_filters_stay_in_the_form_and_the_links(setup: Setup) -> None:
    page = setup.client.get("/inspect?ref=cus_A&since=1h&handler=billing.charge").text
    assert 'name="ref" value="cus_A"' in page
    assert 'name="since" value="1h"' in page
    assert 'name="handler" value="billing.charge"' in page
    assert '<option value="billing.charge">' in page  # the handlers this receiver knows, offered as you type
    assert 'href="/inspect/bulk/rerun?handler=billing.charge&amp;ref=cus_A&amp;since=1h"' in page
    assert 'data-api="/inspect/api/events?handler=billing.charge&amp;ref=cus_A&amp;since=1h"' in page


@pytest.mark.parametrize(
    ("query_string", "parameter", "message"),
    [
        ("since=yesterday", "since", "since: 'yesterday' is neither a time nor a duration: use e.g. 2026-11-25"),
        ("until=5 parsecs", "until", "until: '5 parsecs' is neither a time nor a duration"),
        ("since=1h&until=2h", "until", "must be later than since"),
        ("since=99999999999w", "since", "since: '99999999999w' is longer than 100 years"),
        ("ref=cus%20A", "ref", "ref must be a resource id, e.g. cus_...: at most 256 characters, no spaces."),
        ("handler=" + "h" * 300, "handler", "handler must be a handler's name (module.qualname)"),
        ("type=payment*", "type", "type: Bad event pattern"),
        ("status=lost", "status", "Unknown status 'lost'"),
        ("newer=x", "newer", "newer must be a whole number"),
        ("before=-3", "before", "before must be a whole number"),
    ],
)
def test_a_bad_filter_is_a_400_naming_its_parameter(
    setup: Setup, query_string: str, parameter: str, message: str
) -> None:
    page = setup.client.get(f"/inspect?{query_string}")
    assert page.status_code == 400
    assert f'data-parameter="{parameter}"' in page.text
    assert message.replace("'", "&#39;") in page.text
    assert shown(page.text) == []
    for path in ("/inspect/api/events", "/inspect/api/counts", "/inspect/bulk/rerun"):
        if parameter == "newer" or (parameter == "before" and path != "/inspect/api/events"):
            continue  # the page's own (the JSON twin pages with before and after)
        api = setup.client.get(f"{path}?{query_string}")
        assert (api.status_code, api.json()["error"], api.json()["parameter"]) == (400, "bad_filter", parameter)
        assert message in api.json()["message"]


# -- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        ("", {"all": 7, "dead": 1, "failed": 2, "pending": 0, "handled": 1, "unhandled": 3}),
        ("ref=cus_A", {"all": 4, "dead": 1, "failed": 1, "pending": 0, "handled": 1, "unhandled": 1}),
        # The status filter is left out of the counts, so each pill says what choosing it would show.
        ("ref=cus_A&status=failed", {"all": 4, "dead": 1, "failed": 1, "pending": 0, "handled": 1, "unhandled": 1}),
        ("since=1h&type=payment.*", {"all": 2, "dead": 0, "failed": 2, "pending": 0, "handled": 0, "unhandled": 0}),
    ],
)
def test_counts_by_status_follow_the_filter(setup: Setup, query_string: str, expected: dict[str, int]) -> None:
    assert setup.client.get(f"/inspect/api/counts?{query_string}").json() == {"counts": expected, "cap": 1000}
    assert counts(setup.client.get(f"/inspect?{query_string}").text) == {k: str(v) for k, v in expected.items()}


def test_a_count_pill_links_to_its_status(setup: Setup) -> None:
    page = setup.client.get("/inspect?ref=cus_A&status=failed").text
    assert 'data-status="all" href="/inspect?ref=cus_A"' in page
    assert 'class="count current" data-status="failed" href="/inspect?status=failed&amp;ref=cus_A"' in page


# -- bulk re-run -------------------------------------------------------------------------------

RUNS = "SELECT event_id, handler, status, attempts FROM handler_runs ORDER BY event_id, handler"


def confirm(setup: Setup, path: str) -> tuple[str, dict[str, str]]:
    """The confirmation's question and the form it posts."""
    page = setup.client.get(path)
    assert page.status_code == 200
    question = re.search(r'<h1 id="bulk-question">\s*(.*?)\s*</h1>', page.text, flags=re.S)
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page.text))
    return (question.group(1).replace("&#39;", "'") if question else ""), fields


def test_bulk_rerun_confirms_then_requeues_the_failed_and_dead_runs(setup: Setup) -> None:
    question, form = confirm(setup, "/inspect/bulk/rerun")
    assert (question, form) == ("Re-run 3 events' failed runs?", {"max_seq": "7"})
    before = query(setup.db, RUNS)
    assert [r for r in before if r[2] != "succeeded"] == [
        ("msg_p1", "billing.charge", "failed", 1),
        ("msg_p2", "billing.charge", "failed", 1),
        ("msg_s1", "audit.log", "dead", 1),
    ]
    # The confirmation did nothing; the POST does, once the handlers work again.
    setup.outage.billing_down = setup.outage.audit_down = False
    response = setup.client.post("/inspect/bulk/rerun", data=form, headers=ORIGIN, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/inspect?requeued=3&events=3")
    assert query(setup.db, RUNS) == [
        ("msg_c1", "crm.sync", "succeeded", 1),
        ("msg_p1", "billing.charge", "succeeded", 2),
        ("msg_p2", "billing.charge", "succeeded", 2),
        ("msg_s1", "audit.log", "succeeded", 1),  # a dead run starts again from its first attempt
    ]
    page = setup.client.get(response.headers["location"]).text
    assert notice(page) == (
        "Re-queued 3 run(s) of 3 event(s): the dispatcher runs them now, and their statuses change here as they finish."
    )
    assert counts(page)["failed"] == "0" and counts(page)["handled"] == "4"


def test_bulk_rerun_of_one_handler_touches_only_its_runs(setup: Setup) -> None:
    setup.outage.billing_down = setup.outage.audit_down = False
    question, form = confirm(setup, "/inspect/bulk/rerun?handler=billing.charge&ref=cus_A")
    assert (question, form) == (
        "Re-run 1 event's failed runs?",
        {"handler": "billing.charge", "ref": "cus_A", "max_seq": "7"},
    )
    response = setup.client.post("/inspect/bulk/rerun", data=form, headers=ORIGIN, follow_redirects=False)
    assert response.headers["location"] == "/inspect?handler=billing.charge&ref=cus_A&requeued=1&events=1"
    assert [r for r in query(setup.db, RUNS) if r[2] != "succeeded"] == [
        ("msg_p2", "billing.charge", "failed", 1),
        ("msg_s1", "audit.log", "dead", 1),
    ]


def test_bulk_rerun_touches_only_what_the_confirmation_counted(setup: Setup) -> None:
    _, form = confirm(setup, "/inspect/bulk/rerun?type=payment.*")
    assert deliver(setup.client, "payment.failed", "msg_p3", id="pay_3") == 500  # arrives after the confirmation
    setup.outage.billing_down = False
    response = setup.client.post("/inspect/bulk/rerun", data=form, headers=ORIGIN, follow_redirects=False)
    assert response.headers["location"] == "/inspect?type=payment.%2A&requeued=2&events=2"
    assert query(setup.db, "SELECT status FROM handler_runs WHERE event_id = 'msg_p3'") == [("failed",)]


@pytest.mark.parametrize(
    ("path", "heading"),
    [
        ("/inspect/bulk/rerun?status=handled", "Nothing to re-run"),
        ("/inspect/bulk/rerun?type=refund.*", "Nothing to re-run"),
        ("/inspect/bulk/replay?ref=cus_Z", "Nothing to replay"),
    ],
)
def test_a_bulk_action_on_nothing_says_so_and_offers_no_button(setup: Setup, path: str, heading: str) -> None:
    page = setup.client.get(path).text
    assert f"<h1>{heading}</h1>" in page
    assert 'id="bulk-submit"' not in page


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 403, "cross_site_request"),  # no Origin
        ({"origin": "http://evil.test"}, 403, "cross_site_request"),
        ({"origin": LOCAL, "sec-fetch-site": "cross-site"}, 403, "cross_site_request"),
        ({"origin": LOCAL, "authorization": "Bearer not-the-inspect-token"}, 401, "unauthorized"),
        ({"origin": LOCAL, "authorization": ""}, 401, "unauthorized"),  # no token, no session
    ],
)
@pytest.mark.parametrize("action", ["rerun", "replay"])
def test_a_bulk_post_without_origin_or_token_is_refused(
    setup: Setup, action: str, headers: dict[str, str], status: int, error: str
) -> None:
    setup.outage.billing_down = False
    before = (query(setup.db, RUNS), query(setup.db, "SELECT count(*) FROM events"))
    response = setup.client.post(f"/inspect/bulk/{action}", data={"max_seq": "7"}, headers=headers)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert (query(setup.db, RUNS), query(setup.db, "SELECT count(*) FROM events")) == before


@pytest.mark.parametrize(
    ("form", "parameter"),
    [({}, "max_seq"), ({"max_seq": "x"}, "max_seq"), ({"max_seq": "7", "since": "soon"}, "since")],
)
def test_a_bad_bulk_form_is_a_400_naming_the_field(setup: Setup, form: dict[str, str], parameter: str) -> None:
    response = setup.client.post("/inspect/bulk/rerun", data=form, headers=ORIGIN)
    assert (response.status_code, response.json()["error"], response.json()["parameter"]) == (
        400,
        "bad_filter",
        parameter,
    )


def test_an_unknown_bulk_action_is_a_404(setup: Setup) -> None:
    assert setup.client.get("/inspect/bulk/delete").status_code == 404
    response = setup.client.post("/inspect/bulk/delete", data={"max_seq": "7"}, headers=ORIGIN)
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


# -- bulk replay -------------------------------------------------------------------------------

EVENTS = "SELECT seq, id, type, status, body, json_extract(headers, '$.\"montra-replay-of\"') FROM events"


def test_bulk_replay_sends_each_event_again_under_a_new_id(setup: Setup) -> None:
    question, form = confirm(setup, "/inspect/bulk/replay?type=payment.*")
    assert (question, form) == ("Replay 2 events?", {"type": "payment.*", "max_seq": "7"})
    setup.outage.billing_down = False
    response = setup.client.post("/inspect/bulk/replay", data=form, headers=ORIGIN, follow_redirects=False)
    assert response.headers["location"] == "/inspect?type=payment.%2A&replayed=2&refused=0"
    originals = {row[1]: row for row in query(setup.db, EVENTS + " WHERE seq <= 7")}
    replays = query(setup.db, EVENTS + " WHERE seq > 7 ORDER BY seq")
    assert [(seq, re.sub(r"_r[0-9a-f]{8}$", "_r*", i), t, s, of) for seq, i, t, s, _, of in replays] == [
        (8, "msg_p1_r*", "payment.failed", "handled", "msg_p1"),
        (9, "msg_p2_r*", "payment.failed", "handled", "msg_p2"),
    ]
    assert [body for *_, body, _ in replays] == [originals["msg_p1"][4], originals["msg_p2"][4]]  # the exact bytes
    assert query(setup.db, "SELECT status FROM events WHERE id IN ('msg_p1', 'msg_p2')") == [("failed",), ("failed",)]
    page = setup.client.get(response.headers["location"]).text
    assert notice(page) == "Replayed 2 event(s) under new ids: they are the newest events."
    assert [re.sub(r"_r[0-9a-f]{8}$", "_r*", i) for i in shown(page)] == ["msg_p2_r*", "msg_p1_r*", "msg_p2", "msg_p1"]
    # The row shows the end of a replay's id (its suffix) whole, and names the original on hover.
    replay_id = replays[0][1]
    assert f'<span class="id-tail">{replay_id[-10:]}</span>' in page
    assert f'title="{replay_id} (replay of msg_p1)"' in page


def test_replaying_a_replay_keeps_one_suffix(setup: Setup) -> None:
    _, form = confirm(setup, "/inspect/bulk/replay?id=msg_r1")
    setup.client.post("/inspect/bulk/replay", data=form, headers=ORIGIN)
    [(first,)] = query(setup.db, "SELECT id FROM events WHERE seq = 8")
    _, form = confirm(setup, f"/inspect/bulk/replay?id={first}")
    response = setup.client.post("/inspect/bulk/replay", data=form, headers=ORIGIN, follow_redirects=False)
    assert response.headers["location"].endswith("&replayed=1&refused=0")
    [(second, of)] = query(
        setup.db, "SELECT id, json_extract(headers, '$.\"montra-replay-of\"') FROM events WHERE seq = 9"
    )
    assert re.fullmatch(r"msg_r1_r[0-9a-f]{8}", second) and second != first
    assert of == "msg_r1"


def test_replay_needs_a_secret_that_can_sign(tmp_path: Path) -> None:
    signing_key, public_key = generate_signing_key()
    app = create_app(Hooks(), db=tmp_path / "events.db", secrets=[public_key], inspect_token=TOKEN)
    with TestClient(app, base_url=LOCAL, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        body = b'{"type": "customer.created"}'
        headers = {"content-type": "application/json", **sign(body, secret=signing_key, msg_id="msg_1")}
        assert client.post("/webhooks", content=body, headers=headers).status_code == 200
        response = client.post("/inspect/bulk/replay", data={"max_seq": "1"}, headers=ORIGIN)
    assert (response.status_code, response.json()["error"]) == (409, "cannot_sign")
    assert "This receiver has only whpk_ public keys" in response.json()["message"]
    assert query(tmp_path / "events.db", "SELECT id FROM events") == [("msg_1",)]


# -- many events: counts capped, pages by seq, bulk size capped -----------------------------------


@pytest.fixture
def many(tmp_path: Path) -> Iterator[TestClient]:
    db = tmp_path / "events.db"

    async def fill() -> None:
        store = SQLiteStore(db)
        # Concurrent ingests share group commits: 1,001 events in a few transactions.
        at = NOW - 3600
        types = ["meter.created", *["usage.reported"] * 1000]  # exactly the cap of one type
        await asyncio.gather(
            *(store.ingest(old_event(f"evt_{n:04d}", t, {"id": f"u_{n}"}, at=at + n)) for n, t in enumerate(types))
        )
        await store.close()

    asyncio.run(fill())
    app = create_app(Hooks(), db=db, secrets=[SECRET], inspect_token=TOKEN)
    with TestClient(app, base_url=LOCAL, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_counts_stop_at_the_cap(many: TestClient) -> None:
    assert many.get("/inspect/api/counts").json()["counts"] == {
        "all": 1001,
        "dead": 0,
        "failed": 0,
        "pending": 0,
        "handled": 0,
        "unhandled": 1001,
    }
    assert counts(many.get("/inspect").text) == {
        "all": "1,000+",
        "dead": "0",
        "failed": "0",
        "pending": "0",
        "handled": "0",
        "unhandled": "1,000+",
    }
    assert counts(many.get("/inspect?type=usage.reported").text)["all"] == "1,000"


def test_pages_go_older_and_newer_by_seq(many: TestClient) -> None:
    first = many.get("/inspect").text
    assert seqs(first) == list(range(1001, 901, -1))
    assert 'id="page-newer"' not in first and 'id="page-newest"' not in first
    older = re.search(r'<a href="/inspect\?([^"]*)" id="page-older">', first)
    assert older is not None and older.group(1) == "before=902"
    second = many.get("/inspect?before=902").text
    assert seqs(second) == list(range(901, 801, -1))
    assert "data-api=" not in second  # only the newest page follows new events
    assert 'href="/inspect?newer=901" id="page-newer"' in second
    assert 'href="/inspect?before=802" id="page-older"' in second
    assert seqs(many.get("/inspect?newer=901").text) == list(range(1001, 901, -1))
    assert seqs(many.get("/inspect?newer=850").text) == list(range(950, 850, -1))
    last = many.get("/inspect?before=2").text
    assert seqs(last) == [1]
    assert 'id="page-older"' not in last and 'href="/inspect?newer=1" id="page-newer"' in last
    # Filters ride along in the page links.
    filtered = many.get("/inspect?type=usage.*&before=500").text
    assert 'href="/inspect?type=usage.%2A&amp;before=400" id="page-older"' in filtered


def test_a_bulk_action_past_the_cap_is_refused_with_the_cli_to_use(many: TestClient) -> None:
    page = many.get("/inspect/bulk/replay?since=2h").text
    assert "<h1>More than 1,000 events</h1>" in page
    assert 'id="bulk-submit"' not in page
    assert re.search(r'<code id="cli-command">\S*montra-hooks replay --since 2h --to URL</code>', page)
    response = many.post("/inspect/bulk/replay", data={"since": "2h", "max_seq": "1001"}, headers=ORIGIN)
    assert (response.status_code, response.json()["error"]) == (400, "too_many_events")
    assert (
        "Replay 1,000 events?" in many.get("/inspect/bulk/replay?type=usage.reported").text
    )  # the cap itself is allowed


# -- rejections --------------------------------------------------------------------------------


@pytest.fixture
def refused(setup: Setup) -> Setup:
    client = setup.client
    body = b'{"type": "customer.created"}'
    wrong = sign(body, secret="whsec_" + "A" * 32, msg_id="msg_wrong")
    stale = sign(body, secret=SECRET, msg_id="msg_stale", timestamp=int(time.time()) - 600)
    json_type = {"content-type": "application/json"}
    assert client.post("/webhooks", content=body, headers={**json_type, **wrong}).status_code == 401
    assert client.post("/webhooks", content=body, headers={**json_type, **stale}).status_code == 401
    no_signature = {**json_type, "webhook-id": "msg_bare", "authorization": "Bearer sk_live_hidden"}
    assert client.post("/webhooks", content=b"<xml/>" * 1000, headers=no_signature).status_code == 400
    # Refusals are written after the answer, in the next group commit.
    count = "SELECT count(*) FROM rejections"
    wait_until(lambda: query(setup.db, count) == [(3,)], timeout=10, what="the three refusals stored")
    return setup


def test_the_rejections_page_explains_each_refusal(refused: Setup) -> None:
    page = refused.client.get("/inspect/rejections").text
    rows = re.findall(
        r'<tr data-id="(\d+)">.*?class="badge reason"[^>]*>(\w+)</a>.*?<td class="why"[^>]*><a [^>]*>([^<]*)</a>',
        page,
        flags=re.S,
    )
    # The stale signature was made a moment before it arrived: 600 s, or 601 if a second turned meanwhile.
    rows = [(n, reason, why.replace("601 s old", "600 s old")) for n, reason, why in rows]
    assert rows == [
        ("3", "missing_headers", "header webhook-timestamp and webhook-signature missing"),
        ("2", "timestamp_out_of_tolerance", "timestamp 600 s old, tolerance 300 s"),
        ("1", "invalid_signature", "not signed with the one configured secret (1 signature given)"),
    ]
    only = refused.client.get("/inspect/rejections?reason=invalid_signature").text
    assert re.findall(r'<tr data-id="(\d+)">', only) == ["1"]
    api = refused.client.get("/inspect/api/rejections?reason=timestamp_out_of_tolerance").json()["rejections"]
    assert [(r["id"], r["explanation"].replace("601 s", "600 s")) for r in api] == [
        (2, "timestamp 600 s old, tolerance 300 s")
    ]
    events = refused.client.get("/inspect").text
    assert '<a class="navlink" href="/inspect/rejections">Rejections</a>' in events


def test_a_rejection_shows_its_headers_redacted_and_its_body_cut(refused: Setup) -> None:
    page = refused.client.get("/inspect/rejections/3").text
    assert '<p class="why-big" id="rejection-why">header webhook-timestamp and webhook-signature missing</p>' in page
    assert '<tr><th class="mono">authorization</th><td class="mono muted">[redacted]</td></tr>' in page
    assert "sk_live_hidden" not in page
    assert "4096 bytes kept, the first 2000 characters shown" in page
    assert '<pre class="code" id="rejection-body">' + "&lt;xml/&gt;" * 333 + "&lt;x…</pre>" in page
    api = refused.client.get("/inspect/api/rejections/3").json()
    assert (api["reason"], api["headers"]["authorization"], len(api["body"])) == (
        "missing_headers",
        "[redacted]",
        4096,
    )


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/inspect/api/rejections/99", 404, "not_found"),
        ("/inspect/api/rejections/x", 400, "bad_filter"),
        ("/inspect/api/rejections?reason=DROP%20TABLE", 400, "bad_filter"),
        ("/inspect/api/rejections?reason=no_such_reason", 400, "bad_filter"),
    ],
)
def test_a_missing_or_bad_rejection_is_answered(refused: Setup, path: str, status: int, error: str) -> None:
    response = refused.client.get(path)
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_the_reason_filter_names_the_codes_it_takes(refused: Setup) -> None:
    response = refused.client.get("/inspect/api/rejections?reason=invalid_sig")
    assert (response.status_code, response.json()["parameter"]) == (400, "reason")
    assert response.json()["message"] == (
        "reason must be one of missing_headers, bad_timestamp, timestamp_out_of_tolerance, invalid_signature, "
        "invalid_json, invalid_event, body_too_large, unsupported_media_type; got 'invalid_sig'."
    )


def test_a_missing_rejection_is_a_404_page(refused: Setup) -> None:
    page = refused.client.get("/inspect/rejections/99")
    assert page.status_code == 404
    assert "No rejection <code>99</code> is kept here" in page.text
    bad = refused.client.get("/inspect/rejections?reason=Bad!")
    assert bad.status_code == 400 and 'data-parameter="reason"' in bad.text


# -- PostgreSQL --------------------------------------------------------------------------------


def test_filters_counts_bulk_and_rejections_on_postgres(postgres_url: str) -> None:
    outage = Outage()
    app = create_app(
        make_hooks(outage), db=postgres_url, secrets=[SECRET], inspect_token=TOKEN, dispatch="inline", backoff=3600
    )
    with TestClient(app, base_url=LOCAL, headers={"authorization": f"Bearer {TOKEN}"}) as client:
        assert deliver(client, "customer.created", "msg_c1", id="cus_A") == 200
        assert deliver(client, "payment.failed", "msg_p1", id="pay_1", customer_id="cus_A") == 500
        assert deliver(client, "payment.failed", "msg_p2", id="pay_2", customer_id="cus_B") == 500
        bad = sign(b'{"type": "x.y"}', secret="whsec_" + "A" * 32, msg_id="msg_wrong")
        assert client.post("/webhooks", content=b'{"type": "x.y"}', headers=bad).status_code == 401

        assert shown(client.get("/inspect?ref=cus_A&since=1h").text) == ["msg_p1", "msg_c1"]
        assert shown(client.get("/inspect?handler=billing.charge&until=2099-01-01").text) == ["msg_p2", "msg_p1"]
        assert client.get("/inspect/api/counts?since=1h").json()["counts"] == {
            "all": 3, "dead": 0, "failed": 2, "pending": 0, "handled": 1, "unhandled": 0
        }  # fmt: skip

        question, form = confirm(Setup(client, app, outage, Path()), "/inspect/bulk/rerun?ref=cus_B")
        assert (question, form) == ("Re-run 1 event's failed runs?", {"ref": "cus_B", "max_seq": "3"})
        outage.billing_down = False
        response = client.post("/inspect/bulk/rerun", data=form, headers=ORIGIN, follow_redirects=False)
        assert response.headers["location"] == "/inspect?ref=cus_B&requeued=1&events=1"
        response = client.post("/inspect/bulk/replay", data={"id": "msg_p1", "max_seq": "3"}, headers=ORIGIN)
        assert response.status_code == 200  # the redirect, followed

        wait_until(
            lambda: pg_query(postgres_url, "SELECT count(*) FROM rejections") == [(1,)], timeout=10, what="the refusal"
        )
        page = client.get("/inspect/rejections").text
        assert "not signed with the one configured secret (1 signature given)" in page
    events = "SELECT id, status, headers->>'montra-replay-of' FROM events ORDER BY seq"
    rows = [(re.sub(r"_r[0-9a-f]{8}$", "_r*", i), s, of) for i, s, of in pg_query(postgres_url, events)]
    assert rows == [
        ("msg_c1", "handled", None),
        ("msg_p1", "failed", None),
        ("msg_p2", "handled", None),
        ("msg_p1_r*", "handled", "msg_p1"),
    ]


# -- how a row reads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "shown_as"),
    [
        (datetime(2026, 12, 4, 12, 4, 5, 999, tzinfo=UTC), "12:04:05"),
        (datetime(2026, 12, 3, 23, 59, 59, tzinfo=UTC), "Dec 3 23:59"),
        (datetime(2026, 1, 9, 7, 0, tzinfo=UTC), "Jan 9 07:00"),
        (datetime(2025, 12, 4, 12, 0, tzinfo=UTC), "Dec 4 2025"),
    ],
)
def test_times_are_short(moment: datetime, shown_as: str) -> None:
    assert short_time(moment, now=datetime(2026, 12, 4, 18, 0, tzinfo=UTC)) == shown_as


@pytest.mark.parametrize(
    ("event_id", "parts"),
    [
        ("msg_1", ("msg_1", "")),
        ("evt_2Bc9XQ01K7mZ4pT8wQ3aHk2", ("evt_2Bc9XQ01K7mZ4pT8wQ3aHk2", "")),  # 27 characters: whole
        ("evt_2Bc9XQ01K7mZ4pT8wQ3aHk29dL", ("evt_2Bc9XQ01K7mZ4pT8wQ3a", "Hk29dL")),  # longer: its end kept in view
        ("msg_2Bc9XQ01_r1a2b3c4d", ("msg_2Bc9XQ01", "_r1a2b3c4d")),  # a replay: its suffix kept in view
        ("msg_2Bc9XQ01_rNOTHEX00", ("msg_2Bc9XQ01_rNOTHEX00", "")),
    ],
)
def test_an_id_keeps_its_end_in_view(event_id: str, parts: tuple[str, str]) -> None:
    assert id_parts(event_id) == parts
