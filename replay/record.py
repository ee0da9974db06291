"""A stored event becomes a user fixture: `montra-hooks fixtures record`.

The fixture is the event's envelope as the catalogue wants it (see ``replay.fixtures``): ``type``,
``data``, ``previous_attributes`` and any other key the sender put there, without ``id`` and
``timestamp``, which every build fills in fresh (a kept ``id`` would make the second `trigger` a
duplicate). The resource ids inside ``data`` are kept, so scenarios and tests can reference them.

A file whose name is not its type (``upgrade-to-pro.json`` holding a ``subscription.upgraded``)
is a fixture of that type under its own name: the catalogue takes the type from the file, so
``trigger upgrade-to-pro`` sends a ``subscription.upgraded``.

    >>> fixture = fixture_from_body(b'{"id": "evt_1", "type": "refund.created", "data": {"id": "re_1"}}', "msg_1")
    >>> fixture
    {'type': 'refund.created', 'data': {'id': 're_1'}}
    >>> path = write_fixture(Path("montra-fixtures"), "refund.created", fixture)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .paths import FixtureError

__all__ = ["check_name", "fixture_from_body", "fixture_text", "write_fixture"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FILLED_BY_A_BUILD = ("id", "timestamp")
_HEAD = ("type", "data", "previous_attributes")


def check_name(name: str) -> str:
    """A fixture name as `trigger NAME` takes it: letters, digits, `.`, `_` and `-`; a trailing `.json` is dropped."""
    name = name.removesuffix(".json")
    if not _NAME.fullmatch(name):
        raise FixtureError(
            f"{name!r} cannot name a fixture: use letters, digits, '.', '_' and '-' (at most 100), "
            "starting with a letter or digit, e.g. --as upgrade-to-pro."
        )
    return name


def fixture_from_body(body: bytes, event_id: str) -> dict[str, Any]:
    """The fixture for a stored body: its envelope without what a build fills in (`id`, `timestamp`)."""
    try:
        # Decoded as UTF-8 first: json.loads on bytes guesses UTF-16 or UTF-32 from NUL bytes, as no receiver would.
        envelope = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FixtureError(
            f"Event {event_id!r} has a body that is not JSON ({_reason(e)}): it cannot be a fixture. "
            f"`montra-hooks events show {event_id}` shows it."
        ) from e
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
        raise FixtureError(
            f'Event {event_id!r} is not an event envelope ({{"type": ..., "data": ...}}): it cannot be a fixture.'
        )
    kept = {key: value for key, value in envelope.items() if key not in _FILLED_BY_A_BUILD}
    # The envelope's keys in reading order (type, data, previous_attributes, then the rest, sorted),
    # and every key below them sorted: recording the same event twice writes the same bytes.
    head = [key for key in _HEAD if key in kept]
    return {key: _sorted(kept[key]) for key in [*head, *sorted(set(kept) - set(head))]}


def _reason(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 at byte {error.start}"
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return str(error)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def fixture_text(fixture: dict[str, Any]) -> str:
    """Pretty JSON, two spaces, non-ASCII as itself, ending with a newline (as the built-in fixtures are)."""
    return json.dumps(fixture, indent=2, ensure_ascii=False) + "\n"


def write_fixture(folder: Path, name: str, fixture: dict[str, Any], *, force: bool = False) -> Path:
    """Write `folder/NAME.json` atomically (0644); refuse an existing file unless `force`.

    The file appears whole or not at all: it is written under a hidden temporary name (which `watch`
    ignores), flushed to disk, then linked (or, with `force`, renamed) into place.
    """
    target = folder / f"{check_name(name)}.json"
    if target.exists() and not force:
        raise _exists(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise FixtureError(f"Cannot write in {folder}: {e.strerror}. Pass a writable --dir.") from e
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(fixture_text(fixture))
            file.flush()
            os.fchmod(file.fileno(), 0o644)  # a fixture is shared source, not a secret (mkstemp makes 0600)
            os.fsync(file.fileno())
        if force:
            os.replace(temporary, target)
        else:
            _link_new(Path(temporary), target)
    except OSError as e:
        raise FixtureError(f"Cannot write {target}: {e.strerror}.") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return target


def _link_new(temporary: Path, target: Path) -> None:
    """Put `temporary` at `target` only if nothing is there: a file saved meanwhile is never overwritten."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise _exists(target) from None
    except OSError:  # a filesystem without hard links: check, then rename
        if target.exists():
            raise _exists(target) from None
        os.replace(temporary, target)


def _exists(target: Path) -> FixtureError:
    return FixtureError(f"{target} already exists: pass --force to overwrite it, or --as NAME to save another.")
