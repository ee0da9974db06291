"""The embedded SQLite store: its schema, its statements and group commit (one fsync per batch of writes)."""

from .store import SQLiteStore, connect

__all__ = ["SQLiteStore", "connect"]
