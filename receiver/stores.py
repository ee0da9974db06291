"""Which store `--db` names: a `postgresql://` URL is the shared PostgreSQL store, anything else a SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable

from .errors import ConfigurationError
from .sqlite_store import SQLiteStore, connect
from .store import Store, is_postgres_url

__all__ = ["open_store", "prepare_store"]


def open_store(db: str | os.PathLike[str]) -> Store:
    """The store for `db`, created (and migrated) when it does not exist yet."""
    if is_postgres_url(db):
        return _postgres()(os.fspath(db))
    return SQLiteStore(db)


def prepare_store(db: str | os.PathLike[str]) -> None:
    """Create and migrate the store now, so a bad `--db` is one clear error before anything starts."""
    if is_postgres_url(db):
        _postgres()(os.fspath(db))  # its constructor connects and migrates; its pool opens on first use
    else:
        connect(os.fspath(db)).close()


def _postgres() -> Callable[[str], Store]:
    try:
        from .postgres_store import PostgresStore
    except ImportError as e:
        raise ConfigurationError(
            f"--db names a PostgreSQL database, but {e.name or 'psycopg'} is not installed: "
            "pip install 'montra-webhooks[postgres]'."
        ) from e
    return PostgresStore
