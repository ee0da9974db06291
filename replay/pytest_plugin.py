"""pytest plugin: build, sign and send Montra events to your handlers in-process.

Installed with montra-webhooks and registered as the `montra_hooks` pytest11 entry point, so its
fixtures are there in every test; nothing to import or configure. No pytest-asyncio is needed.

- `montra_app(hooks, **create_app_options)` -> `MontraTestApp`: a real receiver (`create_app`)
  on a temporary SQLite store with `dispatch="inline"`, behind Starlette's TestClient. `send()`
  signs and POSTs an event and returns once its handlers have run, so a test asserts right after.
- `montra_event(type, set=..., add=..., remove=..., **paths)` -> dict: a fixture event with overrides
  (`set` and `**paths` change paths the fixture has, so a typo is an error; `add` may add new keys).
- `montra_scenario(name, set=..., add=..., remove=...)` -> list[dict]: a scenario's events, in order.
- `montra_sign(event, msg_id=..., timestamp=...)` -> `Signed(body, headers)` with `montra_secret`.
- `montra_secret`: the fresh `whsec_` secret this test's apps check.

Your own fixture folders win over the built-in ones: set `montra_fixtures = tests/montra-fixtures`
in the pytest ini (paths relative to it), or env `MONTRA_HOOKS_FIXTURES`; with neither, the rootdir's
`montra-fixtures` folder (where `montra-hooks fixtures record` saves) is read when it exists.

    def test_upgrade_grants_the_plan(montra_app):
        app = montra_app(hooks)
        response = app.send("subscription.upgraded", set={"data.customer_id": "cus_1"})
        assert response.json()["status"] == "stored"
        assert [run.status for run in app.runs(response.json()["id"])] == ["succeeded"]
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pytest

if TYPE_CHECKING:
    # Starlette's TestClient is built on httpx2 (on httpx, with a deprecation warning, without it).
    from httpx2 import Response
    from starlette.testclient import TestClient

    from receiver.app import MontraApp
    from receiver.hooks import Hooks
    from receiver.stores.protocol import Run, Store, StoredEvent

    from .fixtures import Catalogue

__all__ = ["MontraTestApp", "Signed"]

_Event = str | Mapping[str, Any] | bytes
T = TypeVar("T")


class Signed(NamedTuple):
    """A body and the three Standard Webhooks headers that sign it (plus content-type)."""

    body: bytes
    headers: dict[str, str]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "montra_fixtures",
        "Folders of your own Montra fixtures (TYPE.json, scenarios/NAME.json), winning over the built-in ones.",
        type="paths",
        default=[],
    )


def _assignments(set: Mapping[str, Any] | None, paths: Mapping[str, Any]) -> dict[str, Any]:
    return {**(set or {}), **paths}


def _sign(event: Mapping[str, Any] | bytes, secret: str, msg_id: str | None, timestamp: float | None) -> Signed:
    from receiver.verify import sign

    from .sources import encode_event

    body = event if isinstance(event, bytes) else encode_event(event)
    if msg_id is None and isinstance(event, Mapping) and isinstance(event.get("id"), str):
        msg_id = event["id"]  # the envelope's id, so that event.id in a handler is the one the test built
    headers = {"content-type": "application/json", **sign(body, secret=secret, msg_id=msg_id, timestamp=timestamp)}
    return Signed(body, headers)


class MontraTestApp:
    """A receiver under test: send signed events through HTTP (in-process) and read what it stored."""

    def __init__(self, app: MontraApp, client: TestClient, *, secret: str, catalogue: Catalogue) -> None:
        self.app = app
        self.client = client
        self.secret = secret
        self.catalogue = catalogue

    def send(
        self,
        event: _Event,
        *,
        set: Mapping[str, Any] | None = None,
        add: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        msg_id: str | None = None,
        timestamp: float | datetime | None = None,
        headers: Mapping[str, str] | None = None,
        **paths: Any,
    ) -> Response:
        """Sign and POST one event: a fixture type (built with `set`/`add`/`remove`/`**paths`), an envelope or bytes.

        Returns when the receiver has answered, which (inline dispatch) is after its handlers ran:
        200 `{"id", "status": "stored" | "duplicate"}`, 500 `handler_failed` if one raised, or an error.
        """
        if isinstance(event, str):
            built = self.catalogue.build(event, set=_assignments(set, paths), add=add or {}, remove=remove)
            if len(built) != 1:
                raise ValueError(f"{event!r} is a scenario of {len(built)} events: use trigger({event!r})")
            event = built[0]
        elif set or add or paths or remove:
            raise TypeError("set=, add=, remove= and path overrides apply to a fixture type, not to a built event")
        stamp = timestamp.timestamp() if isinstance(timestamp, datetime) else timestamp
        signed = _sign(event, self.secret, msg_id, stamp)
        return self.client.post(self.app.path, content=signed.body, headers={**signed.headers, **(headers or {})})

    def trigger(
        self,
        name: str,
        *,
        set: Mapping[str, Any] | None = None,
        add: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> list[Response]:
        """Send a type's event or each of a scenario's events in order; one response per event."""
        built = self.catalogue.build(name, set=set or {}, add=add or {}, remove=remove)
        return [self.send(event) for event in built]

    @property
    def store(self) -> Store:
        return self.app.store

    def events(self) -> list[StoredEvent]:
        """Every stored event, oldest first."""
        from receiver.stores.protocol import EventFilter

        return self._call(self.app.store.list_events, EventFilter())

    def event(self, event_id: str) -> StoredEvent | None:
        return self._call(self.app.store.get_event, event_id)

    def runs(self, event_id: str) -> list[Run]:
        """The handler runs of one event (status, attempts, last_error, ...), by handler name."""
        return self._call(self.app.store.get_runs, event_id)

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        # The store belongs to the app's event loop, which the TestClient runs in its portal thread.
        portal = self.client.portal
        assert portal is not None, "the TestClient is closed: use the app inside the test that made it"
        return portal.call(fn, *args)


@pytest.fixture
def montra_secret() -> str:
    """A fresh `whsec_` secret: `montra_app` apps check it and `montra_sign` signs with it."""
    from receiver.verify import generate_secret

    return generate_secret()


@pytest.fixture
def montra_catalogue(pytestconfig: pytest.Config) -> Catalogue:
    """The fixture catalogue: the ini's `montra_fixtures` folders, env MONTRA_HOOKS_FIXTURES, then built-ins.

    With neither, `montra-fixtures` in the rootdir (beside pytest.ini or pyproject.toml) when it exists:
    the folder `montra-hooks fixtures record` saves to when run there.
    """
    from .fixtures import Catalogue, default_user_dirs

    folders: list[Path] = list(pytestconfig.getini("montra_fixtures"))
    env = os.environ.get("MONTRA_HOOKS_FIXTURES")
    if env:
        folders.extend(Path(folder) for folder in env.split(os.pathsep) if folder)
    return Catalogue(folders or default_user_dirs(pytestconfig.rootpath))


@pytest.fixture
def montra_event(montra_catalogue: Catalogue) -> Callable[..., dict[str, Any]]:
    """Factory: `montra_event("refund.created", set={"data.amount": 1200}, remove=["data.reason"])` -> envelope.

    Path overrides also go as keywords: `montra_event("refund.created", **{"data.amount": 1200})`.
    """

    def build(
        type: str,
        *,
        set: Mapping[str, Any] | None = None,
        add: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        **paths: Any,
    ) -> dict[str, Any]:
        events = montra_catalogue.build(type, set=_assignments(set, paths), add=add or {}, remove=remove)
        if len(events) != 1:
            raise ValueError(f"{type!r} is a scenario of {len(events)} events: use montra_scenario({type!r})")
        return events[0]

    return build


@pytest.fixture
def montra_scenario(montra_catalogue: Catalogue) -> Callable[..., list[dict[str, Any]]]:
    """Factory: `montra_scenario("checkout-to-subscription", set={"customer:data.email": "a@x.test"})` -> events."""

    def build(
        name: str,
        *,
        set: Mapping[str, Any] | None = None,
        add: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        return montra_catalogue.build(name, set=set or {}, add=add or {}, remove=remove)

    return build


@pytest.fixture
def montra_sign(montra_secret: str) -> Callable[..., Signed]:
    """Factory: `body, headers = montra_sign(event)` signs an envelope (or bytes) with `montra_secret`.

    The webhook-id is the envelope's `id` unless `msg_id=` is given; `timestamp=` (Unix seconds) defaults to now.
    """

    def sign_event(
        event: Mapping[str, Any] | bytes, *, msg_id: str | None = None, timestamp: float | None = None
    ) -> Signed:
        return _sign(event, montra_secret, msg_id, timestamp)

    return sign_event


@pytest.fixture
def montra_app(
    tmp_path: Path, montra_secret: str, montra_catalogue: Catalogue
) -> Iterator[Callable[..., MontraTestApp]]:
    """Factory: `montra_app(hooks, **create_app_options)` -> a running `MontraTestApp`, closed after the test.

    Each app has its own SQLite file in `tmp_path`, checks `montra_secret` and dispatches inline.
    """
    from starlette.testclient import TestClient

    from receiver.app import create_app

    numbers = itertools.count(1)
    with contextlib.ExitStack() as stack:

        def start(hooks: Hooks | None = None, **options: Any) -> MontraTestApp:
            options.setdefault("db", tmp_path / f"montra-events-{next(numbers)}.db")
            options.setdefault("secrets", [montra_secret])
            options.setdefault("dispatch", "inline")
            app = create_app(hooks, **options)
            client = stack.enter_context(TestClient(app))
            secrets = options["secrets"]
            secret = secrets if isinstance(secrets, str) else secrets[0]
            return MontraTestApp(app, client, secret=secret, catalogue=montra_catalogue)

        yield start
