"""The PostgreSQL fixtures: a fresh schema per test that every connection uses, dropped at teardown."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from support.postgres import ENV, pg_query, postgres_base_url, with_search_path

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent


def schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]


def test_connections_use_a_fresh_empty_schema(postgres_url: str) -> None:
    schema = schema_of(postgres_url)
    assert schema.startswith("t_")
    with psycopg.connect(postgres_url) as conn:
        # current_schema() is the first schema of the path that exists: the fixture created it.
        assert conn.execute("SELECT current_setting('search_path'), current_schema()").fetchone() == (schema, schema)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)).fetchone() == (0,)
        conn.execute("CREATE TABLE events (id text PRIMARY KEY)")
        conn.execute("INSERT INTO events VALUES ('evt_1')")
    assert pg_query(postgres_url, "SELECT id FROM events") == [("evt_1",)]
    # Other runs' tests (their own t_ schemas) may hold an `events` table at this moment: look past those only.
    in_schemas = (
        "SELECT schemaname FROM pg_tables WHERE tablename = 'events' AND (schemaname = %s OR schemaname !~ '^t_')"
    )
    assert pg_query(postgres_url, in_schemas, (schema,)) == [(schema,)]
    assert pg_query(postgres_url, "SELECT count(*) FROM events WHERE id LIKE 'evt%'") == [(1,)]
    assert pg_query(postgres_url, "SET lock_timeout = '1s'") == []


def test_a_pool_uses_the_schema_too(postgres_url: str) -> None:
    async def search_paths() -> list[str]:
        async with AsyncConnectionPool(postgres_url, min_size=2, open=False) as pool:
            paths = []
            async with pool.connection() as first, pool.connection() as second:
                for conn in (first, second):
                    row = await (await conn.execute("SHOW search_path")).fetchone()
                    assert row is not None
                    paths.append(row[0])
            return paths

    schema = schema_of(postgres_url)
    assert asyncio.run(search_paths()) == [schema, schema]


def test_options_already_in_the_url_are_kept() -> None:
    url = "postgresql://app@db.internal:5433/montra?sslmode=require&options=-cstatement_timeout%3D5000"
    assert with_search_path(url, "t_1") == (
        "postgresql://app@db.internal:5433/montra?sslmode=require&options=-cstatement_timeout%3D5000%20-csearch_path%3Dt_1"
    )
    assert (
        with_search_path("postgresql:///montra_test", "t_1") == "postgresql:///montra_test?options=-csearch_path%3Dt_1"
    )


def test_store_url_is_a_sqlite_file_then_a_postgres_schema(
    store_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if request.node.callspec.id == "sqlite":
        assert store_url == str(tmp_path / "events.db")
    else:
        assert request.node.callspec.id == "postgres"
        assert pg_query(store_url, "SHOW search_path") == [(schema_of(store_url),)]


def test_each_test_gets_its_own_schema_dropped_at_teardown(pytester: pytest.Pytester, postgres_url: str) -> None:
    seen = pytester.path / "seen.jsonl"
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makeconftest('pytest_plugins = ["support.postgres"]')
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            f"""
            import json

            from support.postgres import pg_query


            def record(url):
                (path,) = pg_query(url, "SHOW search_path")[0]
                tables = pg_query(url, "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (path,))
                pg_query(url, "CREATE TABLE events (id text)")
                with open({str(seen)!r}, "a") as f:
                    f.write(json.dumps([path, tables[0][0]]) + "\\n")


            def test_one(postgres_url):
                record(postgres_url)


            def test_two(postgres_url):
                record(postgres_url)


            def test_both_backends(store_url):
                if store_url.startswith("postgresql:"):
                    record(store_url)
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_both_backends?sqlite? PASSED*", "*test_both_backends?postgres? PASSED*"])
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    schemas = [schema for schema, _ in rows]
    assert [tables for _, tables in rows] == [0, 0, 0]  # each one fresh, although each test created `events`
    assert len(set(schemas)) == 3
    assert schema_of(postgres_url) not in schemas
    base = postgres_base_url()
    assert base is not None
    assert pg_query(base, "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,)) == []


def test_a_promised_server_that_does_not_answer_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "postgresql:///montra_test?host=/nonexistent")
    pytester.makeconftest('pytest_plugins = ["support.postgres"]')
    pytester.makepyfile(test_inner="def test_it(postgres_url):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*{ENV} is set but the server does not answer: postgresql:///montra_test?host=/nonexistent: *"]
    )


def test_without_a_server_the_postgres_tests_are_skipped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("PGHOST", "/nonexistent")  # libpq's default socket directory: no local server answers
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    pytester.makeconftest('pytest_plugins = ["support.postgres"]')
    pytester.makepyfile(test_inner="def test_it(store_url):\n    pass\n\ndef test_pg(postgres_url):\n    pass\n")
    # A process of its own: this one has already found (and cached) the local server.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    # Each skip's line is short; why, and how to get a server, is said once.
    result.stdout.fnmatch_lines(
        [
            "*- 2 skipped: no PostgreSQL server -*",
            "No PostgreSQL server answered (postgresql:///montra_test: *; postgresql:///postgres: *). "
            "To run these tests: run .ci/run *",
            "*short test summary info*",
            "SKIPPED [[]1[]] test_inner.py:1: no PostgreSQL server (see the note at the end of the run)",
            "SKIPPED [[]1[]] test_inner.py:4: no PostgreSQL server (see the note at the end of the run)",
        ]
    )
    assert result.stdout.str().count("No PostgreSQL server answered") == 1
    assert result.stdout.str().count("run .ci/run") == 1
