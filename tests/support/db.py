"""Reading a SQLite store from a test (PostgreSQL: `support.postgres.pg_query`)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read a store as a user would (sqlite-utils, Datasette): on a connection of our own, closed after."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()
