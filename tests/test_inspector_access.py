"""The inspector's token: always one (created once when none is given), throttled logins, and bad input answered.

A default nginx `proxy_pass` on the receiver's machine forwards every client from 127.0.0.1 with
`Host: 127.0.0.1:port` and no forwarding header: a plain loopback request is exactly what the
internet gets through it, so the real-process tests below send just that.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from support.db import query
from support.server import ServerProcess
from support.signing import signed_post
from support.wait import wait_until
from test_inspector import ORIGIN, SECRET, TOKEN, deliver, error_of, local_client, log_in, make_app

from receiver import create_app
from receiver.errors import ConfigurationError
from receiver.inspector.access import LoginThrottle
from replay.cli import cli

TOKEN_FILE = Path(".montra-hooks") / "inspect-token"
BEARER = {"authorization": f"Bearer {TOKEN}"}
TO_LOGIN = (303, "/inspect/login?next=%2Finspect%2Fevents%2Fmsg_pay")
HANDLERS = """
from receiver import Event, Hooks

hooks = Hooks()


@hooks.on("payment.failed", name="billing.retry_charge")
async def retry_charge(event: Event) -> None:
    raise ConnectionError("card processor unreachable")
"""


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONTRA_HOOKS_INSPECT_TOKEN", raising=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- a token always ------------------------------------------------------------------------


def test_inspect_without_a_token_creates_one_once_and_asks_for_it(tmp_path: Path) -> None:
    app, calls = make_app(tmp_path, inspect=True)
    token = (tmp_path / TOKEN_FILE).read_text().strip()
    assert len(token) == 32  # 24 random bytes, URL-safe base64
    assert (mode(tmp_path / TOKEN_FILE), mode(tmp_path / ".montra-hooks")) == (0o600, 0o700)
    assert app.inspector is not None
    assert (app.inspector.login_path, app.inspector.token_file) == (f"/inspect/login?token={token}", TOKEN_FILE)
    again, _ = make_app(tmp_path, inspect=True)  # a restart reuses it: the printed link and sessions stay good
    assert again.inspector is not None and again.inspector.login_path == app.inspector.login_path

    with local_client(app) as client:
        assert deliver(client, "payment.failed", "msg_pay") == 500  # inline: flaky's first try fails
        api = client.get("/inspect/api/events")
        assert (api.status_code, error_of(api)) == (401, "unauthorized")
        page = client.get("/inspect/events/msg_pay", follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (
            303,
            "/inspect/login?next=%2Finspect%2Fevents%2Fmsg_pay",
        )
        rerun = client.post("/inspect/events/msg_pay/rerun", data={"handler": "flaky"}, headers=ORIGIN)
        assert (rerun.status_code, error_of(rerun), calls["msg_pay"]) == (401, "unauthorized", 1)
        login = client.get("/inspect/login")
        assert login.status_code == 200 and "the one in <code>.montra-hooks/inspect-token</code>" in login.text
        wrong = client.get("/inspect/login?token=" + "x" * 32)
        assert wrong.status_code == 401
        assert "That token is not the one in .montra-hooks/inspect-token" in wrong.text

        log_in(client, app)
        assert [e["id"] for e in client.get("/inspect/api/events").json()["events"]] == ["msg_pay"]


def test_a_created_token_answers_this_machine_only_an_explicit_one_any_host(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, inspect=True)
    assert app.inspector is not None
    with TestClient(app, base_url="https://hooks.example.com", client=("127.0.0.1", 50000)) as client:
        # Even with the token: a created token was never meant to leave this machine.
        response = client.get(app.inspector.login_path, follow_redirects=False)
        assert (response.status_code, error_of(response)) == (403, "forbidden_host")
    explicit, _ = make_app(tmp_path, inspect=True, inspect_token=TOKEN)
    assert explicit.inspector is not None and explicit.inspector.token_file is None
    with TestClient(explicit, base_url="https://hooks.example.com", client=("203.0.113.5", 50000)) as client:
        assert client.get("/inspect/api/events", headers=BEARER).status_code == 200


@pytest.mark.parametrize("token", ["short", "x" * 15])
def test_a_token_shorter_than_16_characters_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    message = f"The inspect token is {len(token)} characters long: use at least 16"
    with pytest.raises(ConfigurationError, match=message):
        create_app(db=tmp_path / "events.db", secrets=[SECRET], inspect_token=token)
    monkeypatch.setenv("MONTRA_HOOKS_INSPECT_TOKEN", token)
    with pytest.raises(ConfigurationError, match=message):
        create_app(db=tmp_path / "events.db", secrets=[SECRET])
    result = CliRunner().invoke(cli, ["serve", "--inspect", "--secret", SECRET, "--db", "events.db"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    create_app(db=tmp_path / "events.db", secrets=[SECRET], inspect_token="x" * 16)  # 16 is enough


def test_serve_prints_the_login_link_and_a_same_host_proxy_gets_nothing_without_it(
    serve: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    server = serve("--app", "handlers:hooks", "--db", "events.db", "--secret", SECRET, "--backoff", "3600", "--inspect")
    token = (tmp_path / TOKEN_FILE).read_text().strip()
    login = f"{server.url}/inspect/login?token={token}"
    assert f"  inspect:  {login} (this machine only; token in .montra-hooks/inspect-token)\n" in server.output()
    assert mode(tmp_path / TOKEN_FILE) == 0o600
    body = json.dumps({"type": "payment.failed", "data": {"id": "pay_1"}}).encode()
    assert signed_post(server.url + "/webhooks", body, SECRET, "msg_pay").status_code == 200
    runs = "SELECT status, attempts FROM handler_runs WHERE event_id = 'msg_pay'"
    wait_until(lambda: query(tmp_path / "events.db", runs) == [("failed", 1)], what="the failed run")

    # What nginx forwards from anyone: loopback client, `Host: 127.0.0.1:port`, no forwarding header.
    with httpx.Client(base_url=server.url) as proxy:
        api = proxy.get("/inspect/api/events")
        assert (api.status_code, api.json()["error"]) == (401, "unauthorized")
        page = proxy.get("/inspect/events/msg_pay")
        assert (page.status_code, page.headers["location"]) == (
            303,
            "/inspect/login?next=%2Finspect%2Fevents%2Fmsg_pay",
        )
        rerun = proxy.post("/inspect/events/msg_pay/rerun", headers={"origin": server.url})
        assert (rerun.status_code, rerun.json()["error"]) == (401, "unauthorized")
    assert query(tmp_path / "events.db", runs) == [("failed", 1)]  # nothing ran again

    with httpx.Client(base_url=server.url) as browser:
        assert browser.get(login).status_code == 303
        assert [e["id"] for e in browser.get("/inspect/api/events").json()["events"]] == ["msg_pay"]
        # A bad query value is a 400 that says what is wrong, on the real server too.
        bad = browser.get("/inspect/api/events?before=99999999999999999999999")
        assert (bad.status_code, bad.json()["error"]) == (400, "bad_filter")

    server.kill()
    server.restart()
    assert server.output().count(f"  inspect:  {login} (this machine only") == 2  # the same token after a restart
    assert "Traceback" not in server.output()


def test_inspect_token_file_must_not_be_a_link(tmp_path: Path) -> None:
    (tmp_path / ".montra-hooks").mkdir(mode=0o700)
    elsewhere = tmp_path / "attacker-chosen-token"
    elsewhere.write_text("attacker-knows-this-token\n")
    (tmp_path / TOKEN_FILE).symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="inspect-token is a symbolic link"):
        make_app(tmp_path, inspect=True)
    assert elsewhere.read_text() == "attacker-knows-this-token\n"


# -- failed logins are throttled -----------------------------------------------------------


def test_ten_wrong_tokens_a_minute_then_429_even_for_the_right_one(serve: Callable[..., ServerProcess]) -> None:
    server = serve("--db", "events.db", "--secret", SECRET, "--inspect-token", TOKEN)
    with httpx.Client(base_url=server.url) as owner:
        assert owner.get(f"/inspect/login?token={TOKEN}").status_code == 303  # a session from before the attack
        with httpx.Client(base_url=server.url) as guesser:
            statuses = [guesser.get(f"/inspect/login?token=guess-{n:012d}").status_code for n in range(10)]
            assert statuses == [401] * 10
            throttled = guesser.get(f"/inspect/login?token=guess-{10:012d}")
            assert throttled.status_code == 429
            assert 1 <= int(throttled.headers["retry-after"]) <= 60
            assert "Too many wrong inspect tokens from 127.0.0.1: try again in" in throttled.text
            # The right token is not even compared while throttled: the answer tells a guesser nothing.
            assert guesser.get(f"/inspect/login?token={TOKEN}").status_code == 429
            bearer = guesser.get("/inspect/api/events", headers=BEARER)
            assert (bearer.status_code, bearer.json()["error"]) == (429, "too_many_attempts")
        assert owner.get("/inspect/api/events").status_code == 200  # a session is not a guess


def test_wrong_bearer_tokens_count_per_client(tmp_path: Path) -> None:
    app, _ = make_app(tmp_path, inspect_token=TOKEN)
    with TestClient(app, base_url="https://hooks.example.com", client=("203.0.113.5", 40000)) as guesser:
        wrong = {"authorization": "Bearer " + "g" * 24}
        assert [guesser.get("/inspect/api/events", headers=wrong).status_code for _ in range(10)] == [401] * 10
        response = guesser.get("/inspect/api/events", headers=BEARER)
        assert (response.status_code, error_of(response)) == (429, "too_many_attempts")
        assert guesser.get("/inspect/login", params={"token": TOKEN}, follow_redirects=False).status_code == 429
    with TestClient(app, base_url="https://hooks.example.com", client=("198.51.100.7", 40000)) as other:
        assert other.get("/inspect/api/events", headers=BEARER).status_code == 200


def test_the_throttle_forgets_failures_after_its_window() -> None:
    now = [1000.0]
    throttle = LoginThrottle(limit=3, window=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("192.0.2.1") is None
        throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 60
    assert throttle.retry_after("::ffff:192.0.2.1") == 60  # the same client, written as IPv4-mapped IPv6
    assert throttle.retry_after("192.0.2.2") is None
    now[0] += 59.5
    assert throttle.retry_after("192.0.2.1") == 1
    now[0] += 0.5
    assert throttle.retry_after("192.0.2.1") is None


def test_the_throttle_keys_ipv6_by_its_64_and_stays_bounded() -> None:
    throttle = LoginThrottle(limit=2, window=60.0, max_clients=2, clock=lambda: 0.0)
    throttle.failed("2001:db8::1")
    throttle.failed("2001:db8::2")  # the same /64: one client that changed its address
    assert throttle.retry_after("2001:db8::3") == 60
    assert throttle.retry_after("2001:db8:0:1::1") is None
    throttle.failed("198.51.100.1")
    throttle.failed("198.51.100.2")  # a third client: the one that failed longest ago is forgotten
    assert throttle.retry_after("2001:db8::3") is None


# -- bad input is answered, never a 500 ----------------------------------------------------


@pytest.fixture
def bearer_client(tmp_path: Path) -> TestClient:
    app, _ = make_app(tmp_path, inspect_token=TOKEN)
    return TestClient(app, base_url="http://127.0.0.1:8000", headers=BEARER)


@pytest.mark.parametrize(
    ("query_string", "message"),
    [
        ("before=99999999999999999999999", "before must be a whole number from 0 to 9223372036854775807"),
        ("before=9223372036854775808", "before must be a whole number from 0 to 9223372036854775807"),
        ("after=" + "9" * 5000, "after must be a whole number"),
        ("after=-1", "after must be a whole number"),
        ("before=%D9%A1%D9%A2", "before must be a whole number"),  # Arabic-Indic digits: isdigit() but not a seq
        ("limit=lots", "limit must be a whole number"),
        ("limit=" + "9" * 30, "limit must be a whole number"),
    ],
)
def test_a_bad_number_is_a_400_that_says_so(bearer_client: TestClient, query_string: str, message: str) -> None:
    with bearer_client as client:
        page = client.get(f"/inspect?{query_string}")
        assert page.status_code == 400 and message in page.text
        api = client.get(f"/inspect/api/events?{query_string}")
        assert (api.status_code, error_of(api)) == (400, "bad_filter")
        assert message in api.json()["message"]


def test_the_largest_seq_is_a_valid_filter(bearer_client: TestClient) -> None:
    with bearer_client as client:
        assert deliver(client, "customer.created", "msg_cus") == 200
        api = client.get("/inspect/api/events?before=9223372036854775807&after=0&limit=0")
        assert [e["id"] for e in api.json()["events"]] == ["msg_cus"]


@pytest.mark.parametrize(
    "path",
    ["/inspect/events/msg_cus?requeued=" + "9" * 5000, "/inspect/events/msg_cus?requeued=x"],
)
def test_a_bad_value_on_the_event_page_is_a_400(bearer_client: TestClient, path: str) -> None:
    with bearer_client as client:
        assert deliver(client, "customer.created", "msg_cus") == 200
        response = client.get(path)
        assert (response.status_code, error_of(response)) == (400, "bad_query")
        assert "requeued must be a whole number" in response.json()["message"]


@pytest.mark.parametrize(
    "path", ["/inspect/events/%00", "/inspect/api/events/msg%00x", "/inspect?type=a%00", "/inspect?id=%00"]
)
def test_a_nul_character_is_a_400(bearer_client: TestClient, path: str) -> None:
    with bearer_client as client:
        response = client.get(path)
        assert (response.status_code, error_of(response)) == (400, "bad_query")


def test_a_nul_character_in_a_form_is_a_400(bearer_client: TestClient) -> None:
    with bearer_client as client:
        response = client.post("/inspect/events/msg_cus/rerun", data={"handler": "a\x00b"}, headers=ORIGIN)
        assert (response.status_code, error_of(response)) == (400, "bad_query")


def nested(depth: int) -> bytes:
    return b'{"type": "customer.created", "data": {"deep": ' + b"[" * depth + b"]" * depth + b"}}"


def test_a_body_nested_970_deep_is_shown_as_text(bearer_client: TestClient) -> None:
    with bearer_client as client:
        assert signed_post("/webhooks", nested(970), SECRET, "msg_deep", client=client).status_code == 200
        page = client.get("/inspect/events/msg_deep")
        assert page.status_code == 200
        assert "text (JSON or not: nested deeper than 100 levels is not pretty-printed)" in page.text
        assert "[" * 970 + "]" * 970 in page.text
        assert signed_post("/webhooks", nested(97), SECRET, "msg_fine", client=client).status_code == 200
        fine = client.get("/inspect/events/msg_fine")  # 99 levels with the envelope: still pretty JSON
        assert fine.status_code == 200 and '<span class="j-key">&#34;deep&#34;</span>' in fine.text


def test_a_body_too_large_to_pretty_print_is_shown_as_text(bearer_client: TestClient) -> None:
    items = [{"n": n, "note": "x" * 40} for n in range(9000)]
    body = json.dumps({"type": "usage.reported", "data": {"items": items}}).encode()
    assert len(body) > 512 * 1024
    with bearer_client as client:
        assert signed_post("/webhooks", body, SECRET, "msg_big", client=client).status_code == 200
        page = client.get("/inspect/events/msg_big")
        assert page.status_code == 200
        assert "text (JSON or not: larger than 512 KiB is not pretty-printed)" in page.text
        assert '<span class="j-key">' not in page.text
        assert "{&#34;n&#34;: 8999, &#34;note&#34;: &#34;" in page.text


def test_brackets_inside_strings_do_not_count_as_nesting(bearer_client: TestClient) -> None:
    body = json.dumps({"type": "customer.created", "data": {"note": "[" * 500 + "{" * 500}}).encode()
    with bearer_client as client:
        assert signed_post("/webhooks", body, SECRET, "msg_brackets", client=client).status_code == 200
        page = client.get("/inspect/events/msg_brackets")
        assert page.status_code == 200 and '<span class="j-key">&#34;note&#34;</span>' in page.text
