"""Fixtures shared by the tests; helpers live in tests/support/ (see its `__init__`).

Append new shared fixtures here; keep each one small and documented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.server import ServerProcess

# The PostgreSQL fixtures (postgres_url, store_url) are a plugin of their own, so a pytester run can load them alone;
# `support.skips` says once, at the end of a run, why tests were skipped. tests/ is on sys.path like this conftest.
pytest_plugins = ["support.postgres", "support.skips"]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `serve(*args, **kwargs)` starts a `ServerProcess` in tmp_path; all are killed at teardown.

    >>> server = serve("--secret", SECRET, "--db", "events.db")
    """
    servers: list[ServerProcess] = []

    def start(*args: str, **kwargs: object) -> ServerProcess:
        kwargs.setdefault("cwd", tmp_path)
        kwargs.setdefault("name", f"server{len(servers)}")
        server = ServerProcess(args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()
