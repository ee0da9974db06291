"""Where events live: the `Store` protocol every backend implements, and `open_store`, which picks one.

SQLite (`stores.sqlite`) is the embedded default; PostgreSQL (`stores.postgres`, `--db postgresql://...`)
serves several receivers behind one load balancer. Nothing here knows of HTTP.
"""

from .open import DEFAULT_DB, is_postgres_url, open_store, prepare_store, redact_url
from .protocol import EventFilter, Incoming, IngestResult, Run, Store, StoredEvent

__all__ = [
    "DEFAULT_DB",
    "EventFilter",
    "Incoming",
    "IngestResult",
    "Run",
    "Store",
    "StoredEvent",
    "is_postgres_url",
    "open_store",
    "prepare_store",
    "redact_url",
]
