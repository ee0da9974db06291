"""Typed payloads: `receiver.types`, the fixtures and the drift catalogue agree; mypy checks typed handlers;
an unknown type warns once with the closest known name."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from receiver import Event, Hooks
from receiver.errors import UnknownEventTypeWarning
from receiver.hooks import Registration
from receiver.types import EVENT_TYPES, PAYLOADS, Customer, Discount, EventType, Subscription
from replay.drift import Shape, TypeReport, catalogue, shape_of
from replay.fixtures import Catalogue

FIXTURES = Catalogue()
"""The built-in fixtures only."""


# -- one source ------------------------------------------------------------------------------------


def test_every_known_type_has_a_fixture_and_every_fixture_a_type() -> None:
    assert list(EVENT_TYPES) == FIXTURES.types()
    assert sorted(get_args(EventType)) == list(EVENT_TYPES)
    assert sorted(catalogue()) == list(EVENT_TYPES)
    assert PAYLOADS["subscription.upgraded"] is Subscription
    assert PAYLOADS["customer.updated"] is Customer


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_fixture_has_its_payloads_shape(event_type: str) -> None:
    """Every fixture, as built, passes the drift check of its type: same keys, required ones present, JSON types."""
    [event] = FIXTURES.build(event_type)
    report = TypeReport(event_type, known=True)
    report.check(event["id"], event)
    assert (report.added, report.missing, report.changed) == ({}, {}, {})


@pytest.mark.parametrize("scenario", FIXTURES.scenarios())
def test_each_scenario_step_has_its_payloads_shape(scenario: str) -> None:
    for event in FIXTURES.build(scenario):
        report = TypeReport(event["type"], known=True)
        report.check(event["id"], event)
        assert (event["type"], report.added, report.missing, report.changed) == (event["type"], {}, {}, {})


def _declared(shape: Shape, path: str = "") -> set[str]:
    """Every path a shape declares, list items as `path[]`."""
    paths: set[str] = set()
    for key, (child, _) in (shape.fields or {}).items():
        here = f"{path}.{key}" if path else key
        paths |= {here} | _declared(child, here)
    if shape.items is not None:
        paths |= _declared(shape.items, path + "[]")
    return paths


def _present(value: Any, path: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            paths |= {here} | _present(item, here)
    elif isinstance(value, list):
        for item in value:
            paths |= _present(item, path + "[]")
    return paths


def test_every_declared_field_appears_in_a_fixture() -> None:
    """The fixtures document every field of the types: none is declared that no fixture shows."""
    by_payload: dict[type[Any], set[str]] = {}
    for event_type, payload in PAYLOADS.items():
        [event] = FIXTURES.build(event_type)
        by_payload.setdefault(payload, set()).update(_present(event["data"]))
    for payload, seen in by_payload.items():
        declared = _declared(shape_of(payload))
        # Free-form objects (metadata) are declared without keys: what a fixture holds under them is not a field.
        assert declared - seen == set(), payload.__name__


def test_required_keys_are_right_at_runtime() -> None:
    """receiver.types has no `from __future__ import annotations`, so TypedDicts know their NotRequired keys."""
    for payload in set(PAYLOADS.values()):
        fields = shape_of(payload).fields
        assert fields is not None
        assert payload.__required_keys__ == {key for key, (_, required) in fields.items() if required}
    assert "phone" in Customer.__optional_keys__
    assert shape_of(Discount).fields is not None


def test_expected_shapes_name_json_types() -> None:
    fields = catalogue()["discount.created"].fields
    assert fields is not None
    data = fields["data"][0].fields
    assert data is not None
    assert {key: (shape.describe(), required) for key, (shape, required) in data.items()} == {
        "id": ("string", True),
        "name": ("string", True),
        "code": ("string", True),
        "percent_off": ("number or null", True),
        "amount_off": ("number or null", True),
        "duration": ("string", True),
        "duration_in_months": ("integer or null", False),
        "created_at": ("string", True),
    }


def test_each_payload_has_one_typed_overload_of_on() -> None:
    """hooks.on's overloads: one per payload, whose Literal types are exactly that payload's, then the general one."""
    overloads = typing.get_overloads(Hooks.on)
    *typed, general = [get_type_hints(fn) for fn in overloads]
    assert general["patterns"] is str
    covered: dict[str, type[Any]] = {}
    for hints in typed:
        [handler_var] = get_args(hints["return"])[0]  # Callable[[H], H]
        typed_handler = get_args(handler_var.__bound__)[0]  # HandlerOf[Payload] | Handler: the first
        [event_of_payload] = get_args(typed_handler)[0]
        [payload] = get_args(event_of_payload)
        for name in get_args(hints["patterns"]):
            assert name not in covered
            covered[name] = payload
    assert covered == PAYLOADS


def test_the_types_import_alone() -> None:
    """receiver.types is imported by hooks and by tools that want the payloads: it loads nothing outside the stdlib."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import receiver.types\n"
        "loaded = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(loaded - set(sys.stdlib_module_names) - {'receiver'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "[]\n", "")


# -- mypy on a handlers module ---------------------------------------------------------------------

HANDLERS = """\
from __future__ import annotations

from typing import Any

from receiver import Event, Hooks
from receiver.types import Payment, Subscription

hooks = Hooks()


@hooks.on("subscription.upgraded")
async def grant(event: Event[Subscription]) -> None:
    plan: str = event.data["pricing_model_id"]
    print(plan, event.data.get("canceled_at"), event.data{FIELD})


@hooks.on("subscription.created", "subscription.resumed", max_attempts=3, ordered_by="subscription")
def sync_grant(event: Event[Subscription]) -> None:
    print(event.data["status"])


@hooks.on("payment.failed", hold_on_dead=True)
async def untyped(event: Event) -> None:  # a bare Event keeps working, under --strict too
    print(event.data["anything"])


@hooks.on("subscription.*", "refund.created")
async def several(event: Event[dict[str, Any]]) -> None: ...


@hooks.on("payment.*")
def prefix(event: Event[Payment]) -> None: ...


async def call_directly() -> None:
    await grant(Event[Subscription].from_body("msg_1", b'{{"type": "subscription.upgraded", "data": {{}}}}'))
"""


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "handlers.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"), "handlers.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_mypy_accepts_typed_handlers(tmp_path: Path) -> None:
    result = mypy(tmp_path, HANDLERS.format(FIELD='["status"]'))
    assert (result.returncode, result.stdout) == (0, "Success: no issues found in 1 source file\n")


def test_mypy_refuses_a_field_the_payload_lacks_and_a_handler_of_another_payload(tmp_path: Path) -> None:
    source = HANDLERS.format(FIELD='["no_such_field"]')
    source += '\n\n@hooks.on("customer.created")\nasync def wrong(event: Event[Subscription]) -> None: ...\n'
    result = mypy(tmp_path, source)
    line = source.splitlines().index('    print(plan, event.data.get("canceled_at"), event.data["no_such_field"])') + 1
    wrong = len(source.splitlines()) - 1
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f'handlers.py:{line}: error: TypedDict "Subscription" has no key "no_such_field"  [typeddict-item]',
        f'handlers.py:{wrong}: error: Value of type variable "_OnCustomer" of function cannot be '
        '"Callable[[Event[Subscription]], Coroutine[Any, Any, None]]"  [type-var]',
        "Found 2 errors in 1 file (checked 1 source file)",
    ]


# -- unknown types ---------------------------------------------------------------------------------


def _hint(pattern: str, guess: str) -> str:
    return (
        f"hooks.on({pattern!r}): {guess} Registered anyway (Montra may add types); if the name is right, silence "
        'this with warnings.filterwarnings("ignore", category=receiver.errors.UnknownEventTypeWarning).'
    )


@pytest.mark.parametrize(
    ("pattern", "guess"),
    [
        ("subscription.cancelled", "not a known Montra event type; did you mean 'subscription.canceled'?"),
        ("refund.create", "not a known Montra event type; did you mean 'refund.created'?"),
        ("subscriptions.*", "no known Montra event type starts with 'subscriptions.'; did you mean 'subscription.*'?"),
        ("invoice.paid", "not a known Montra event type (receiver.types.EVENT_TYPES lists them)."),
    ],
)
def test_an_unknown_type_warns_once_and_registers(pattern: str, guess: str) -> None:
    hooks = Hooks()

    def first(event: Event) -> None: ...

    def second(event: Event) -> None: ...

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks.on(pattern)(first)
        hooks.on(pattern, "refund.created")(second)
    assert [(w.category, str(w.message), w.filename) for w in caught] == [
        (UnknownEventTypeWarning, _hint(pattern, guess), __file__)
    ]
    registrations = [hooks.get(name) for name in hooks.names]
    assert [(r.patterns if isinstance(r, Registration) else None) for r in registrations] == [
        (pattern,),
        (pattern, "refund.created"),
    ]


@pytest.mark.parametrize(
    "pattern", ["subscription.canceled", "subscription.*", "subscription.scheduled_change.*", "*", "usage.reported"]
)
def test_known_types_and_prefixes_do_not_warn(pattern: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Hooks().on(pattern)(lambda event: None)


def test_the_warning_can_be_silenced() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=UnknownEventTypeWarning)
        hooks = Hooks()
        hooks.on("my.own.type")(lambda event: None)
    assert caught == []
    assert len(hooks.names) == 1


def test_the_warning_is_an_error_under_pytests_filter() -> None:
    """This project's pytest runs with filterwarnings=error: a typo in a test's hooks.on fails the test."""
    with pytest.raises(UnknownEventTypeWarning, match=r"did you mean 'subscription.canceled'\?"):
        Hooks().on("subscription.cancelled")


def test_the_handlers_page_lists_every_payload_and_its_types() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "handlers.md").read_text()
    table = page.split("| payload (`receiver.types`) | event types |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    documented: dict[str, str] = {}
    for row in table.splitlines():
        payload, types = row.strip("|").split("|")
        name = payload.split("`")[1]
        documented.update({event_type: name for event_type in types.split("`")[1::2]})
    assert documented == {event_type: payload.__name__ for event_type, payload in PAYLOADS.items()}


def test_a_typed_event_is_built_and_read_like_any_other() -> None:
    [fixture] = FIXTURES.build("subscription.upgraded")
    body = json.dumps(fixture).encode()
    event = Event[Subscription].from_body("msg_1", body)
    assert (type(event), event.id, event.type, event.data) == (Event, "msg_1", "subscription.upgraded", fixture["data"])
    assert event.refs == {
        "subscription": fixture["data"]["id"],
        "customer": fixture["data"]["customer_id"],
        "pricing_model": fixture["data"]["pricing_model_id"],
    }
