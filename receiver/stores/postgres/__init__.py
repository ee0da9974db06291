"""The PostgreSQL store, for several receivers on one database (needs the `postgres` extra: psycopg 3)."""

from .store import PostgresStore

__all__ = ["PostgresStore"]
