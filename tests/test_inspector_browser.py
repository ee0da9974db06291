"""The inspector in a real headless Chromium against a real `montra-hooks serve --inspect` process.

Each test saves a screenshot of every page it visits under its tmp_path (`*.png`). Chromium and
chromedriver are Debian's (`apt-get install chromium chromium-driver`; `.ci/run` installs them).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support.browser import CHROMEDRIVER, CHROMIUM, QUIET_FLAGS, needs_chromium
from support.db import query
from support.net import free_port
from support.server import ServerProcess
from support.signing import signed_post

pytestmark = needs_chromium

from selenium import webdriver  # noqa: E402 - after the skip, so the reason above is what a reader sees
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "inspect-token-b7d1e04c93"
ATTACKER_HOST = "evil.test"
CHROMIUM_FLAGS = (
    *QUIET_FLAGS,
    "--window-size=1280,900",
    # A hostile site's name that resolves to this machine: DNS rebinding and cross-site pages, all on loopback.
    f"--host-resolver-rules=MAP {ATTACKER_HOST} 127.0.0.1",
)

HANDLERS = """
from receiver import Event, Hooks

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
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def receiver(tmp_path: Path, serve: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    """Start `montra-hooks serve --app handlers:hooks` in tmp_path with the given extra options."""
    (tmp_path / "handlers.py").write_text(HANDLERS)

    def start(*options: str) -> ServerProcess:
        # --backoff 3600: a failed try waits an hour, so only the re-run button can run it again.
        common = ("--app", "handlers:hooks", "--db", "events.db", "--secret", SECRET, "--backoff", "3600")
        return serve(*common, *options)

    return start


def deliver(server: ServerProcess, event_type: str, msg_id: str, **data: object) -> None:
    body = json.dumps({"type": event_type, "timestamp": "2026-11-25T17:00:00Z", "data": data}).encode()
    assert signed_post(server.url + "/webhooks", body, SECRET, msg_id).status_code == 200


def login_url(server: ServerProcess) -> str:
    """The login link `serve --inspect` prints (the token it created is in it), as Jupyter prints its own."""
    match = re.search(r"inspect:  (http://\S+/inspect/login\?token=\S+) \(this machine only", server.output())
    assert match is not None, server.output()
    return match.group(1)


def screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page, not just the window: grow the window to the document's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 4000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 900)


def listed_ids(driver: WebDriver) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "#events tbody td.mono a")]


def wait(driver: WebDriver, condition: Callable[[WebDriver], object], timeout: float = 15) -> None:
    # The pages reload themselves when their data changes: an element found a moment ago may be gone.
    ignored = (StaleElementReferenceException, NoSuchElementException)
    WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=ignored).until(condition)


def test_list_filter_event_page_and_rerun(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver("--inspect")
    token = (tmp_path / ".montra-hooks" / "inspect-token").read_text().strip()
    assert login_url(server) == f"{server.url}/inspect/login?token={token}"
    deliver(server, "customer.created", "msg_cus_1", id="cus_1", email="ada@example.com")
    deliver(server, "payment.failed", "msg_pay_1", id="pay_1", customer_id="cus_1", amount=4900)
    deliver(server, "refund.created", "msg_ref_1", id="ref_1", amount=1200)
    db = tmp_path / "events.db"
    runs = "SELECT status, attempts FROM handler_runs WHERE event_id = 'msg_pay_1'"

    # The list: newest first, once the printed link has logged the browser in.
    browser.get(login_url(server))
    wait(browser, lambda d: d.current_url == server.url + "/inspect")
    wait(browser, lambda d: query(db, runs) == [("failed", 1)])
    assert listed_ids(browser) == ["msg_ref_1", "msg_pay_1", "msg_cus_1"]
    assert browser.title == "Events · montra-hooks"

    # A new event appears without a reload (the page keeps its JavaScript state).
    browser.execute_script("window.stillTheSamePage = true")
    deliver(server, "customer.updated", "msg_cus_2", id="cus_1", email="ada@lovelace.dev")
    wait(browser, lambda d: listed_ids(d)[:1] == ["msg_cus_2"])
    assert browser.execute_script("return window.stillTheSamePage") is True
    wait(
        browser,
        lambda d: "status-handled" in d.find_element(By.CSS_SELECTOR, "tr[data-seq='4'] .badge").get_attribute("class"),
    )
    screenshot(browser, tmp_path / "1-list.png")

    # A filter narrows it.
    browser.find_element(By.NAME, "type").send_keys("payment.*")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser, lambda d: "type=payment.*" in d.current_url)
    assert listed_ids(browser) == ["msg_pay_1"]
    screenshot(browser, tmp_path / "2-list-filtered-by-type.png")
    browser.get(server.url + "/inspect")
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("unhandled")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(browser, lambda d: "status=unhandled" in d.current_url)
    assert listed_ids(browser) == ["msg_ref_1"]

    # The event page shows the handler's error with its traceback.
    browser.get(server.url + "/inspect?type=payment.*")
    browser.find_element(By.LINK_TEXT, "msg_pay_1").click()
    wait(browser, lambda d: d.current_url.endswith("/inspect/events/msg_pay_1"))
    run = browser.find_element(By.CSS_SELECTOR, "article.run[data-handler='billing.email_payment_failed']")
    assert run.find_element(By.CSS_SELECTOR, "summary").text == (
        "ConnectionError: SMTP server refused the message for cus_1"
    )
    assert "Traceback (most recent call last):" in run.find_element(By.CSS_SELECTOR, "pre.traceback").text
    assert run.find_element(By.CSS_SELECTOR, ".attempt-count").text == "1"
    assert run.find_element(By.CSS_SELECTOR, ".badge").text == "failed"
    assert '"customer_id": "cus_1"' in browser.find_element(By.ID, "body").text
    # The command as the server's shell finds it: here the venv's script, by its path (it is not on PATH).
    command, _, rest = browser.find_element(By.ID, "replay-command").text.partition(" ")
    assert (Path(command).name, Path(command).is_file()) == ("montra-hooks", True)
    assert rest == f"replay --db events.db --id msg_pay_1 --to {server.url}/webhooks"
    screenshot(browser, tmp_path / "3-event-failed.png")

    # The re-run button runs the handler again; the page shows the new attempt.
    run.find_element(By.CSS_SELECTOR, "button.rerun").click()
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#event-status").text == "handled")
    run = browser.find_element(By.CSS_SELECTOR, "article.run[data-handler='billing.email_payment_failed']")
    assert run.find_element(By.CSS_SELECTOR, ".attempt-count").text == "2"
    assert run.find_element(By.CSS_SELECTOR, ".badge").text == "succeeded"
    assert run.find_elements(By.CSS_SELECTOR, "pre.traceback") == []
    assert query(db, runs) == [("succeeded", 2)]
    screenshot(browser, tmp_path / "4-event-after-rerun.png")
    assert SECRET not in browser.page_source


def test_the_token_protected_inspector_needs_a_login(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver("--inspect-token", TOKEN, "--access-log")
    deliver(server, "payment.failed", "msg_pay_1", id="pay_1", customer_id="cus_9")

    browser.get(server.url + "/inspect/events/msg_pay_1")
    wait(browser, lambda d: "/inspect/login?next=" in d.current_url)
    assert browser.find_elements(By.CSS_SELECTOR, "article.run") == []
    screenshot(browser, tmp_path / "5-login.png")

    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".alert.error"))
    screenshot(browser, tmp_path / "6-login-wrong-token.png")

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
    wait(browser, lambda d: d.current_url.endswith("/inspect/events/msg_pay_1"))
    assert "SMTP server refused the message for cus_9" in browser.find_element(By.CSS_SELECTOR, "summary").text
    cookie = browser.get_cookie("montra_inspect")
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/inspect")
    assert TOKEN not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it

    # The URL form of the login works too, and keeps the token out of the access log.
    assert httpx.get(f"{server.url}/inspect/login?token={TOKEN}").status_code == 303
    assert "GET /inspect/login?token=[redacted]" in server.output()
    assert TOKEN not in server.output() and TOKEN not in browser.page_source
    assert SECRET not in server.output()


def test_a_foreign_host_is_refused(receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path) -> None:
    # DNS rebinding: a hostile name that now resolves to 127.0.0.1. The browser sends that name as Host.
    server = receiver("--inspect")
    deliver(server, "customer.created", "msg_cus_1", id="cus_1")
    browser.get(f"http://{ATTACKER_HOST}:{server.port}/inspect")
    refusal = json.loads(browser.find_element(By.TAG_NAME, "body").text)
    assert refusal["error"] == "forbidden_host"
    assert "msg_cus_1" not in browser.page_source
    screenshot(browser, tmp_path / "7-foreign-host.png")


def test_a_cross_site_post_is_refused(
    receiver: Callable[..., ServerProcess], browser: WebDriver, tmp_path: Path
) -> None:
    server = receiver("--inspect")
    deliver(server, "payment.failed", "msg_pay_1", id="pay_1", customer_id="cus_1")
    db = tmp_path / "events.db"
    runs = "SELECT status, attempts FROM handler_runs WHERE event_id = 'msg_pay_1'"
    # The page that is open in the developer's browser is a hostile site's: it posts the re-run form itself.
    attack = (
        f'<form method="post" action="{server.url}/inspect/events/msg_pay_1/rerun">'
        '<input name="handler" value="billing.email_payment_failed"></form>'
        "<script>document.forms[0].submit()</script>"
    ).encode()
    with _site(attack) as port:
        browser.get(login_url(server))  # the developer has the inspector open (and a session), too
        wait(browser, lambda d: query(db, runs) == [("failed", 1)])
        browser.get(f"http://{ATTACKER_HOST}:{port}/")
        wait(browser, lambda d: d.current_url.startswith(server.url))
        refusal = json.loads(browser.find_element(By.TAG_NAME, "body").text)
        screenshot(browser, tmp_path / "8-cross-site-post.png")
    assert refusal["error"] == "cross_site_request"
    assert query(db, runs) == [("failed", 1)]


class _site:
    """A one-page web server on a free loopback port: the hostile site."""

    def __init__(self, page: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
