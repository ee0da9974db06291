"""Chromium for the browser tests: Debian's chromium and chromedriver, and the mark that skips without them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.skips import explained_skip

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

HOW_TO_GET_IT = (
    f"The browser tests need Debian's {CHROMIUM} and {CHROMEDRIVER}: `sudo apt-get install chromium chromium-driver` "
    "(.ci/run installs them)."
)


def _note() -> str:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    return f"Not found: {', '.join(missing)}. {HOW_TO_GET_IT}"


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason=explained_skip("no Chromium", _note)
)
"""`pytestmark = needs_chromium` in a module of browser tests."""


# The network here is closed: without these, Chromium keeps trying to reach Google's services.
QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
)


@contextlib.contextmanager
def chromium(profile: Path, *, width: int = 1280, height: int = 800) -> Iterator[WebDriver]:
    """A headless Chromium through chromedriver, its profile and driver log in `profile`, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*QUIET_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile / 'chromium-profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
