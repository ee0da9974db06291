"""The inspector over a real app and store: who gets in, what the pages show, and the re-run action."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from support.db import query
from support.signing import signed_post
from support.wait import wait_until

from receiver import Event, Hooks, create_app
from receiver.app import MontraApp
from receiver.inspector.access import SESSION_COOKIE, InspectorAccess, is_loopback_host
from receiver.inspector.pages import highlight_json
from receiver.loopback import is_loopback_address
from replay.cli import cli

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "inspect-token-5f0c2a9e61"
LOCAL = "http://127.0.0.1:8000"
ORIGIN = {"origin": LOCAL}
LOOPBACK_CLIENT = ("127.0.0.1", 50000)


def make_hooks(calls: dict[str, int]) -> Hooks:
    """`ok` takes customers; `flaky` fails its first try of each event and succeeds after."""
    hooks = Hooks()

    @hooks.on("customer.*", name="ok")
    async def ok(event: Event) -> None:
        calls["ok"] = calls.get("ok", 0) + 1

    @hooks.on("payment.failed", name="flaky")
    async def flaky(event: Event) -> None:
        calls[event.id] = calls.get(event.id, 0) + 1
        if calls[event.id] == 1:
            raise RuntimeError("card processor unreachable")

    return hooks


def make_app(tmp_path: Path, **options: object) -> tuple[MontraApp, dict[str, int]]:
    calls: dict[str, int] = {}
    options.setdefault("dispatch", "inline")  # outcomes are recorded before the POST answers
    app = create_app(make_hooks(calls), db=tmp_path / "events.db", secrets=[SECRET], **options)  # type: ignore[arg-type]
    return app, calls


def local_client(app: object, **options: object) -> TestClient:
    return TestClient(app, base_url=LOCAL, client=LOOPBACK_CLIENT, **options)  # type: ignore[arg-type]


def log_in(client: TestClient, app: MontraApp) -> None:
    """Follow the login link `serve` prints (`/inspect/login?token=...`): the client keeps the session cookie."""
    assert app.inspector is not None
    response = client.get(app.inspector.login_path, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/inspect")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `inspect=True` without a token creates .montra-hooks/inspect-token in the working directory.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_INSPECT_TOKEN", raising=False)


def deliver(client: TestClient, event_type: str, msg_id: str, **extra: object) -> int:
    body = json.dumps({"type": event_type, "data": {"id": "obj_1", **extra}}).encode()
    return signed_post("/webhooks", body, SECRET, msg_id, client=client).status_code


def error_of(response: object) -> str:
    return response.json()["error"]  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, int]]]:
    app, calls = make_app(tmp_path, inspect=True)
    with local_client(app) as client:
        log_in(client, app)
        assert deliver(client, "customer.created", "msg_cus") == 200
        assert deliver(client, "payment.failed", "msg_pay") == 500  # inline: flaky's first try fails
        assert deliver(client, "refund.created", "msg_ref") == 200  # no handler: unhandled
        yield client, calls


# -- off unless asked for ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/inspect", "/inspect/events/msg_1", "/inspect/api/events", "/inspect/login"])
def test_the_inspector_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.delenv("MONTRA_HOOKS_INSPECT_TOKEN", raising=False)
    app, _ = make_app(tmp_path)
    with local_client(app) as client:
        response = client.get(path)
    assert (response.status_code, error_of(response)) == (404, "not_found")


def test_a_token_in_the_environment_turns_it_on_behind_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONTRA_HOOKS_INSPECT_TOKEN", TOKEN)
    app, _ = make_app(tmp_path)
    with local_client(app) as client:
        response = client.get("/inspect", follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/inspect/login?next=%2Finspect")
        assert client.get("/inspect", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


# -- without an explicit token: a created one, and this machine only ------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_loopback_hosts_get_in(loopback: tuple[TestClient, dict[str, int]], host: str) -> None:
    client, _ = loopback
    assert client.get("/inspect", headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io:8000", "127.0.0.2", ""]
)
@pytest.mark.parametrize(
    "path", ["/inspect", "/inspect/events/msg_pay", "/inspect/api/events", "/inspect/static/inspector.css"]
)
def test_a_foreign_host_is_refused(loopback: tuple[TestClient, dict[str, int]], host: str, path: str) -> None:
    client, _ = loopback
    response = client.get(path, headers={"host": host})
    assert (response.status_code, error_of(response)) == (403, "forbidden_host")


@pytest.mark.parametrize("address", ["192.168.1.20", "10.0.0.7", "2001:db8::1", "testclient"])
def test_a_client_that_is_not_loopback_is_refused(tmp_path: Path, address: str) -> None:
    app, _ = make_app(tmp_path, inspect=True)
    with TestClient(app, base_url=LOCAL, client=(address, 50000)) as client:
        response = client.get("/inspect")
    assert (response.status_code, error_of(response)) == (403, "forbidden_client")


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host"])
def test_a_proxied_request_is_refused(loopback: tuple[TestClient, dict[str, int]], header: str) -> None:
    client, _ = loopback
    response = client.get("/inspect", headers={header: "203.0.113.9"})
    assert (response.status_code, error_of(response)) == (403, "forbidden_proxy")


def test_loopback_checks() -> None:
    assert [is_loopback_address(a) for a in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1")] == [True] * 4
    assert [is_loopback_address(a) for a in ("0.0.0.0", "::ffff:10.0.0.1", "", None, "localhost")] == [False] * 5
    assert [is_loopback_host(h) for h in ("localhost", "[::1]", "127.0.0.1:1")] == [True] * 3
    assert [is_loopback_host(h) for h in ("::1", "localhost:", "localhost:x", "[::2]:80", "0.0.0.0")] == [False] * 5


# -- the pages -----------------------------------------------------------------------------


def test_the_list_shows_events_newest_first_with_their_status(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    response = client.get("/inspect")
    assert response.status_code == 200
    page = response.text
    assert page.index("msg_ref") < page.index("msg_pay") < page.index("msg_cus")
    for status in ("unhandled", "failed", "handled"):
        assert f'<span class="badge status-{status}">{status}</span>' in page
    assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert "http://" not in page.replace(LOCAL, "")  # nothing loaded from elsewhere


@pytest.mark.parametrize(
    ("query_string", "shown"),
    [
        ("type=payment.*", ["msg_pay"]),
        ("type=customer.created", ["msg_cus"]),
        ("type=*", ["msg_ref", "msg_pay", "msg_cus"]),
        ("status=failed", ["msg_pay"]),
        ("status=unhandled", ["msg_ref"]),
        ("id=msg_cus", ["msg_cus"]),
        ("id=msg_cus&status=dead", []),
        ("id=msg_c", []),
    ],
)
def test_filters_narrow_the_list(
    loopback: tuple[TestClient, dict[str, int]], query_string: str, shown: list[str]
) -> None:
    client, _ = loopback
    page = client.get(f"/inspect?{query_string}").text
    assert [msg for msg in ("msg_ref", "msg_pay", "msg_cus") if f">{msg}</a>" in page] == shown
    api = client.get(f"/inspect/api/events?{query_string}").json()
    assert [e["id"] for e in api["events"]] == shown


@pytest.mark.parametrize(
    ("query_string", "message"),
    [("type=payment*", "Bad event pattern"), ("status=lost", "Unknown status"), ("before=x", "before must be")],
)
def test_a_bad_filter_is_explained(
    loopback: tuple[TestClient, dict[str, int]], query_string: str, message: str
) -> None:
    client, _ = loopback
    response = client.get(f"/inspect?{query_string}")
    assert response.status_code == 400
    assert message in response.text
    api = client.get(f"/inspect/api/events?{query_string}")
    assert (api.status_code, error_of(api)) == (400, "bad_filter")


def test_the_polling_endpoint_returns_what_came_after_a_seq(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    events = client.get("/inspect/api/events?after=1").json()["events"]
    assert [(e["seq"], e["id"], e["status"], e["url"]) for e in events] == [
        (3, "msg_ref", "unhandled", "/inspect/events/msg_ref"),
        (2, "msg_pay", "failed", "/inspect/events/msg_pay"),
    ]
    assert client.get("/inspect/api/events?after=3").json() == {"events": []}


def test_the_event_page_shows_body_headers_and_the_handler_error(
    loopback: tuple[TestClient, dict[str, int]], tmp_path: Path
) -> None:
    client, _ = loopback
    page = client.get("/inspect/events/msg_pay").text
    assert '<span class="j-key">&#34;type&#34;</span>: <span class="j-str">&#34;payment.failed&#34;</span>' in page
    assert '<th class="mono">webhook-id</th><td class="mono">msg_pay</td>' in page
    assert "<summary>RuntimeError: card processor unreachable</summary>" in page
    assert "Traceback (most recent call last):" in page
    assert 'attempt <strong class="attempt-count">1</strong> of 7' in page
    assert '<input type="hidden" name="handler" value="flaky">' in page
    db = tmp_path / "events.db"
    assert f"montra-hooks replay --db {db} --id msg_pay --to http://127.0.0.1:8000/webhooks</code>" in page


def test_attacker_controlled_text_is_escaped(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    body = json.dumps({"type": "customer.updated", "data": {"name": "<script>alert(1)</script>"}}).encode()
    headers = {"x-note": '"><img src=x onerror=alert(2)>', "authorization": "Bearer sk_live_secret"}
    assert signed_post("/webhooks", body, SECRET, "msg_<b>x</b>", client=client, headers=headers).status_code == 200
    page = client.get("/inspect/events/msg_%3Cb%3Ex%3C%2Fb%3E").text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "sk_live_secret" not in page
    assert '<td class="mono muted">[redacted]</td>' in page


def test_an_unknown_event_is_a_404_page(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    response = client.get("/inspect/events/msg_nope")
    assert response.status_code == 404
    assert "No event <code>msg_nope</code> is stored here." in response.text
    api = client.get("/inspect/api/events/msg_nope")
    assert (api.status_code, error_of(api)) == (404, "not_found")


def test_static_files_come_from_the_package(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    css = client.get("/inspect/static/inspector.css")
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    js = client.get("/inspect/static/inspector.js")
    assert (js.status_code, js.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert "innerHTML" not in js.text  # event text reaches the page through textContent only
    assert client.get("/inspect/static/..%2Fapp.py").status_code == 404


def test_highlight_json_escapes_every_token() -> None:
    text = json.dumps({"a<": ["</pre>", 1.5e3, True, None, 'x\\"y']}, indent=2)
    html = str(highlight_json(text))
    assert "</pre>" not in html and "a<" not in html
    assert '<span class="j-key">&#34;a&lt;&#34;</span>' in html
    assert '<span class="j-num">1500.0</span>' in html and '<span class="j-lit">null</span>' in html


# -- POST: same origin only, and the re-run action -----------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"origin": "http://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:9999"},
        {"origin": LOCAL, "sec-fetch-site": "cross-site"},
        {"origin": LOCAL, "sec-fetch-site": "same-site"},
    ],
)
def test_a_cross_site_post_is_refused(loopback: tuple[TestClient, dict[str, int]], headers: dict[str, str]) -> None:
    client, calls = loopback
    response = client.post("/inspect/events/msg_pay/rerun", data={"handler": "flaky"}, headers=headers)
    assert (response.status_code, error_of(response)) == (403, "cross_site_request")
    assert calls["msg_pay"] == 1


def test_rerun_runs_the_failed_handler_again(loopback: tuple[TestClient, dict[str, int]], tmp_path: Path) -> None:
    client, calls = loopback
    headers = {**ORIGIN, "sec-fetch-site": "same-origin"}
    response = client.post(
        "/inspect/events/msg_pay/rerun", data={"handler": "flaky"}, headers=headers, follow_redirects=False
    )
    assert (response.status_code, response.headers["location"]) == (303, "/inspect/events/msg_pay?requeued=1")
    assert calls["msg_pay"] == 2
    db = tmp_path / "events.db"
    assert query(db, "SELECT handler, status, attempts, last_error FROM handler_runs WHERE event_id = 'msg_pay'") == [
        ("flaky", "succeeded", 2, None)
    ]
    page = client.get(response.headers["location"]).text
    assert "Re-queued 1 run" in page and 'attempt <strong class="attempt-count">2</strong>' in page
    again = client.post("/inspect/events/msg_pay/rerun", headers=ORIGIN, follow_redirects=False)
    assert again.headers["location"] == "/inspect/events/msg_pay?requeued=0"


def test_rerun_in_background_mode_wakes_the_dispatcher(tmp_path: Path) -> None:
    app, calls = make_app(tmp_path, inspect=True, dispatch="background", backoff=3600)
    db = tmp_path / "events.db"
    runs = "SELECT status, attempts FROM handler_runs WHERE event_id = 'msg_bg'"
    with local_client(app) as client:
        log_in(client, app)
        assert deliver(client, "payment.failed", "msg_bg") == 200
        failed = [("failed", 1)]  # the next try is an hour away
        wait_until(lambda: query(db, runs), until=failed.__eq__, timeout=10.0, what=f"runs {failed}")
        response = client.post("/inspect/events/msg_bg/rerun", data={"handler": "flaky"}, headers=ORIGIN)
        assert response.status_code == 200
        succeeded = [("succeeded", 2)]
        wait_until(lambda: query(db, runs), until=succeeded.__eq__, timeout=10.0, what=f"runs {succeeded}")
    assert calls["msg_bg"] == 2


def test_an_oversized_rerun_form_is_refused_and_reruns_nothing(
    loopback: tuple[TestClient, dict[str, int]], tmp_path: Path
) -> None:
    client, calls = loopback
    form = {"handler": "flaky", "padding": "x" * 20_000}
    response = client.post("/inspect/events/msg_pay/rerun", data=form, headers=ORIGIN, follow_redirects=False)
    assert (response.status_code, error_of(response)) == (413, "body_too_large")
    assert calls["msg_pay"] == 1
    assert query(tmp_path / "events.db", "SELECT status FROM handler_runs WHERE event_id = 'msg_pay'") == [("failed",)]


def test_rerun_of_an_unknown_event_is_a_404(loopback: tuple[TestClient, dict[str, int]]) -> None:
    client, _ = loopback
    response = client.post("/inspect/events/msg_nope/rerun", headers=ORIGIN)
    assert (response.status_code, error_of(response)) == (404, "not_found")


# -- with a token --------------------------------------------------------------------------


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[TestClient]:
    app, _ = make_app(tmp_path, inspect_token=TOKEN)
    # A remote client with a public Host: the token, not the network, is what lets it in.
    with TestClient(app, base_url="https://hooks.example.com", client=("203.0.113.5", 40000)) as client:
        assert deliver(client, "payment.failed", "msg_pay") == 500
        yield client


def test_without_the_token_pages_send_to_the_login_and_json_is_401(guarded: TestClient) -> None:
    response = guarded.get("/inspect/events/msg_pay?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/inspect/login?next=%2Finspect%2Fevents%2Fmsg_pay%3Fx%3D1"
    api = guarded.get("/inspect/api/events")
    assert (api.status_code, error_of(api), api.headers["www-authenticate"]) == (
        401,
        "unauthorized",
        'Bearer realm="montra-inspector"',
    )
    login = guarded.get("/inspect/login")
    assert login.status_code == 200 and 'type="password" name="token"' in login.text


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}"])
def test_a_bearer_token_opens_it(guarded: TestClient, authorization: str) -> None:
    response = guarded.get("/inspect/api/events", headers={"authorization": authorization})
    assert [e["id"] for e in response.json()["events"]] == ["msg_pay"]


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}", TOKEN])
def test_a_wrong_bearer_token_is_401(guarded: TestClient, authorization: str) -> None:
    response = guarded.get("/inspect/api/events", headers={"authorization": authorization})
    assert (response.status_code, error_of(response)) == (401, "unauthorized")


def test_login_sets_a_strict_httponly_session_cookie_that_is_not_the_token(guarded: TestClient) -> None:
    response = guarded.get(f"/inspect/login?token={TOKEN}&next=/inspect/events/msg_pay", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/inspect/events/msg_pay")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=v1.")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/inspect" in cookie
    assert "Secure" in cookie  # the site is https
    assert TOKEN not in cookie
    page = guarded.get("/inspect/events/msg_pay")
    assert page.status_code == 200 and "card processor unreachable" in page.text
    assert TOKEN not in page.text


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/inspect", "/other", "/inspectx"])
def test_login_never_redirects_off_the_inspector(guarded: TestClient, target: str) -> None:
    response = guarded.get("/inspect/login", params={"token": TOKEN, "next": target}, follow_redirects=False)
    assert response.headers["location"] == "/inspect"


def test_a_wrong_token_is_refused_at_login(guarded: TestClient) -> None:
    response = guarded.get("/inspect/login?token=guess", follow_redirects=False)
    assert response.status_code == 401
    assert "That token is not the receiver&#39;s --inspect-token." in response.text
    assert "set-cookie" not in response.headers


def test_the_login_form_posts_with_the_origin_check(guarded: TestClient) -> None:
    origin = {"origin": "https://hooks.example.com"}
    refused = guarded.post("/inspect/login", data={"token": TOKEN}, follow_redirects=False)
    assert (refused.status_code, error_of(refused)) == (403, "cross_site_request")
    response = guarded.post("/inspect/login", data={"token": TOKEN, "next": ""}, headers=origin, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/inspect")
    assert guarded.get("/inspect").status_code == 200
    logout = guarded.post("/inspect/logout", headers=origin, follow_redirects=False)
    assert logout.status_code == 303 and f'{SESSION_COOKIE}=""' in logout.headers["set-cookie"]
    assert guarded.get("/inspect", follow_redirects=False).status_code == 303


def test_a_post_with_the_token_still_needs_the_origin(guarded: TestClient) -> None:
    bearer = {"authorization": f"Bearer {TOKEN}"}
    refused = guarded.post("/inspect/events/msg_pay/rerun", headers=bearer)
    assert (refused.status_code, error_of(refused)) == (403, "cross_site_request")
    accepted = guarded.post(
        "/inspect/events/msg_pay/rerun",
        headers={**bearer, "origin": "https://hooks.example.com"},
        follow_redirects=False,
    )
    assert (accepted.status_code, accepted.headers["location"]) == (303, "/inspect/events/msg_pay?requeued=1")


@pytest.mark.parametrize("forged", ["", "v1.9999999999.AAAA", TOKEN, "v2.1.x", "v1.x.y"])
def test_a_forged_session_cookie_is_not_a_session(guarded: TestClient, forged: str) -> None:
    guarded.cookies.set(SESSION_COOKIE, forged, path="/inspect")
    response = guarded.get("/inspect/api/events")
    assert response.status_code == 401


def test_sessions_expire() -> None:
    access = InspectorAccess(TOKEN)
    from starlette.requests import Request
    from starlette.responses import Response

    request = Request({"type": "http", "scheme": "http", "server": ("x", 80), "path": "/", "headers": []})
    response = Response()
    access.start_session(request, response, now=time.time() - 13 * 3600)
    value = response.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert not access._valid_session(value)
    assert access._valid_session(value, now=time.time() - 12 * 3600)
    assert not InspectorAccess(TOKEN + "2")._valid_session(value, now=time.time() - 12 * 3600)


# -- mounted, and the CLI ------------------------------------------------------------------


def test_mounted_under_a_prefix_its_links_and_cookie_follow(tmp_path: Path) -> None:
    montra, _ = make_app(tmp_path, inspect_token=TOKEN)
    parent = Starlette(routes=[Mount("/hooks", app=montra)], lifespan=montra.lifespan)
    with TestClient(parent, base_url=LOCAL) as client:
        body = json.dumps({"type": "customer.created"}).encode()
        assert signed_post("/hooks/webhooks", body, SECRET, "msg_m", client=client).status_code == 200
        login = client.get(f"/hooks/inspect/login?token={TOKEN}", follow_redirects=False)
        assert login.headers["location"] == "/hooks/inspect"
        assert "Path=/hooks/inspect" in login.headers["set-cookie"]
        page = client.get("/hooks/inspect").text
        assert 'href="/hooks/inspect/events/msg_m"' in page
        assert 'href="/hooks/inspect/static/inspector.css"' in page


def test_serve_refuses_inspect_without_a_token_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONTRA_HOOKS_INSPECT_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve", "--inspect", "--host", "0.0.0.0", "--secret", SECRET])
    assert result.exit_code == 2
    assert "--inspect without a token on --host 0.0.0.0, which is not loopback" in result.output
    assert not (tmp_path / "montra-events.db").exists()
