"""Which store `--db` names: a `postgresql://` URL is the shared PostgreSQL store, anything else a SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..errors import ConfigurationError
from .protocol import Store
from .sqlite.store import SQLiteStore, connect

__all__ = ["DEFAULT_DB", "is_postgres_url", "open_store", "prepare_store", "redact_url"]

DEFAULT_DB = "montra-events.db"
"""The SQLite file a store command uses when neither --db nor MONTRA_HOOKS_DB names one."""


def open_store(db: str | os.PathLike[str], *, readonly: bool = False) -> Store:
    """The store for `db`, created (and migrated) when it does not exist yet.

    `readonly=True`, for commands that only read: an existing store, never created, migrated or written;
    ConfigurationError, naming it, when it is missing, empty or not a montra-webhooks store.
    """
    if is_postgres_url(db):
        return _postgres()(os.fspath(db), readonly=readonly)
    return SQLiteStore(db, readonly=readonly)


def prepare_store(db: str | os.PathLike[str]) -> None:
    """Create and migrate the store now, so a bad `--db` is one clear error before anything starts."""
    if is_postgres_url(db):
        _postgres()(os.fspath(db))  # its constructor connects and migrates; its pool opens on first use
    else:
        connect(os.fspath(db)).close()


def _postgres() -> Callable[..., Store]:
    try:
        from .postgres.store import PostgresStore
    except ImportError as e:
        raise ConfigurationError(
            f"--db names a PostgreSQL database, but {e.name or 'psycopg'} is not installed: "
            "pip install 'montra-webhooks[postgres]'."
        ) from e
    return PostgresStore


def is_postgres_url(db: object) -> bool:
    """True when `--db` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL without its password (user info or `password=`): what logs, the inspector and `store.path` show."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(name, value) for name, value in params if name != "password"]
    if parts.password is None and len(kept) == len(params):
        return url
    netloc = parts.netloc if parts.password is None else f"{parts.username or ''}@{parts.netloc.rpartition('@')[2]}"
    query = urlencode(kept, safe="/:", quote_via=quote)
    # Not urlunsplit: it writes `postgresql:///db` (no host: the local socket) as `postgresql:/db`.
    return (
        f"{parts.scheme}://{netloc}{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
