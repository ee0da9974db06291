"""The inspector's event page (every try, resources, previous_attributes), its replay actions, and resource pages.

Over a real app, a real SQLite file and Starlette's TestClient: handlers run inline, so each
outcome is stored before the POST that delivered the event is answered.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from support.db import query
from support.signing import signed_post

from receiver import Event, Hooks, create_app
from receiver.app import MontraApp
from receiver.inspector.changes import Change, changes
from receiver.verify import generate_signing_key

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOCAL = "http://127.0.0.1:8000"
ORIGIN = {"origin": LOCAL}

UPGRADE = {
    "type": "subscription.upgraded",
    "timestamp": "2026-11-25T17:00:00Z",
    "data": {"id": "sub_1", "customer_id": "cus_1", "plan": {"id": "pro", "amount": 4900, "interval": "month"}},
    "previous_attributes": {"plan": {"id": "basic", "amount": 1900}, "seats": 3},
}


def make_hooks() -> Hooks:
    """`billing.sync` fails the first try of each event (and every try of one whose data says `always_fail`)."""
    hooks = Hooks()
    tries: dict[str, int] = {}

    @hooks.on("subscription.*", name="billing.sync")
    async def sync(event: Event) -> None:
        tries[event.id] = tries.get(event.id, 0) + 1
        if tries[event.id] == 1 or event.data.get("always_fail"):
            raise RuntimeError(f"billing API timed out on try {tries[event.id]}")

    @hooks.on("subscription.*", "customer.*", name="crm.note")
    async def note(event: Event) -> None:
        pass

    return hooks


def make_app(tmp_path: Path, **options: Any) -> MontraApp:
    options.setdefault("secrets", [SECRET])
    return create_app(make_hooks(), db=tmp_path / "events.db", inspect_token="t" * 24, dispatch="inline", **options)


def deliver(client: TestClient, msg_id: str, envelope: dict[str, Any], secret: str = SECRET) -> int:
    return signed_post("/webhooks", json.dumps(envelope).encode(), secret, msg_id, client=client).status_code


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path), base_url=LOCAL) as client:
        assert client.get(f"/inspect/login?token={'t' * 24}", follow_redirects=False).status_code == 303
        assert deliver(client, "msg_up", UPGRADE) == 500  # inline: billing.sync's first try fails
        yield client


def rows(page: str, table_id: str) -> list[list[str]]:
    """The text of each body row's cells of the table with this id (tags stripped, whitespace collapsed)."""
    table = re.search(rf'<table [^>]*id="{table_id}".*?</table>', page, re.S)
    assert table is not None, f"no table #{table_id}"
    body = table.group().split("<tbody>", 1)[1]
    return [
        [
            " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
            for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        ]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def attempts_of(page: str, handler: str) -> list[list[str]]:
    run = re.search(rf'<article class="run [^"]*" data-handler="{re.escape(handler)}">(.*?)</article>', page, re.S)
    assert run is not None
    return rows(run.group(1).replace('<table class="attempts">', '<table class="attempts" id="t">'), "t")


def stored(tmp_path: Path) -> list[tuple[str, str | None, bytes]]:
    """(id, montra-replay-of, body) of every stored event, in arrival order."""
    found = query(tmp_path / "events.db", "SELECT id, headers, body FROM events ORDER BY seq")
    return [(id, json.loads(headers).get("montra-replay-of"), bytes(body)) for id, headers, body in found]


# -- the event page ----------------------------------------------------------------------------


def test_every_try_of_every_handler_is_in_the_timeline(client: TestClient) -> None:
    assert client.post("/inspect/events/msg_up/rerun", headers=ORIGIN).status_code == 200  # try 2 succeeds
    page = client.get("/inspect/events/msg_up").text
    tries = attempts_of(page, "billing.sync")
    assert [(row[0], row[3]) for row in tries] == [("1", "failed"), ("2", "succeeded")]
    # The error's last line, then its traceback.
    summary, _, traceback = tries[0][5].partition(" Traceback (most recent call last): ")
    assert summary == "RuntimeError: billing API timed out on try 1"
    assert traceback.endswith("RuntimeError: billing API timed out on try 1")
    assert tries[1][5] == ""
    for row in tries:
        assert re.fullmatch(r"2\d{3}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", row[1]), row  # started, to the millisecond
        assert re.fullmatch(r"\d+\.\d ms", row[2]), row
        assert re.fullmatch(r"[\w.-]+:\d+:[0-9a-f]+", row[4]), row  # the process that ran it
    # The error is collapsed: the summary shows, the traceback opens on a click.
    assert '<details class="error"><summary>RuntimeError: billing API timed out on try 1</summary>' in page
    assert [(row[0], row[3], row[5]) for row in attempts_of(page, "crm.note")] == [("1", "succeeded", "")]


def test_the_resources_it_refers_to_link_to_their_timelines(client: TestClient) -> None:
    page = client.get("/inspect/events/msg_up").text
    found = re.findall(
        r'<li><span class="muted">(\w+)</span> <a class="mono" href="([^"]+)"[^>]*>([^<]+)</a></li>', page
    )
    assert found == [
        ("customer", "/inspect/resources/cus_1", "cus_1"),
        ("subscription", "/inspect/resources/sub_1", "sub_1"),
    ]


def test_previous_attributes_are_a_before_and_after_table(client: TestClient) -> None:
    page = client.get("/inspect/events/msg_up").text
    assert rows(page, "changes") == [
        ["plan.id", '"basic"', '"pro"'],
        ["plan.amount", "1900", "4900"],
        ["plan.interval", "absent", '"month"'],
        ["seats", "3", "absent"],
    ]


def test_an_event_without_previous_attributes_has_no_change_table(client: TestClient) -> None:
    assert deliver(client, "msg_cus", {"type": "customer.created", "data": {"id": "cus_1"}}) == 200
    page = client.get("/inspect/events/msg_cus").text
    assert 'id="changes"' not in page
    assert '<textarea name="body" id="edit-body"' in page


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"previous_attributes": {"a": 1}, "data": {"a": True}}, [Change("a", "1", "true")]),
        ({"previous_attributes": {"a": {"b": 1}}, "data": {"a": None}}, [Change("a", '{"b": 1}', "null")]),
        ({"previous_attributes": {"a": {"b": 1, "c": 2}}, "data": {"a": {"b": 1, "c": 3}}}, [Change("a.c", "2", "3")]),
        ({"previous_attributes": {"a": {}}, "data": {"a": {"x": [1]}}}, [Change("a.x", None, "[1]")]),
        ({"previous_attributes": {"tags": ["x"]}, "data": {}}, [Change("tags", '["x"]', None)]),
        ({"previous_attributes": {"a": 1}, "data": "not an object"}, [Change("a", "1", None)]),
        ({"previous_attributes": {}, "data": {"a": 1}}, None),
        ({"previous_attributes": "x", "data": {}}, None),
        ({"data": {"a": 1}}, None),
        (["not", "an", "object"], None),
    ],
)
def test_changes(envelope: object, expected: list[Change] | None) -> None:
    assert changes(envelope) == expected


def test_the_edit_form_holds_the_body_pretty_printed(client: TestClient) -> None:
    page = client.get("/inspect/events/msg_up").text
    textarea = re.search(r'<textarea name="body" id="edit-body"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea is not None
    assert html.unescape(textarea.group(1)) == json.dumps(UPGRADE, indent=2)


# -- replay and edit-and-replay ----------------------------------------------------------------


def test_replay_sends_the_stored_body_under_a_new_id_and_opens_it(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/inspect/events/msg_up/replay", headers=ORIGIN, follow_redirects=False)
    assert response.status_code == 303
    new_id = response.headers["location"].rsplit("/", 1)[1]
    assert re.fullmatch(r"msg_up_r[0-9a-f]{8}", new_id)
    original_body = stored(tmp_path)[0][2]
    assert stored(tmp_path)[1:] == [(new_id, "msg_up", original_body)]  # the exact bytes
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    assert '<a href="/inspect/events/msg_up" id="replay-of">msg_up</a>' in page.text
    # A replay of that replay names the first event, with one suffix.
    again = client.post(f"/inspect/events/{new_id}/replay", headers=ORIGIN, follow_redirects=False)
    third = again.headers["location"].rsplit("/", 1)[1]
    assert re.fullmatch(r"msg_up_r[0-9a-f]{8}", third) and third != new_id
    assert stored(tmp_path)[2] == (third, "msg_up", original_body)


def test_edit_and_replay_sends_the_edited_body(client: TestClient, tmp_path: Path) -> None:
    edited = json.dumps({**UPGRADE, "data": {**UPGRADE["data"], "seats": 12}}, indent=2).replace("\n", "\r\n")
    response = client.post(
        "/inspect/events/msg_up/replay", data={"body": edited}, headers=ORIGIN, follow_redirects=False
    )
    assert response.status_code == 303
    new_id = response.headers["location"].rsplit("/", 1)[1]
    # As typed, with the browser's CRLF line ends back to LF.
    assert stored(tmp_path)[1:] == [(new_id, "msg_up", edited.replace("\r\n", "\n").encode())]
    runs = query(tmp_path / "events.db", "SELECT handler, status FROM handler_runs WHERE event_id = ?", (new_id,))
    assert sorted(runs) == [("billing.sync", "failed"), ("crm.note", "succeeded")]  # it ran like any event


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"type": "x",', "Expecting property name enclosed in double quotes at line 1, column 14"),
        ("", "Expecting value at line 1, column 1"),
        ("[" * 100_000, "nested too deep"),
    ],
)
def test_an_edit_that_is_not_json_is_400_and_sends_nothing(
    client: TestClient, tmp_path: Path, body: str, reason: str
) -> None:
    message = f"The edited body is not JSON ({reason}). Nothing was sent: fix it and submit again."
    response = client.post("/inspect/events/msg_up/replay", data={"body": body}, headers=ORIGIN)
    assert response.status_code == 400
    error = re.search(r'<p class="alert error" role="alert" id="replay-error">([^<]*)</p>', response.text)
    assert error is not None and html.unescape(error.group(1)) == message
    assert "<details open>" in response.text  # the form stays open, holding what was typed
    assert [id for id, _, _ in stored(tmp_path)] == ["msg_up"]


def test_an_edit_the_receiver_refuses_is_shown_with_its_reason(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/inspect/events/msg_up/replay", data={"body": '{"data": {}}'}, headers=ORIGIN)
    assert response.status_code == 400
    assert (
        "The receiver refused the replay (invalid_event): The body is not a Montra event: it needs a string "
        "&#34;type&#34;. Nothing was stored."
    ) in response.text
    assert [id for id, _, _ in stored(tmp_path)] == ["msg_up"]
    # Refused like any request to the webhook path, so it is in `rejections` too (with no remote address).
    assert query(tmp_path / "events.db", "SELECT reason, remote FROM rejections") == [("invalid_event", None)]


def test_an_edit_larger_than_the_small_forms_is_accepted_up_to_its_own_limit(
    client: TestClient, tmp_path: Path
) -> None:
    big = json.dumps({**UPGRADE, "data": {**UPGRADE["data"], "note": "x" * 40_000}})
    response = client.post("/inspect/events/msg_up/replay", data={"body": big}, headers=ORIGIN, follow_redirects=False)
    assert response.status_code == 303
    assert stored(tmp_path)[1][2] == big.encode()
    too_big = client.post("/inspect/events/msg_up/replay", data={"body": "x" * 7 * 1024 * 1024}, headers=ORIGIN)
    assert (too_big.status_code, too_big.json()["error"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [({}, 403, "cross_site_request"), ({"origin": "http://evil.example"}, 403, "cross_site_request")],
)
def test_replay_keeps_the_origin_check(
    client: TestClient, tmp_path: Path, headers: dict[str, str], status: int, error: str
) -> None:
    response = client.post("/inspect/events/msg_up/replay", data={"body": "{}"}, headers=headers)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert len(stored(tmp_path)) == 1


def test_replay_needs_a_session(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path), base_url=LOCAL) as client:
        assert deliver(client, "msg_up", UPGRADE) == 500
        response = client.post("/inspect/events/msg_up/replay", headers=ORIGIN)
        assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
    assert len(stored(tmp_path)) == 1


def test_replay_of_an_unknown_event_is_a_404(client: TestClient) -> None:
    response = client.post("/inspect/events/msg_nope/replay", headers=ORIGIN)
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


def test_a_receiver_with_only_a_public_key_cannot_sign_a_replay(tmp_path: Path) -> None:
    signing, public = generate_signing_key()
    with TestClient(make_app(tmp_path, secrets=[public]), base_url=LOCAL) as client:
        client.get(f"/inspect/login?token={'t' * 24}")
        assert deliver(client, "msg_up", UPGRADE, secret=signing) == 500
        response = client.post("/inspect/events/msg_up/replay", headers=ORIGIN)
        assert response.status_code == 409
        assert "only whpk_ public keys: it can verify but not sign" in response.text
    assert len(stored(tmp_path)) == 1


# -- the resource timeline ---------------------------------------------------------------------


def subscription_event(kind: str, at: str, **data: Any) -> dict[str, Any]:
    return {"type": f"subscription.{kind}", "timestamp": at, "data": {"id": "sub_9", "customer_id": "cus_9", **data}}


@pytest.fixture
def history(client: TestClient) -> TestClient:
    """sub_9's events, arriving out of order: paused (17:05) before created (17:00), then canceled (17:10)."""
    assert deliver(client, "msg_paused", subscription_event("paused", "2026-11-25T17:05:00Z")) == 500
    assert deliver(client, "msg_created", subscription_event("created", "2026-11-25T17:00:00Z")) == 500
    assert (
        deliver(client, "msg_canceled", subscription_event("canceled", "2026-11-25T17:10:00Z", always_fail=True)) == 500
    )
    assert client.post("/inspect/events/msg_created/rerun", headers=ORIGIN).status_code == 200
    assert deliver(client, "msg_cus9", {"type": "customer.updated", "data": {"id": "cus_9"}}) == 200
    return client


def test_a_resource_timeline_lists_its_events_in_the_order_they_happened(history: TestClient) -> None:
    page = history.get("/inspect/resources/sub_9")
    assert page.status_code == 200
    assert '<span class="badge">subscription</span>' in page.text
    assert rows(page.text, "timeline") == [
        [
            "3",
            "2026-11-25 17:00:00Z",
            "subscription.created",
            "msg_created",
            "handled",
            "billing.sync succeeded 2 tries crm.note succeeded",
        ],
        [
            "2",
            "2026-11-25 17:05:00Z",
            "subscription.paused",
            "msg_paused",
            "failed",
            "billing.sync failed crm.note succeeded",
        ],
        [
            "4",
            "2026-11-25 17:10:00Z",
            "subscription.canceled",
            "msg_canceled",
            "failed",
            "billing.sync failed crm.note succeeded",
        ],
    ]
    assert 'href="/inspect/events/msg_paused"' in page.text
    # A customer's timeline holds the events that name it in data.customer_id too.
    customer = history.get("/inspect/resources/cus_9").text
    assert [row[3] for row in rows(customer, "timeline")] == ["msg_created", "msg_paused", "msg_canceled", "msg_cus9"]
    assert rows(customer, "timeline")[3][5] == "crm.note succeeded"


def test_a_resource_timeline_is_paged_by_seq(history: TestClient) -> None:
    first = history.get("/inspect/resources/sub_9?limit=2").text
    assert [row[3] for row in rows(first, "timeline")] == ["msg_created", "msg_paused"]  # seqs 2 and 3, by time
    later = re.search(r'<a href="([^"]+)" id="next-page">', first)
    assert later is not None and html.unescape(later.group(1)) == "/inspect/resources/sub_9?after=3"
    second = history.get("/inspect/resources/sub_9?after=3&limit=2").text
    assert [row[3] for row in rows(second, "timeline")] == ["msg_canceled"]
    assert 'id="next-page"' not in second and '<a href="/inspect/resources/sub_9" id="first-page">' in second
    assert rows(history.get("/inspect/resources/sub_9?after=4").text, "timeline") == []


def test_an_unknown_resource_is_a_404_page(client: TestClient) -> None:
    response = client.get("/inspect/resources/sub_nope")
    assert response.status_code == 404
    assert "No stored event is about <code>sub_nope</code>." in response.text


@pytest.mark.parametrize("query_string", ["after=x", "limit=-1", "after=99999999999999999999"])
def test_a_bad_resource_page_query_is_400(client: TestClient, query_string: str) -> None:
    response = client.get(f"/inspect/resources/sub_1?{query_string}")
    assert (response.status_code, response.json()["error"]) == (400, "bad_query")


# -- on PostgreSQL ------------------------------------------------------------------------------


def test_the_event_page_replay_and_resource_timeline_on_postgres(postgres_url: str) -> None:
    app = create_app(make_hooks(), db=postgres_url, secrets=[SECRET], inspect_token="t" * 24, dispatch="inline")
    with TestClient(app, base_url=LOCAL, headers={"authorization": "Bearer " + "t" * 24}) as client:
        assert deliver(client, "msg_up", UPGRADE) == 500
        assert client.post("/inspect/events/msg_up/rerun", headers=ORIGIN).status_code == 200
        page = client.get("/inspect/events/msg_up").text
        assert [(row[0], row[3]) for row in attempts_of(page, "billing.sync")] == [("1", "failed"), ("2", "succeeded")]
        assert [row[0] for row in rows(page, "changes")] == ["plan.id", "plan.amount", "plan.interval", "seats"]
        edited = json.dumps({**UPGRADE, "timestamp": "2026-11-25T16:00:00Z"})
        response = client.post(
            "/inspect/events/msg_up/replay", data={"body": edited}, headers=ORIGIN, follow_redirects=False
        )
        assert response.status_code == 303
        new_id = response.headers["location"].rsplit("/", 1)[1]
        timeline = rows(client.get("/inspect/resources/sub_1").text, "timeline")
        # The replay says it happened an hour earlier: it comes first, though it arrived second.
        assert [(row[0], row[3], row[4]) for row in timeline] == [("2", new_id, "failed"), ("1", "msg_up", "handled")]
        assert client.get("/inspect/resources/sub_nope").status_code == 404
        nul = client.get("/inspect/resources/sub%00x")
        assert (nul.status_code, nul.json()["error"]) == (400, "bad_query")
