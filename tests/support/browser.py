"""Chromium for the browser tests: Debian's chromium and chromedriver, and the mark that skips without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.skips import explained_skip

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
