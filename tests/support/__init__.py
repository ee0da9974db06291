"""Helpers for the tests, one module per kind; fixtures stay in tests/conftest.py.

tests/ is on sys.path (pytest puts a conftest's folder there when it has no `__init__.py`), so test modules
import `from support.server import ServerProcess`. Modules:

- `net`: `free_port`;
- `wait`: `wait_until` (and `wait_until_async`), the one way to poll for a state;
- `server`: `MONTRA_HOOKS`, `START_TIMEOUT`, `ServerProcess` (a real `montra-hooks serve`);
- `signing`: `signed_post`, `async_post`;
- `sse`: `sse_frame`;
- `db`: `query` (read a SQLite store);
- `postgres`: the PostgreSQL fixtures (a pytest plugin) and `pg_query`, `postgres_base_url`;
- `browser`: where Chromium is, and the mark that skips the browser tests without it;
- `skips`: a pytest plugin that explains each kind of skip once, at the end of the run;
- `dispatch`, `instances`, `tunnel`: what the dispatch, multi-instance and tunnel tests share;
- `apps/`: programs the tests run (`recording.py` handlers, `tunnel_target.py`).
"""
