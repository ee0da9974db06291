"""The inspector on the PostgreSQL store: the same pages and action, and no password on them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from starlette.testclient import TestClient
from support.postgres import pg_query
from test_inspector import ORIGIN, deliver, local_client, log_in

from receiver import Event, Hooks, create_app
from receiver.stores.open import redact_url


def user(url: str) -> str:
    return str(pg_query(url, "SELECT current_user")[0][0])


def with_password(url: str, password: str) -> str:
    """`url` with a user and password added: libpq ignores the password on a peer-authenticated socket."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user(url)}:{password}@{parts.netloc}"))


def test_list_event_page_and_rerun_on_postgres(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # inspect=True creates .montra-hooks/inspect-token here
    tries: dict[str, int] = {}
    hooks = Hooks()

    @hooks.on("payment.failed", name="flaky")
    async def flaky(event: Event) -> None:
        tries[event.id] = tries.get(event.id, 0) + 1
        if tries[event.id] == 1:
            raise RuntimeError("card processor unreachable")

    db = with_password(postgres_url, "hunter2-not-shown")
    app = create_app(hooks, db=db, secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], dispatch="inline", inspect=True)
    client: TestClient
    with local_client(app) as client:
        log_in(client, app)
        assert deliver(client, "payment.failed", "msg_pay") == 500  # inline: the first try fails
        assert deliver(client, "refund.created", "msg_ref") == 200
        listing = client.get("/inspect").text
        assert "msg_pay" in listing and "msg_ref" in listing
        page = client.get("/inspect/events/msg_pay").text
        assert "<summary>RuntimeError: card processor unreachable</summary>" in page
        assert 'attempt <strong class="attempt-count">1</strong> of 7' in page
        assert "hunter2" not in listing + page
        # The copyable replay command names the database, without its password (libpq finds it in ~/.pgpass).
        assert f"montra-hooks replay --db &#39;{redact_url(db)}&#39; --id msg_pay" in page
        response = client.post("/inspect/events/msg_pay/rerun", data={"handler": "flaky"}, headers=ORIGIN)
        assert response.status_code == 200
        assert 'attempt <strong class="attempt-count">2</strong>' in response.text
    runs = "SELECT handler, status, attempts, last_error FROM handler_runs WHERE event_id = 'msg_pay'"
    assert redact_url(db) == postgres_url.replace("postgresql://", f"postgresql://{user(postgres_url)}@", 1)
    assert pg_query(postgres_url, runs) == [("flaky", "succeeded", 2, None)]
    assert pg_query(postgres_url, "SELECT id, status FROM events ORDER BY seq") == [
        ("msg_pay", "handled"),
        ("msg_ref", "unhandled"),
    ]


@pytest.mark.parametrize(
    "path", ["/inspect/events/%00", "/inspect/api/events/msg%00x", "/inspect?type=a%00", "/inspect?id=%00"]
)
def test_a_nul_character_is_a_400_on_postgres(postgres_url: str, path: str) -> None:
    # PostgreSQL refuses NUL in any text parameter: it must never reach the store as a query.
    app = create_app(db=postgres_url, secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], inspect_token="t" * 24)
    with TestClient(app, headers={"authorization": "Bearer " + "t" * 24}) as client:
        response = client.get(path)
    assert (response.status_code, response.json()["error"]) == (400, "bad_query")
