"""docs/worked-example.md, run as a reader would: its files written out, its commands run, its test passing.

The page's titled blocks become files in a fresh project folder; a real `montra-hooks serve --app` runs the
handler, `trigger` sends it an event, `fixtures record` saves that event, and pytest (a subprocess with the
plugin loaded from its entry point, as in a merchant's checkout) runs the page's test on the recording.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from support.db import query
from support.server import MONTRA_HOOKS, ServerProcess
from support.wait import wait_until

PAGE = Path(__file__).resolve().parents[1] / "docs" / "worked-example.md"
_TITLED = re.compile(r'^```(?P<lang>\w+) title="(?P<path>[^"]+)"\n(?P<code>.*?)^```\s*$', re.MULTILINE | re.DOTALL)
COMMANDS = [
    "montra-hooks serve --app myshop.webhooks:hooks",
    "montra-hooks trigger subscription.upgraded --set data.pricing_model_id=pm_business",
    "montra-hooks events list --type subscription.upgraded --limit 1",
    "montra-hooks fixtures record ID --as upgrade-to-business --scrub",
    "pytest tests/test_webhooks.py",
]


def montra_hooks(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MONTRA_HOOKS_FIXTURES": "", "MONTRA_HOOKS_SECRETS": ""}
    return subprocess.run(
        [str(MONTRA_HOOKS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_page_names_the_files_and_commands_this_test_runs() -> None:
    page = PAGE.read_text()
    assert [m["path"] for m in _TITLED.finditer(page)] == [
        "myshop/db.py",
        "myshop/webhooks.py",
        "pyproject.toml",
        "tests/test_webhooks.py",
    ]
    for command in COMMANDS:
        assert command in page, command


def test_the_worked_example_runs_as_written(serve: Callable[..., ServerProcess], tmp_path: Path) -> None:
    for block in _TITLED.finditer(PAGE.read_text()):
        path = tmp_path / block["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block["code"])
    # No --secret: on loopback, serve creates the dev secret that trigger then signs with, as on the page.
    server = serve("--app", "myshop.webhooks:hooks", "--db", "montra-events.db")

    sent = montra_hooks(
        "trigger", "subscription.upgraded", "--set", "data.pricing_model_id=pm_business",
        "--to", f"{server.url}/webhooks", cwd=tmp_path,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stdout + sent.stderr
    listed = montra_hooks("events", "list", "--type", "subscription.upgraded", "--limit", "1", "--json", cwd=tmp_path)
    [event] = [json.loads(line) for line in listed.stdout.splitlines()]
    db = tmp_path / "montra-events.db"
    wait_until(
        lambda: query(db, "SELECT status FROM handler_runs WHERE event_id = ?", (event["id"],)),
        until=lambda runs: runs == [("succeeded",)],
        timeout=20,
        what="the handler to apply the triggered upgrade",
    )
    recorded = montra_hooks("fixtures", "record", event["id"], "--as", "upgrade-to-business", "--scrub", cwd=tmp_path)
    assert recorded.stdout.splitlines() == [
        "Scrubbed nothing: no email, name, phone, address or card number found.",
        f"Saved subscription.upgraded [{event['id']}] as montra-fixtures/upgrade-to-business.json: "
        "send it with `montra-hooks trigger upgrade-to-business`.",
    ]
    server.terminate()

    tested = subprocess.run(
        # The console script, not `python -m pytest` (which would put the folder on sys.path by itself).
        [str(Path(sys.executable).parent / "pytest"), "tests/test_webhooks.py", "-p", "no:cacheprovider", "-q"],
        cwd=tmp_path,
        env={**os.environ, "MONTRA_HOOKS_FIXTURES": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert re.search(r"^3 passed", tested.stdout, re.MULTILINE), tested.stdout
