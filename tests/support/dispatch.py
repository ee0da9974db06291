"""Helpers shared by the dispatch tests: event bodies, reading `handler_runs`, and waiting for runs to settle.

Servers are started with tests/conftest.py's `serve` fixture; this only adds what dispatch tests need.
Waits use `support.wait.wait_until` (imported by the tests from there).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from receiver.stores.open import is_postgres_url
from receiver.stores.protocol import iso
from support.wait import wait_until

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECORDING_APP = Path(__file__).resolve().parent / "apps" / "recording.py"
FINAL = frozenset({"succeeded", "dead"})


def envelope(event_type: str, **data: Any) -> bytes:
    """A Montra event body of `event_type` with `data`."""
    return json.dumps({"type": event_type, "timestamp": "2026-11-25T17:00:00Z", "data": data}).encode()


def install_recording_app(folder: Path) -> Path:
    """Copy the recording handlers into `folder` (as `recording.py`); return the JSON-lines log they write."""
    shutil.copy(RECORDING_APP, folder / "recording.py")
    return folder / "runs.jsonl"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The lines the recording handlers wrote, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def runs(db: Path | str, event_id: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """`handler_runs` rows keyed by (event_id, handler), read on a connection of their own (times as ISO text)."""
    if is_postgres_url(db):
        sql = "SELECT * FROM handler_runs" + (" WHERE event_id = %s" if event_id else "")
        with psycopg.connect(str(db), row_factory=dict_row) as pg:
            found = pg.execute(sql.encode(), (event_id,) if event_id else None).fetchall()
        rows = [{k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()} for row in found]
        return {(row["event_id"], row["handler"]): row for row in rows}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        sql = "SELECT * FROM handler_runs" + (" WHERE event_id = ?" if event_id else "")
        rows = conn.execute(sql, (event_id,) if event_id else ()).fetchall()
    return {(row["event_id"], row["handler"]): dict(row) for row in rows}


def event_status(db: Path | str, event_id: str) -> str:
    if is_postgres_url(db):
        with psycopg.connect(str(db)) as pg:
            row = pg.execute("SELECT status FROM events WHERE id = %s", (event_id,)).fetchone()
        assert row is not None, f"no event {event_id}"
        return str(row[0])
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        status: str = conn.execute("SELECT status FROM events WHERE id = ?", (event_id,)).fetchone()[0]
    return status


def settled(db: Path | str, expected: int, statuses: frozenset[str] = FINAL) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until `expected` runs exist and every one has a status in `statuses`; return them."""

    def check() -> dict[tuple[str, str], dict[str, Any]]:
        found = runs(db)
        done = len(found) == expected and all(row["status"] in statuses for row in found.values())
        return found if done else {}

    return wait_until(check, what=f"{expected} runs to be {sorted(statuses)}")
