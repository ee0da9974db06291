"""Files: the store's private modes, read-only opening that changes nothing, /healthz's free-space rule, .montra-hooks/.

The database holds every webhook received: it and its -wal/-shm are created 0600 whatever the umask, and an
existing file's mode is left alone. Commands that only read open a store with `open_store(db, readonly=True)`,
which never creates, migrates or writes a file, and names the file when it is not a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from support.signing import signed_post

from receiver import create_app
from receiver.app import MIN_FREE_BYTES
from receiver.dev_secret import load_dev_secret, load_or_create_dev_secret
from receiver.errors import ConfigurationError, StoreUnavailable
from receiver.stores.open import open_store
from receiver.stores.protocol import EventFilter, Incoming
from receiver.stores.sqlite.schema import SCHEMA_VERSION
from receiver.stores.sqlite.store import SQLiteStore
from receiver.verify import generate_secret

SECRET = generate_secret()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def store_one_event(db: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(db)
        try:
            await store.ingest(Incoming("evt_1", "customer.created", None, 1.0, {}, b'{"type": "customer.created"}'))
            modes = {p.name: mode(p) for p in db.parent.glob(db.name + "*")}
            assert set(modes) == {db.name, db.name + "-wal", db.name + "-shm"}, modes  # all three exist now
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o000, 0o077])
def test_a_new_database_and_its_wal_are_created_owner_only(tmp_path: Path, mask: int) -> None:
    db = tmp_path / "events.db"
    modes: dict[str, str] = {}

    async def main() -> None:
        store = SQLiteStore(db)
        try:
            await store.ingest(Incoming("evt_1", "customer.created", None, 1.0, {}, b'{"type": "customer.created"}'))
            modes.update({p.name: mode(p) for p in sorted(tmp_path.glob("events.db*"))})  # noqa: ASYNC240
        finally:
            await store.close()

    with umask(mask):
        asyncio.run(main())
    assert modes == {"events.db": "0o600", "events.db-wal": "0o600", "events.db-shm": "0o600"}


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    db.touch()
    db.chmod(0o640)
    store_one_event(db)
    assert mode(db) == "0o640"


def _not_montra(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()


def _newer(path: Path) -> None:
    store_one_event(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.db", None, "No event store at {path}: the file does not exist. Pass the --db that "
         "`montra-hooks serve` uses."),
        ("empty.txt", lambda p: p.touch(), "{path} is empty (0 bytes), not an event store: pass the --db that "
         "`montra-hooks serve` uses."),
        ("notes.txt", lambda p: p.write_text("not a database\n" * 100), "{path} is not a montra-webhooks event "
         "store: pass the --db that `montra-hooks serve` uses (file is not a database)."),
        ("other.db", _not_montra, "{path} is not a montra-webhooks event store: pass the --db that "
         "`montra-hooks serve` uses."),
        ("newer.db", _newer, f"The event store at {{path}} has schema version {SCHEMA_VERSION + 1}, newer than this "
         f"montra-webhooks understands ({SCHEMA_VERSION}): upgrade montra-webhooks."),
        ("folder", lambda p: p.mkdir(), "{path} is a folder, not an event store: pass the database file as --db."),
    ],
)  # fmt: skip
def test_opening_read_only_refuses_what_is_not_a_store_and_changes_nothing(
    tmp_path: Path, name: str, make: object, message: str
) -> None:
    path = tmp_path / name
    if callable(make):
        make(path)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    with pytest.raises(ConfigurationError) as raised:
        open_store(str(path), readonly=True)
    assert str(raised.value) == message.format(path=path)
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    # Reading a WAL database takes its -shm (SQLite's shared lock index) and an empty -wal: nothing else appears.
    sides = {f"{name}-wal", f"{name}-shm"} if name == "newer.db" else set()
    assert {n: v for n, v in after.items() if n not in sides} == before
    assert set(after) - set(before) == sides


def test_opening_read_only_reads_a_store_and_leaves_its_bytes_alone(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store_one_event(db)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()

    async def main() -> tuple[list[str], str]:
        store = open_store(str(db), readonly=True)
        try:
            listed = [event.id for event in await store.list_events(EventFilter())]
            with pytest.raises(StoreUnavailable) as raised:
                await store.ingest(Incoming("evt_2", "customer.created", None, 2.0, {}, b"{}"))
            return listed, str(raised.value)
        finally:
            await store.close()

    assert asyncio.run(main()) == (
        ["evt_1"],
        f"The event store at {db} is open read-only: nothing can be written to it.",
    )
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    ("max_body", "min_free_bytes", "expected"),
    [
        (1024 * 1024, None, MIN_FREE_BYTES),  # 64 MiB is more than 4 x 1 MiB
        (32 * 1024 * 1024, None, 128 * 1024 * 1024),  # 4 x 32 MiB is more than 64 MiB
        (1024 * 1024, 0, 0),
    ],
)
def test_the_free_space_threshold(tmp_path: Path, max_body: int, min_free_bytes: int | None, expected: int) -> None:
    app = create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], max_body=max_body, min_free_bytes=min_free_bytes)
    assert app.min_free_bytes == expected


def test_healthz_is_503_when_the_disk_has_less_free_space_than_the_threshold(tmp_path: Path) -> None:
    disk = os.statvfs(tmp_path)
    free = disk.f_bavail * disk.f_frsize
    above = free + 2**50  # more than this disk has free, whatever it is doing meanwhile
    app = create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], min_free_bytes=above)
    with TestClient(app) as client:
        response = client.get("/healthz")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "low_disk_space"
        assert body["message"].startswith("Only ")
        assert body["message"].endswith(f"MiB are free on the event store's disk, below the {above / 2**20:.1f} MiB "
                                        "kept for incoming webhooks: free some space.")  # fmt: skip
        # Webhooks are still taken while there is room: /healthz warns before the disk is full.
        posted = signed_post("/webhooks", b'{"type": "customer.created"}', SECRET, "msg_1", client=client)
        assert (posted.status_code, posted.json()) == (200, {"id": "msg_1", "status": "stored"})

    roomy = create_app(db=str(tmp_path / "events.db"), secrets=[SECRET], min_free_bytes=1)
    with TestClient(roomy) as client:
        assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("mask", [0o022, 0o000])
def test_the_dev_secret_folder_is_created_owner_only(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "project" / ".montra-hooks" / "dev-secret"
    with umask(mask):
        secret, created = load_or_create_dev_secret(path)
    assert created and load_dev_secret(path) == secret
    assert (mode(path.parent), mode(path)) == ("0o700", "0o600")


def test_an_existing_state_folder_is_tightened_to_its_owner(tmp_path: Path) -> None:
    folder = tmp_path / ".montra-hooks"
    folder.mkdir()
    folder.chmod(0o750)
    load_or_create_dev_secret(folder / "dev-secret")
    assert mode(folder) == "0o700"
