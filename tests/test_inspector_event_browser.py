"""The event page, its edit-and-replay form and a resource timeline in a real headless Chromium, against `serve`.

Screenshots (1280x800) go to tmp_path; with MONTRA_SCREENSHOTS_TO=docs/img set they are also written
there, under the names docs/inspector.md shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.browser import chromium, needs_chromium
from support.db import query
from support.server import ServerProcess
from support.signing import signed_post

pytestmark = needs_chromium

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "inspect-token-0e4f7c21b5"

HANDLERS = """
from receiver import Event, Hooks

hooks = Hooks()
tries: dict[str, int] = {}


@hooks.on("subscription.*", name="billing.sync_plan")
async def sync_plan(event: Event) -> None:
    tries[event.id] = tries.get(event.id, 0) + 1
    if event.type == "subscription.upgraded" and tries[event.id] <= 2:
        raise ConnectionError(f"billing API unreachable for {event.data['id']} (try {tries[event.id]})")
    if event.type == "subscription.canceled":
        raise ValueError(f"no refund rule for plan {event.data['plan']['id']}")


@hooks.on("subscription.*", "customer.*", name="crm.note_change")
async def note_change(event: Event) -> None:
    pass
"""

UPGRADE = {
    "type": "subscription.upgraded",
    "timestamp": "2026-11-25T17:05:00Z",
    "data": {
        "id": "sub_1",
        "customer_id": "cus_1",
        "status": "active",
        "plan": {"id": "plan_pro", "amount": 4900, "interval": "month"},
        "seats": 10,
    },
    "previous_attributes": {"plan": {"id": "plan_basic", "amount": 1900}, "seats": 3},
}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


@pytest.fixture
def server(tmp_path: Path, serve: Callable[..., ServerProcess]) -> ServerProcess:
    """`serve --inspect-token` with the handlers above; a failed try is retried at once (--backoff 0.01), 4 at most."""
    (tmp_path / "handlers.py").write_text(HANDLERS)
    options = ("--app", "handlers:hooks", "--db", "events.db", "--secret", SECRET, "--inspect-token", TOKEN)
    server = serve(*options, "--backoff", "0.01", "--max-attempts", "4")
    # sub_1's story, the upgrade arriving before the creation it follows.
    deliver(server, "msg_upgrade", UPGRADE)
    created = {"type": "subscription.created", "timestamp": "2026-11-25T17:00:00Z", "data": {"id": "sub_1"}}
    deliver(server, "msg_created", {**created, "data": {**created["data"], "customer_id": "cus_1"}})
    paused = {"type": "subscription.paused", "timestamp": "2026-11-25T17:30:00Z", "data": {"id": "sub_1"}}
    deliver(server, "msg_paused", {**paused, "previous_attributes": {"status": "active"}})
    canceled = {"type": "subscription.canceled", "timestamp": "2026-11-25T17:40:00Z", "data": UPGRADE["data"]}
    deliver(server, "msg_canceled", canceled)
    return server


def deliver(server: ServerProcess, msg_id: str, envelope: dict[str, object]) -> None:
    assert signed_post(server.url + "/webhooks", json.dumps(envelope).encode(), SECRET, msg_id).status_code == 200


def wait(driver: WebDriver, condition: Callable[[WebDriver], object], timeout: float = 15) -> None:
    # The event page reloads itself when its runs change: an element found a moment ago may be gone.
    ignored = (StaleElementReferenceException, NoSuchElementException)
    WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition)


def screenshot(driver: WebDriver, path: Path, *, at: str | None = None) -> None:
    """The window as a reader sees it at 1280x800 (scrolled to `at`, a CSS selector); copied to
    $MONTRA_SCREENSHOTS_TO when that is set."""
    # The viewport itself, not the window (whose size includes what a headless window still reserves).
    metrics = {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # type: ignore[attr-defined]
    if at is None:
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView()", at)
    driver.save_screenshot(str(path))
    if os.environ.get("MONTRA_SCREENSHOTS_TO"):
        shutil.copy(path, Path(os.environ["MONTRA_SCREENSHOTS_TO"]) / path.name)


def log_in(driver: WebDriver, server: ServerProcess, target: str) -> None:
    driver.get(f"{server.url}/inspect/login?token={TOKEN}&next={target}")
    wait(driver, lambda d: d.current_url == server.url + target)


def outcomes(driver: WebDriver, handler: str) -> list[str]:
    run = driver.find_element(By.CSS_SELECTOR, f"article.run[data-handler='{handler}']")
    return [badge.text for badge in run.find_elements(By.CSS_SELECTOR, "table.attempts td .badge")]


def test_the_attempt_timeline_the_change_table_and_the_resource_timeline(
    server: ServerProcess, browser: WebDriver, tmp_path: Path
) -> None:
    log_in(browser, server, "/inspect/events/msg_upgrade")
    # Two failed tries and the one that succeeded, as they happen: the page refreshes itself.
    wait(browser, lambda d: outcomes(d, "billing.sync_plan") == ["failed", "failed", "succeeded"])
    run = browser.find_element(By.CSS_SELECTOR, "article.run[data-handler='billing.sync_plan']")
    tries = run.find_elements(By.CSS_SELECTOR, "table.attempts tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "td").text for row in tries] == ["1", "2", "3"]
    first_error = tries[0].find_element(By.CSS_SELECTOR, "details.error")
    summary = first_error.find_element(By.TAG_NAME, "summary")
    assert summary.text == "ConnectionError: billing API unreachable for sub_1 (try 1)"
    # The traceback is folded until its summary is clicked.
    traceback = first_error.find_element(By.CSS_SELECTOR, "pre.try-traceback")
    assert not traceback.is_displayed()
    summary.click()
    assert traceback.is_displayed() and "Traceback (most recent call last):" in traceback.text
    assert tries[2].find_elements(By.CSS_SELECTOR, "details.error") == []
    assert outcomes(browser, "crm.note_change") == ["succeeded"]
    summary.click()  # folded again for the screenshot

    changes = [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#changes tbody tr")
    ]
    assert changes == [
        ["plan.id", '"plan_basic"', '"plan_pro"'],
        ["plan.amount", "1900", "4900"],
        ["plan.interval", "absent", '"month"'],
        ["seats", "3", "10"],
    ]
    refs = [link.text for link in browser.find_elements(By.CSS_SELECTOR, "#refs a")]
    assert refs == ["cus_1", "sub_1"]
    screenshot(browser, tmp_path / "inspector-event.png", at="#runs")

    browser.find_element(By.LINK_TEXT, "sub_1").click()
    wait(browser, lambda d: d.current_url == server.url + "/inspect/resources/sub_1")
    dead = "SELECT status FROM events WHERE id = 'msg_canceled'"
    if query(tmp_path / "events.db", dead) != [("dead",)]:
        wait(browser, lambda d: query(tmp_path / "events.db", dead) == [("dead",)])
        browser.refresh()
    shown = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")][2:5]
        for row in browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    ]
    # In the order they happened, not the order they arrived.
    assert shown == [
        ["subscription.created", "msg_created", "handled"],
        ["subscription.upgraded", "msg_upgrade", "handled"],
        ["subscription.paused", "msg_paused", "handled"],
        ["subscription.canceled", "msg_canceled", "dead"],
    ]
    upgrade = browser.find_element(By.CSS_SELECTOR, "#timeline tr[data-seq='1'] td.runs").text
    assert upgrade.split() == [
        "billing.sync_plan",
        "succeeded",
        "3",
        "tries",
        "crm.note_change",
        "succeeded",
    ]
    screenshot(browser, tmp_path / "inspector-resource.png")


def test_edit_and_replay_lands_on_the_new_event_holding_the_edit(
    server: ServerProcess, browser: WebDriver, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    log_in(browser, server, "/inspect/events/msg_created")
    wait(browser, lambda d: d.find_element(By.ID, "event-status").text == "handled")
    browser.find_element(By.CSS_SELECTOR, "#edit summary").click()
    box = browser.find_element(By.ID, "edit-body")
    assert json.loads(box.get_attribute("value") or "") == {
        "type": "subscription.created",
        "timestamp": "2026-11-25T17:00:00Z",
        "data": {"id": "sub_1", "customer_id": "cus_1"},
    }

    # Not JSON: the page says where it breaks, and nothing is sent.
    box.send_keys(",")
    browser.find_element(By.ID, "edit-replay").click()
    wait(browser, lambda d: d.find_elements(By.ID, "replay-error"))
    assert browser.find_element(By.ID, "replay-error").text.startswith("The edited body is not JSON (")
    assert query(db, "SELECT count(*) FROM events") == [(4,)]

    # Edit a field as a person would: the text is selected and typed over.
    box = browser.find_element(By.ID, "edit-body")
    text = (box.get_attribute("value") or "").rstrip(",").replace('"cus_1"', '"cus_2"')
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "edit-replay").click()
    wait(browser, lambda d: re.search(r"/inspect/events/msg_created_r[0-9a-f]{8}$", d.current_url))
    new_id = browser.current_url.rsplit("/", 1)[1]
    assert browser.find_element(By.ID, "event-id").text == new_id
    assert '"customer_id": "cus_2"' in browser.find_element(By.ID, "body").text
    assert browser.find_element(By.ID, "replay-of").text == "msg_created"
    wait(browser, lambda d: d.find_element(By.ID, "event-status").text == "handled")
    [(body, headers)] = query(db, "SELECT body, headers FROM events WHERE id = ?", (new_id,))
    assert json.loads(body)["data"] == {"id": "sub_1", "customer_id": "cus_2"}
    assert json.loads(headers)["montra-replay-of"] == "msg_created"
    refs = [link.text for link in browser.find_elements(By.CSS_SELECTOR, "#refs a")]
    assert refs == ["cus_2", "sub_1"]  # the edited body's resources
    assert SECRET not in browser.page_source and TOKEN not in browser.page_source
