"""The event list, its bulk actions and the rejections page in a real headless Chromium at 1280 px wide,
against a real `montra-hooks serve --inspect` process.

Each test saves screenshots of what it checks under its tmp_path (`*.png`); `docs/img/` holds two of them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.browser import chromium, needs_chromium
from support.db import query
from support.server import ServerProcess
from support.signing import signed_post

from receiver import sign
from receiver.event import resource_refs
from receiver.stores.protocol import Incoming
from receiver.stores.sqlite.store import SQLiteStore

pytestmark = needs_chromium

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WIDTH, HEIGHT = 1280, 800

HANDLERS = """
from receiver import Event, Hooks, NoRetry

hooks = Hooks()
tries: dict[str, int] = {}


@hooks.on("customer.*", name="crm.sync_customer")
async def sync_customer(event: Event) -> None:
    pass


@hooks.on("payment.failed", name="billing.email_payment_failed")
async def email_payment_failed(event: Event) -> None:
    tries[event.id] = tries.get(event.id, 0) + 1
    if tries[event.id] == 1:
        raise ConnectionError(f"SMTP server refused the message for {event.data['customer_id']}")


@hooks.on("subscription.canceled", name="audit.record_cancellation")
async def record_cancellation(event: Event) -> None:
    raise NoRetry("the audit log is read-only")
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path, width=WIDTH, height=HEIGHT) as driver:
        # The window's size is not its viewport's everywhere: size the viewport itself to 1280 x 800.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * WIDTH - inner[0], 2 * HEIGHT - inner[1])
        assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == [WIDTH, HEIGHT]
        yield driver


@pytest.fixture
def receiver(tmp_path: Path, serve: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    (tmp_path / "handlers.py").write_text(HANDLERS)

    def start(*options: str) -> ServerProcess:
        # --backoff 3600: a failed try waits an hour, so only a re-run runs it again.
        common = ("--app", "handlers:hooks", "--db", "events.db", "--secret", SECRET, "--backoff", "3600")
        return serve(*common, "--inspect", *options)

    return start


def deliver(server: ServerProcess, event_type: str, msg_id: str, **data: object) -> None:
    body = json.dumps({"type": event_type, "timestamp": "2026-11-25T17:00:00Z", "data": data}).encode()
    assert signed_post(server.url + "/webhooks", body, SECRET, msg_id).status_code == 200


def login_url(server: ServerProcess) -> str:
    match = re.search(r"inspect:  (http://\S+/inspect/login\?token=\S+) \(this machine only", server.output())
    assert match is not None, server.output()
    return match.group(1)


def wait(driver: WebDriver, condition: Callable[[WebDriver], object], timeout: float = 15) -> None:
    # The list reloads rows as statuses change: an element found a moment ago may be gone.
    ignored = (StaleElementReferenceException, NoSuchElementException)
    WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition)


# Read in one script each: a WebDriver round trip per row costs seconds on a page of 100.
def listed_ids(driver: WebDriver) -> list[str]:
    script = "return Array.from(document.querySelectorAll('#events .id-cell a')).map(a => a.title.split(' ')[0])"
    return list(driver.execute_script(script))


def listed_seqs(driver: WebDriver) -> list[int]:
    script = "return Array.from(document.querySelectorAll('#events tbody tr')).map(r => Number(r.dataset.seq))"
    return [int(seq) for seq in driver.execute_script(script)]


def count_of(driver: WebDriver, status: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f".counts a[data-status='{status}'] strong").text)


def screenshot(driver: WebDriver, path: Path) -> None:
    driver.save_screenshot(str(path))


# -- filtering, counts and the bulk re-run ------------------------------------------------------


def test_filter_with_the_form_then_bulk_rerun_after_a_confirmation(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver()
    deliver(server, "customer.created", "msg_cus_1", id="cus_1", email="ada@example.com")
    deliver(server, "payment.failed", "msg_pay_1", id="pay_1", customer_id="cus_1", amount=4900)
    deliver(server, "payment.failed", "msg_pay_2", id="pay_2", customer_id="cus_1", amount=1200)
    deliver(server, "payment.failed", "msg_pay_3", id="pay_3", customer_id="cus_2", amount=700)
    deliver(server, "refund.created", "msg_ref_1", id="re_1", customer_id="cus_1")
    db = tmp_path / "events.db"
    failed = "SELECT event_id FROM handler_runs WHERE status = 'failed' ORDER BY event_id"
    browser.get(login_url(server))
    wait(browser, lambda d: d.current_url == server.url + "/inspect")
    assert query(db, failed) == [("msg_pay_1",), ("msg_pay_2",), ("msg_pay_3",)]

    # Filter by resource and time range through the form: the filters land in the URL, the rows and counts follow.
    browser.find_element(By.NAME, "ref").send_keys("cus_1")
    browser.find_element(By.NAME, "since").send_keys("1h")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser, lambda d: "ref=cus_1" in d.current_url and "since=1h" in d.current_url)
    assert listed_ids(browser) == ["msg_ref_1", "msg_pay_2", "msg_pay_1", "msg_cus_1"]
    assert [count_of(browser, s) for s in ("all", "failed", "handled", "unhandled")] == ["4", "2", "1", "1"]
    screenshot(browser, tmp_path / "1-filtered.png")

    # A handler filter, typed as the datalist offers it, narrows further; a count pill picks a status.
    browser.find_element(By.NAME, "handler").send_keys("billing.email_payment_failed")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser, lambda d: "handler=billing.email_payment_failed" in d.current_url)
    assert listed_ids(browser) == ["msg_pay_2", "msg_pay_1"]
    browser.find_element(By.CSS_SELECTOR, ".counts a[data-status='failed']").click()
    wait(browser, lambda d: "status=failed" in d.current_url)
    assert listed_ids(browser) == ["msg_pay_2", "msg_pay_1"]

    # A bad value says which field is wrong, and keeps what was typed.
    since = browser.find_element(By.NAME, "since")
    since.clear()
    since.send_keys("last tuesday")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".alert.error[data-parameter='since']"))
    assert browser.find_element(By.NAME, "since").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.NAME, "since").get_attribute("value") == "last tuesday"
    browser.back()
    wait(browser, lambda d: "status=failed" in d.current_url and d.find_elements(By.ID, "bulk-rerun"))

    # Re-run: a confirmation that says how many, then the action; the list says what was done.
    browser.find_element(By.ID, "bulk-rerun").click()
    wait(browser, lambda d: "/inspect/bulk/rerun?" in d.current_url)
    assert browser.find_element(By.ID, "bulk-question").text == "Re-run 2 events' failed runs?"
    assert query(db, failed) == [("msg_pay_1",), ("msg_pay_2",), ("msg_pay_3",)]  # asking changed nothing
    screenshot(browser, tmp_path / "2-bulk-confirm.png")
    browser.find_element(By.ID, "bulk-submit").click()
    wait(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert browser.find_element(By.ID, "notice").text.startswith("Re-queued 2 run(s) of 2 event(s)")
    wait(browser, lambda d: query(db, failed) == [("msg_pay_3",)])
    browser.refresh()
    wait(browser, lambda d: count_of(d, "handled") == "2")
    assert count_of(browser, "failed") == "0"
    screenshot(browser, tmp_path / "3-after-rerun.png")


def test_bulk_replay_from_the_browser(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver()
    deliver(server, "customer.created", "msg_cus_1", id="cus_1")
    deliver(server, "customer.updated", "msg_cus_2", id="cus_1")
    deliver(server, "refund.created", "msg_ref_1", id="re_1")
    browser.get(login_url(server))
    browser.get(server.url + "/inspect?type=customer.*")
    browser.find_element(By.ID, "bulk-replay").click()
    wait(browser, lambda d: d.find_elements(By.ID, "bulk-question"))
    assert browser.find_element(By.ID, "bulk-question").text == "Replay 2 events?"
    browser.find_element(By.ID, "bulk-submit").click()
    wait(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert browser.find_element(By.ID, "notice").text == (
        "Replayed 2 event(s) under new ids: they are the newest events."
    )
    shown = [re.sub(r"_r[0-9a-f]{8}$", "_r*", i) for i in listed_ids(browser)]
    assert shown == ["msg_cus_2_r*", "msg_cus_1_r*", "msg_cus_2", "msg_cus_1"]
    replays = query(tmp_path / "events.db", "SELECT id FROM events WHERE seq > 3 ORDER BY seq")
    assert [i for (i,) in replays] == listed_ids(browser)[1::-1]


# -- paging --------------------------------------------------------------------------------------


def stored(
    event_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    at: float,
    replay_of: str | None = None,
    handlers: tuple[str, ...] = (),
) -> Incoming:
    body = json.dumps({"type": event_type, "data": data}).encode()
    headers = {"webhook-id": event_id, "content-type": "application/json"}
    if replay_of:
        headers["montra-replay-of"] = replay_of
    refs = resource_refs(event_type, data)
    return Incoming(event_id, event_type, None, at, headers, body, handlers=handlers, refs=refs)


# Each type with the handlers it runs in HANDLERS: handled, unhandled, failed (first try), unhandled, dead, handled.
TYPES = {
    "customer.created": ("crm.sync_customer",),
    "subscription.scheduled_change.created": (),
    "payment.failed": ("billing.email_payment_failed",),
    "checkout.completed": (),
    "subscription.canceled": ("audit.record_cancellation",),
    "customer.updated": ("crm.sync_customer",),
}


def fill(db: Path, count: int) -> None:
    """`count` events over the last day: long ids, long types, replays of replays' originals, one short id."""

    async def run() -> None:
        store = SQLiteStore(db)
        start = time.time() - 86400
        rows = []
        for n in range(count):
            kind = list(TYPES)[n % len(TYPES)]
            event_id = f"evt_2Bc9XQ01K7mZ4pT8wQ3{n:05d}" + ("aHk29dLq0ZrT4" * 5 if n % 3 == 0 else "")
            replay_of = None
            if n % 7 == 3:
                replay_of, event_id = event_id, f"{event_id}_r{n:08x}"
            data = {"id": f"obj_{n}", "customer_id": f"cus_{n % 9}"}
            rows.append(stored(event_id, kind, data, at=start + n * 60, replay_of=replay_of, handlers=TYPES[kind]))
        rows.append(stored("msg_1", "refund.created", {"id": "re_1"}, at=time.time() - 5))
        # Together, in a few group commits; each is queued as its task starts, so seq follows the list.
        await asyncio.gather(*(store.ingest(row) for row in rows))
        await store.close()

    asyncio.run(run())


def test_pages_older_and_newer_and_one_line_rows_at_1280(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    fill(tmp_path / "events.db", 229)  # then msg_1: 230 events, three pages of 100
    server = receiver()
    running = "SELECT count(*) FROM handler_runs WHERE status IN ('pending', 'running')"
    wait(browser, lambda d: query(tmp_path / "events.db", running) == [(0,)])  # the receiver ran what it stored
    browser.get(login_url(server))
    wait(browser, lambda d: d.current_url == server.url + "/inspect")
    assert listed_seqs(browser) == list(range(230, 130, -1))
    assert [count_of(browser, s) for s in ("all", "handled", "failed", "dead", "unhandled")] == [
        "230", "77", "38", "38", "77"
    ]  # fmt: skip
    assert browser.find_elements(By.ID, "page-newer") == []

    # One line per row at 1280 px: every row as tall as the short one (msg_1, on top), the status in view.
    # Measured in one script: a WebDriver round trip per row would make this the slowest test of the suite.
    layout = browser.execute_script(
        """
        var rows = Array.from(document.querySelectorAll("#events tbody tr"));
        var s = getComputedStyle(rows[0].cells[2]);
        return {
          heights: rows.map(function (r) { return Math.round(r.getBoundingClientRect().height * 10) / 10; }),
          line: parseFloat(s.lineHeight) + parseFloat(s.paddingTop) + parseFloat(s.paddingBottom) + 1,
          right: Math.max.apply(null, Array.from(document.querySelectorAll("#events .badge")).map(
            function (b) { return b.getBoundingClientRect().right; }))
        };
        """
    )
    assert len(layout["heights"]) == 100 and set(layout["heights"]) == {layout["heights"][0]}
    assert layout["heights"][0] <= layout["line"] + 1  # a single line of text (and its padding and border)
    assert layout["right"] <= WIDTH  # every status in view
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    # A long id is cut with an ellipsis, whole in its title; a replay keeps its suffix in view.
    long_row = browser.find_element(By.CSS_SELECTOR, "tr[data-seq='229']")  # n = 228: a long id, not a replay
    link = long_row.find_element(By.CSS_SELECTOR, ".id-cell a")
    assert link.get_attribute("title") == "evt_2Bc9XQ01K7mZ4pT8wQ300228" + "aHk29dLq0ZrT4" * 5
    head = long_row.find_element(By.CSS_SELECTOR, ".id-head")
    assert browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", head)
    replay = browser.find_element(By.CSS_SELECTOR, "tr[data-seq='221'] .id-cell a")  # n = 220: 220 % 7 == 3
    assert replay.get_attribute("title") == (
        f"evt_2Bc9XQ01K7mZ4pT8wQ300220_r{220:08x} (replay of evt_2Bc9XQ01K7mZ4pT8wQ300220)"
    )
    assert replay.find_element(By.CSS_SELECTOR, ".id-tail").text == f"_r{220:08x}"
    # Dates are short (today: the time alone), the full ISO time in the title.
    when = rows[0].find_element(By.CSS_SELECTOR, "td.when time")
    assert re.fullmatch(r"\d\d:\d\d:\d\d", when.text)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", when.get_attribute("title"))
    screenshot(browser, tmp_path / "inspector-list.png")
    # The copy button takes the whole id, however it is cut on screen.
    long_row.find_element(By.CSS_SELECTOR, "button.copy").click()
    copied = "return window.getSelection().toString()"
    wait(
        browser,
        lambda d: (
            long_row.find_element(By.CSS_SELECTOR, "button.copy").text == "Copied"
            or d.execute_script(copied) == "evt_2Bc9XQ01K7mZ4pT8wQ300228aHk29dLq0ZrT4"
        ),
    )

    # Older, older, then newer: keyset pages on seq.
    browser.find_element(By.ID, "page-older").click()
    wait(browser, lambda d: "before=131" in d.current_url)
    assert listed_seqs(browser) == list(range(130, 30, -1))
    browser.find_element(By.ID, "page-older").click()
    wait(browser, lambda d: "before=31" in d.current_url)
    assert listed_seqs(browser) == list(range(30, 0, -1))
    assert browser.find_elements(By.ID, "page-older") == []
    browser.find_element(By.ID, "page-newer").click()
    wait(browser, lambda d: "newer=30" in d.current_url)
    assert listed_seqs(browser) == list(range(130, 30, -1))
    browser.find_element(By.ID, "page-newest").click()
    wait(browser, lambda d: d.current_url == server.url + "/inspect")
    assert listed_seqs(browser) == list(range(230, 130, -1))


# -- rejections ------------------------------------------------------------------------------------


def test_the_rejections_page_in_the_browser(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver()
    deliver(server, "customer.created", "msg_cus_1", id="cus_1")
    body = json.dumps({"type": "payment.succeeded", "data": {"id": "pay_9", "amount": 4900}}).encode()
    json_type = {"content-type": "application/json"}
    attempts = [
        {**json_type, **sign(body, secret="whsec_" + "Q" * 32, msg_id="msg_2Bc9XQ01rot")},
        {**json_type, **sign(body, secret=SECRET, msg_id="msg_2Bc9XQ01late", timestamp=int(time.time()) - 412)},
        {**json_type, "webhook-id": "msg_2Bc9XQ01bare", "authorization": "Bearer sk_live_not_shown"},
        {"content-type": "text/plain", **sign(body, secret=SECRET, msg_id="msg_2Bc9XQ01text")},
    ]
    for headers in attempts:
        assert httpx.post(server.url + "/webhooks", content=body, headers=headers).status_code in (400, 401, 415)
    wait_for_rows = "SELECT count(*) FROM rejections"
    browser.get(login_url(server))
    wait(browser, lambda d: query(tmp_path / "events.db", wait_for_rows) == [(4,)])

    browser.find_element(By.LINK_TEXT, "Rejections").click()
    wait(browser, lambda d: d.current_url == server.url + "/inspect/rejections")
    # The signature was made a moment before the request arrived: 412 s, or 413 if a second turned meanwhile.
    why = [
        re.sub("413 s old", "412 s old", td.text) for td in browser.find_elements(By.CSS_SELECTOR, "#rejections td.why")
    ]
    assert why == [
        "Content-Type 'text/plain' is not JSON",
        "header webhook-timestamp and webhook-signature missing",
        "timestamp 412 s old, tolerance 300 s",
        "not signed with the one configured secret (1 signature given)",
    ]
    rows = browser.find_elements(By.CSS_SELECTOR, "#rejections tbody tr")
    assert {round(r.rect["height"], 1) for r in rows} == {round(rows[0].rect["height"], 1)}
    screenshot(browser, tmp_path / "inspector-rejections.png")

    browser.find_element(By.LINK_TEXT, "header webhook-timestamp and webhook-signature missing").click()
    wait(browser, lambda d: d.find_elements(By.ID, "rejection-why"))
    headers = {
        row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_elements(By.CSS_SELECTOR, "table.headers tr")
    }
    assert headers["authorization"] == "[redacted]"
    assert "sk_live_not_shown" not in browser.page_source
    assert json.loads(browser.find_element(By.ID, "rejection-body").text) == json.loads(body)
    screenshot(browser, tmp_path / "rejection.png")
