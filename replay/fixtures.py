"""The fixture catalogue: one event template per Montra type, and scenarios that chain them.

Built-in fixtures live in ``fixtures/`` (``replay/_fixtures`` in an installed wheel). User
folders have the same layout and win over the built-in ones file name by file name; when
several are given, the first that holds a name wins::

    my-fixtures/
        refund.created.json          overrides the built-in refund.created
        invoice.finalized.json       adds a type
        scenarios/big-refund.json    adds a scenario

    >>> catalogue = Catalogue([Path("my-fixtures")])
    >>> [event] = catalogue.build("refund.created", set=["data.amount=1200"], remove=["data.reason"])
    >>> events = catalogue.build("checkout-to-subscription", set={"customer:data.email": "ada@example.com"})

A fixture is an event envelope without ``id`` and ``timestamp``; a build fills each one that
is absent: ``evt_`` + 24 letters and digits, and the build time in ISO 8601 UTC (every step
of a scenario gets the same time). A type's ``data`` is otherwise sent as the file holds it.

A scenario is ``{"description": "...", "steps": [STEP, ...]}`` with each STEP
``{"as": NAME, "type": TYPE, "set": {PATH: VALUE}, "remove": [PATH]}`` (only ``type`` is
required). A step starts from TYPE's fixture, then, in this order:

1. Fresh resource id. When the fixture has a string ``data.id``, it is replaced by a new id
   with the same prefix (``cus_`` + 14 letters and digits), so building a scenario twice never
   reuses a resource id. A step about a resource that an earlier step created sets
   ``"data.id": "{{sub.data.id}}"`` instead.
2. ``set``. String values may hold references: ``{{NAME.PATH}}`` is the value at PATH in the
   built envelope of the earlier step NAME (a string that is exactly one reference takes that
   value's JSON type; a reference inside a longer string is replaced by its text), and
   ``{{new:PREFIX}}`` is a fresh id ``PREFIX_...`` for ids other than ``data.id``, such as
   ``transaction_id``.
3. ``remove``, then the caller's ``set`` and ``remove`` (whose values may hold references too).

Paths are dotted, list indices are integers and a key holding a dot is quoted:
``data.line_items.0.amount``, ``data.metadata."plan.tier"``. The caller's paths apply to every
step of a scenario, or to one step when prefixed with its name: ``customer:data.email=x``. An
unprefixed removal skips the steps that lack the path, and is an error only if all of them do.
A type built on its own keeps its ``data.id``; ``set={"data.id": "{{new:cus}}"}`` makes it fresh.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .paths import FixtureError, get_path, parse_assignment, remove_path, set_path, split_path, split_target, walk

__all__ = [
    "USER_DIR",
    "Catalogue",
    "FixtureError",
    "builtin_dir",
    "default_user_dirs",
]

_ALPHABET = string.ascii_letters + string.digits
_REFERENCE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ID_PREFIX = re.compile(r"[A-Za-z0-9]+")
_SCENARIO_KEYS = {"description", "steps"}
_STEP_KEYS = {"as", "type", "set", "remove"}
_LIST_HINT = "Run `montra-hooks fixtures list` to see every type and scenario."

# `set=` takes {path: value}, (path, value) pairs, or the "path=value" text of `trigger --set`.
Assignments = Mapping[str, Any] | Iterable[tuple[str, Any] | str]


USER_DIR = "montra-fixtures"
"""Your fixture folder when none is named: `fixtures record` writes there, and `trigger`, `watch`,
`fixtures list|show` and the pytest plugin read it when it exists and neither `--fixtures` (the
plugin's `montra_fixtures` ini option) nor env MONTRA_HOOKS_FIXTURES names folders."""


def default_user_dirs(base: Path | None = None) -> list[Path]:
    """`[base/montra-fixtures]` when that folder exists (base: the current directory), else none."""
    folder = Path(USER_DIR) if base is None else base / USER_DIR
    return [folder] if folder.is_dir() else []


def builtin_dir() -> Path:
    """The folder of built-in fixtures: ``replay/_fixtures`` in a wheel, ``<repo>/fixtures`` in a checkout."""
    here = Path(__file__).parent
    candidates = (here / "_fixtures", here.resolve().parent / "fixtures")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FixtureError(
        f"The built-in fixtures are missing (looked in {candidates[0]} and {candidates[1]}); reinstall montra-webhooks."
    )


# References -------------------------------------------------------------------------------------


def _fresh_id(prefix: str, length: int = 14) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _resolve(value: Any, steps: Mapping[str, dict[str, Any]]) -> Any:
    if isinstance(value, str):
        whole = _REFERENCE.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), steps)
        return _REFERENCE.sub(lambda m: _as_text(_lookup(m.group(1), steps)), value)
    if isinstance(value, list):
        return [_resolve(item, steps) for item in value]
    if isinstance(value, dict):
        return {key: _resolve(item, steps) for key, item in value.items()}
    return value


def _lookup(reference: str, steps: Mapping[str, dict[str, Any]]) -> Any:
    token = "{{" + reference + "}}"
    if reference.startswith("new:"):
        prefix = reference.removeprefix("new:")
        if not _ID_PREFIX.fullmatch(prefix):
            raise FixtureError(f"Reference {token}: an id prefix is letters and digits, such as {{{{new:txn}}}}.")
        return _fresh_id(prefix)
    head, *rest = split_path(reference)
    if head not in steps:
        earlier = f"earlier steps: {', '.join(steps)}" if steps else "there is no earlier step"
        raise FixtureError(f"Reference {token} names no earlier step {head!r} ({earlier}).")
    try:
        return copy.deepcopy(walk(steps[str(head)], rest, reference, create=False))
    except FixtureError as e:
        raise FixtureError(f"Reference {token}: {e}") from e


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# Files ------------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FixtureError(f"{path} is not UTF-8 text (byte {e.start}).") from e
    except OSError as e:
        raise FixtureError(f"Cannot read {path}: {e.strerror}.") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FixtureError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.") from e


@dataclass
class _Step:
    number: int
    type: str
    name: str | None = None
    assignments: dict[str, Any] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)

    def where(self, scenario: str) -> str:
        named = f" ({self.name!r})" if self.name else ""
        return f"Scenario {scenario!r}, step {self.number}{named}"


def _parse_scenario(doc: Any, path: Path) -> tuple[str, list[_Step]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list) or not doc["steps"]:
        raise FixtureError(
            f'{path}: a scenario is an object {{"description": ..., "steps": [...]}} with one step or more.'
        )
    if unknown := sorted(set(doc) - _SCENARIO_KEYS):
        raise FixtureError(f"{path}: unknown keys {unknown}; a scenario has only description and steps.")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise FixtureError(f"{path}: description must be a string.")
    steps: list[_Step] = []
    names: set[str] = set()
    for number, raw in enumerate(doc["steps"], 1):
        where = f"{path}: step {number}"
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise FixtureError(f'{where} must be an object with a "type" string.')
        if unknown := sorted(set(raw) - _STEP_KEYS):
            raise FixtureError(f"{where} has unknown keys {unknown}; a step has only as, type, set and remove.")
        name = raw.get("as")
        if name is not None and (not isinstance(name, str) or not _STEP_NAME.fullmatch(name) or name in names):
            raise FixtureError(f'{where}: "as" must be a unique name of letters, digits, _ and -, got {name!r}.')
        sets, removals = raw.get("set", {}), raw.get("remove", [])
        if (
            not isinstance(sets, dict)
            or not isinstance(removals, list)
            or not all(isinstance(p, str) for p in removals)
        ):
            raise FixtureError(f'{where}: "set" must be an object of path: value, "remove" a list of paths.')
        for each in [*sets, *removals]:
            try:
                split_path(each)
            except FixtureError as e:
                raise FixtureError(f"{where}: {e}") from e
        if name is not None:
            names.add(name)
        steps.append(_Step(number, raw["type"], name, sets, removals))
    return description, steps


def _timestamp(now: datetime | None) -> str:
    now = datetime.now(UTC) if now is None else now
    # A naive datetime is taken as UTC, not as local time.
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _envelope(event: dict[str, Any], timestamp: str) -> dict[str, Any]:
    """Fill an absent id and timestamp, keeping the wire order id, type, timestamp, data, ..."""
    head: dict[str, Any] = {"id": event["id"] if "id" in event else _fresh_id("evt", 24)}
    if "type" in event:
        head["type"] = event["type"]
    head["timestamp"] = event.get("timestamp", timestamp)
    return head | {key: value for key, value in event.items() if key not in head}


# The catalogue ----------------------------------------------------------------------------------


class Catalogue:
    """Event types and scenarios from user folders first, then the built-in fixtures.

    >>> catalogue = Catalogue()
    >>> catalogue.build("payment.failed", set={"data.amount": 1200})[0]["data"]["amount"]
    1200
    """

    def __init__(self, user_dirs: Sequence[Path | str] = (), *, builtin: Path | None = None) -> None:
        folders = [Path(folder) for folder in user_dirs]
        for folder in folders:
            if not folder.is_dir():
                raise FixtureError(f"Fixture folder {folder} does not exist or is not a folder.")
        self.folders: list[Path] = [*folders, builtin_dir() if builtin is None else builtin]

    def __repr__(self) -> str:
        return f"Catalogue({[str(folder) for folder in self.folders]})"

    def _index(self, kind: str) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for folder in self.folders:
            where = folder / "scenarios" if kind == "scenario" else folder
            # Files are listed on every call, not cached, so `watch` sees a fixture saved a moment ago.
            for path in sorted(where.glob("*.json")):
                if not path.name.startswith("."):
                    found.setdefault(path.stem, path)
        return found

    def types(self) -> list[str]:
        """Every event type with a fixture, sorted."""
        return sorted(self._index("type"))

    def scenarios(self) -> list[str]:
        """Every scenario name, sorted."""
        return sorted(self._index("scenario"))

    def source(self, name: str) -> Path:
        """The file a type or scenario is read from."""
        path = self._index("type").get(name) or self._index("scenario").get(name)
        if path is None:
            raise self._unknown(name)
        return path

    def template(self, type: str) -> dict[str, Any]:
        """A type's fixture as its file holds it (no id or timestamp filled in), a fresh copy."""
        path = self._index("type").get(type)
        if path is None:
            if type in self._index("scenario"):
                raise FixtureError(f"{type!r} is a scenario, not an event type; build it with trigger or build().")
            raise self._unknown(type)
        event = _load_json(path)
        if not isinstance(event, dict) or not isinstance(event.get("type", type), str):
            raise FixtureError(f'{path}: a fixture is an event object such as {{"type": "{type}", "data": {{...}}}}.')
        event.setdefault("type", type)
        return event

    def description(self, name: str) -> str:
        """A scenario's one-sentence description; an empty string for an event type."""
        if name in self._index("type"):
            return ""
        path = self.source(name)
        return _parse_scenario(_load_json(path), path)[0]

    def build(
        self,
        name: str,
        *,
        set: Assignments = (),
        add: Assignments = (),
        remove: Iterable[str] = (),
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Build the events of a type (one) or of a scenario (its steps, in order).

        ``set`` maps paths that exist to new values: a mapping, ``(path, value)`` pairs or
        ``"path=value"`` strings (parsed by ``parse_assignment``); a path the fixture lacks is an error
        naming the closest keys, so a typo never adds a key silently. ``add`` takes the same forms and
        may add new keys. ``remove`` lists paths. For a scenario, a path prefixed with a step name
        (``customer:data.email``) targets that step and no other.
        """
        assignments = [(*split_target(path), value, False) for path, value in _pairs(set)]
        assignments += [(*split_target(path), value, True) for path, value in _pairs(add)]
        if isinstance(remove, str):
            raise TypeError(f"remove= takes a list of paths, not one string: remove=[{remove!r}]")
        removals = [split_target(path) for path in remove]
        scenario: str | None = None
        if name in self._index("type"):
            steps = [_Step(1, name)]
        elif name in self._index("scenario"):
            scenario, path = name, self.source(name)
            steps = _parse_scenario(_load_json(path), path)[1]
        else:
            raise self._unknown(name)
        names = [step.name for step in steps if step.name]
        for target in {target for target, *_ in [*assignments, *removals] if target is not None}:
            if scenario is None:
                raise FixtureError(f"{name!r} is an event type, not a scenario: drop the {target}: step prefix.")
            if target not in names:
                raise FixtureError(f"Scenario {name!r} has no step {target!r}; its steps: {', '.join(names)}.")
        timestamp = _timestamp(now)
        built: dict[str, dict[str, Any]] = {}
        events: list[dict[str, Any]] = []
        removed: list[str] = []
        for step in steps:
            try:
                event = self.template(step.type)
                data = event.get("data")
                if scenario and isinstance(data, dict) and isinstance(data.get("id"), str):
                    data["id"] = _fresh_id(data["id"].rpartition("_")[0] or "id")
                for key, value in step.assignments.items():
                    set_path(event, key, _resolve(value, built))
                for target, key, value, create in assignments:
                    if target in (None, step.name):
                        set_path(event, key, _resolve(value, built), create=create)
                for key in [*step.removals, *(k for t, k in removals if t is not None and t == step.name)]:
                    remove_path(event, key)
                for key in (k for t, k in removals if t is None):
                    # An unprefixed removal applies to the steps that have the path; it must match one.
                    if scenario is None or _has_path(event, key):
                        remove_path(event, key)
                        removed.append(key)
            except FixtureError as e:
                if scenario is None:
                    raise
                raise FixtureError(f"{step.where(scenario)}: {e}") from e
            event = _envelope(event, timestamp)
            if step.name:
                built[step.name] = event
            events.append(event)
        if missing := [key for target, key in removals if target is None and key not in removed]:
            raise FixtureError(f"Scenario {name!r}: no step has the path {missing[0]!r} to remove.")
        return events

    def _unknown(self, name: str) -> FixtureError:
        known = [*self._index("type"), *self._index("scenario")]
        matches = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, matches))}?" if matches else ""
        return FixtureError(f"No fixture type or scenario named {name!r}.{hint} {_LIST_HINT}")


def _pairs(assignments: Assignments) -> list[tuple[str, Any]]:
    if isinstance(assignments, Mapping):
        return list(assignments.items())
    if isinstance(assignments, str):
        raise TypeError(f"set= takes a list of assignments, not one string: set=[{assignments!r}]")
    return [parse_assignment(item) if isinstance(item, str) else item for item in assignments]


def _has_path(obj: Any, path: str) -> bool:
    try:
        get_path(obj, path)
    except FixtureError:
        return False
    return True
