"""PostgreSQL for the tests: the server's URL, a fresh schema per test, a store URL for both backends.

Registered from conftest.py (`pytest_plugins = ["support.postgres"]`), so the fixtures are there in every test:

    def test_events_are_stored(store_url):      # runs twice: [sqlite] and [postgres]
        ...

    def test_a_row(postgres_url):                # PostgreSQL only: a fresh, empty schema
        assert pg_query(postgres_url, "SELECT count(*) FROM events") == [(0,)]

The server: env MONTRA_TEST_POSTGRES_URL (`.ci/run` sets it after starting Debian's cluster), else a local server
on the default Unix socket (`postgresql:///montra_test`, then `postgresql:///postgres`). Without one, the
PostgreSQL tests are skipped, unless MONTRA_TEST_POSTGRES_URL is set: then they fail, since CI promised a server.
A skip's line is short; why no server answered and how to get one is said once, at the end of the run.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import psycopg
import pytest
from psycopg import sql as pgsql

from receiver.stores.open import redact_url
from support.skips import explained_skip

# The plugin that prints, once, why PostgreSQL tests were skipped: loaded with this one, wherever it is loaded.
pytest_plugins = ["support.skips"]

ENV = "MONTRA_TEST_POSTGRES_URL"
"""The server CI provides; when it is set, a server that does not answer fails the tests instead of skipping them."""

LOCAL_URLS = ("postgresql:///montra_test", "postgresql:///postgres")
"""Tried in turn without the variable: a local server on its Unix socket, as this user (peer auth)."""

CONNECT_TIMEOUT = 3
"""Seconds to wait for a server: a missing one answers at once on a socket; this bounds a silent TCP host."""

DROP_LOCK_TIMEOUT = "10s"
"""How long teardown's DROP SCHEMA waits for a lock: a transaction left open by the code under test then fails
the test with a lock timeout rather than hanging until the per-test timeout."""

HOW_TO_GET_ONE = (
    "run .ci/run (on Debian it installs and starts one), or set MONTRA_TEST_POSTGRES_URL=postgresql://USER@HOST/DB, "
    "or on Debian: `sudo apt-get install postgresql && sudo -u postgres createuser --superuser $USER "
    "&& sudo -u postgres createdb montra_test`"
)


def _connects(url: str) -> str | None:
    """None if `url` connects, else why not (one line)."""
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        lines = str(e).strip().splitlines()  # libpq adds hint lines ("Is the server running...?"): the first says it
        return f"{redact_url(url)}: {lines[0] if lines else type(e).__name__}"
    return None


@functools.cache
def _probe(env_url: str | None) -> tuple[str | None, str]:
    """(the URL that connects or None, why none did); keyed on the variable's value, so once per session."""
    candidates = [env_url] if env_url else list(LOCAL_URLS)
    failures = []
    for url in candidates:
        failure = _connects(url)
        if failure is None:
            return url, ""
        failures.append(failure)
    return None, "; ".join(failures)


def _why_skipped() -> str:
    return f"No PostgreSQL server answered ({_probe(None)[1]}). To run these tests: {HOW_TO_GET_ONE}."


SKIP_REASON = explained_skip("no PostgreSQL server", _why_skipped)
"""The reason on each skipped test's line; the note, printed once, says which URLs were tried and what they said."""


def postgres_base_url() -> str | None:
    """The test server's URL: MONTRA_TEST_POSTGRES_URL, else the first local URL that connects; None if none does.

    Probed once per session (per value of the variable).
    """
    return _probe(os.environ.get(ENV) or None)[0]


def with_search_path(url: str, schema: str) -> str:
    """`url` with `options=-csearch_path=<schema>` added: every connection made from it uses that schema.

    libpq reads `options` for psycopg.connect and psycopg_pool alike; options already in the URL are kept.
    """
    # Not urlsplit/urlunsplit: they turn `postgresql:///db` (the default socket, an empty host) into `postgresql:/db`.
    base, _, query = url.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    options = params.get("options", "")
    params["options"] = f"{options} -csearch_path={schema}".lstrip()
    return f"{base}?{urlencode(params, quote_via=quote, safe='')}"


def pg_query(url: str, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of our own (closed after) and return its rows ([] if it has none).

    >>> pg_query(postgres_url, "SELECT status FROM events WHERE id = %s", ("evt_1",))
    """
    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        # No parameters: None, so a literal % in the SQL needs no doubling.
        cursor = conn.execute(sql, params or None)
        return cursor.fetchall() if cursor.description is not None else []


def require_postgres() -> str:
    """The test server's URL; skips the calling test without one, or fails it if MONTRA_TEST_POSTGRES_URL is set."""
    env_url = os.environ.get(ENV) or None
    base, why = _probe(env_url)
    if base is None:
        if env_url:
            pytest.fail(f"{ENV} is set but the server does not answer: {why}", pytrace=False)
        pytest.skip(SKIP_REASON)
    return base


@pytest.fixture
def postgres_server() -> str:
    """The test server's URL as it is (no schema of its own), for code that makes its own; skips or fails as above.

    A fixture rather than a call in the test, so a skip's line names the test, not this module.
    """
    return require_postgres()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to the test database whose connections use a fresh, empty schema (`t_<hex>`), dropped at teardown.

    Skips the test without a server; fails it if MONTRA_TEST_POSTGRES_URL is set but does not connect.
    Teardown terminates nothing: the code under test closes its own connections.
    """
    base = require_postgres()
    schema = f"t_{secrets.token_hex(8)}"
    with psycopg.connect(base, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
    yield with_search_path(base, schema)
    with psycopg.connect(base, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(pgsql.SQL("SET lock_timeout = {}").format(pgsql.Literal(DROP_LOCK_TIMEOUT)))
        conn.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The `--db` of a store on each backend in turn: a SQLite file in tmp_path, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
