"""Dotted paths into an event envelope, and the ``path=value`` text that ``trigger --set`` takes.

Paths are dotted, list indices are integers and a key holding a dot is quoted::

    data.line_items.0.amount
    data.metadata."plan.tier"

A path may start with a scenario step's name and a colon (``customer:data.email``) to target
one step of a scenario; ``split_target`` separates the two.

    >>> event = {"data": {"line_items": [{"amount": 900}]}}
    >>> set_path(event, "data.line_items.0.amount", 1200)
    >>> get_path(event, "data.line_items.0.amount")
    1200
    >>> parse_assignment('data.metadata."plan.tier"=pro')
    ('data.metadata."plan.tier"', 'pro')
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from receiver.errors import MontraHooksError

__all__ = [
    "FixtureError",
    "get_path",
    "parse_assignment",
    "remove_path",
    "set_path",
    "split_path",
    "split_target",
    "walk",
]

_STEP_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):")


# Defined here, the lowest module of the fixture code, so that a bad path is a fixture error like
# any other; `replay.fixtures` re-exports it.
class FixtureError(MontraHooksError):
    """A fixture or scenario cannot be found, read or built; the message says which and why."""


def split_path(path: str) -> list[str | int]:
    """`data.metadata."plan.tier"` -> ["data", "metadata", "plan.tier"]; unquoted digits become ints."""
    segments: list[str | int] = []
    i = 0
    while True:
        if path.startswith('"', i):
            try:
                key, i = json.JSONDecoder().raw_decode(path, i)
            except json.JSONDecodeError as e:
                raise FixtureError(f"Path {path!r} has an unterminated quoted key at position {i}.") from e
            segments.append(key)
        else:
            end = path.find(".", i)
            end = len(path) if end == -1 else end
            raw = path[i:end]
            if not raw:
                raise FixtureError(
                    f'Path {path!r} has an empty key; quote a key that contains a dot: data.metadata."plan.tier".'
                )
            segments.append(int(raw) if raw.isascii() and raw.isdigit() else raw)
            i = end
        if i == len(path):
            return segments
        if path[i] != ".":
            raise FixtureError(f"Path {path!r}: expected '.' after the quoted key at position {i}.")
        i += 1


def walk(node: Any, segments: Sequence[str | int], path: str, *, create: bool) -> Any:
    """Follow `segments` (from `split_path`) down from `node`; `create` adds missing objects on the way.

    `path` is the text the segments came from, for error messages.
    """
    for depth, key in enumerate(segments):
        if isinstance(node, dict):
            name = str(key)
            if name not in node:
                if not create:
                    raise _missing_key(path, name, node)
                node[name] = {}
            node = node[name]
        elif isinstance(node, list):
            node = node[_index(node, key, path)]
        else:
            where = ".".join(map(str, segments[:depth]))
            raise FixtureError(f"Path {path!r}: {where} is {type(node).__name__}, not an object or a list.")
    return node


def _missing_key(path: str, name: str, node: dict[str, Any]) -> FixtureError:
    close = difflib.get_close_matches(name, [str(key) for key in node], n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    keys = ", ".join(sorted(node)[:12]) or "none"
    return FixtureError(f"Path {path!r} not found: no key {name!r} there (its keys: {keys}).{hint}")


def _index(items: list[Any], key: str | int, path: str, *, allow_end: bool = False) -> int:
    if isinstance(key, int) and 0 <= key < len(items) + allow_end:
        return key
    raise FixtureError(f"Path {path!r}: {key!r} is not an index of a list of {len(items)} items.")


def get_path(obj: Any, path: str) -> Any:
    """The value at a dotted path: ``get_path(event, "data.line_items.0.amount")``."""
    return walk(obj, split_path(path), path, create=False)


def set_path(obj: Any, path: str, value: Any, *, create: bool = True) -> None:
    """Set the value at a dotted path; index len(list) appends.

    With `create` (the default), missing objects on the way and a new last key are added; without it,
    the path must exist, so a typo (`data.amout`) is an error that names the closest keys.
    """
    *parents, last = split_path(path)
    parent = walk(obj, parents, path, create=create)
    if isinstance(parent, dict):
        if not create and str(last) not in parent:
            missing = _missing_key(path, str(last), parent)
            raise FixtureError(f"{missing} To add a new key, use add= (--add on the command line).")
        parent[str(last)] = value
    elif isinstance(parent, list):
        index = _index(parent, last, path, allow_end=True)
        if index == len(parent):
            parent.append(value)
        else:
            parent[index] = value
    else:
        where = ".".join(map(str, parents))
        raise FixtureError(f"Path {path!r}: {where} is {type(parent).__name__}, not an object or a list.")


def remove_path(obj: Any, path: str) -> Any:
    """Remove the value at a dotted path and return it; a missing path is a FixtureError."""
    *parents, last = split_path(path)
    parent = walk(obj, parents, path, create=False)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, path))
    # walk raises the "not found" error, with the keys that do exist, for a missing last key.
    walk(parent, [last], path, create=False)
    return parent.pop(str(last))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``path=value`` at the first ``=`` outside quotes; the value is JSON where it parses.

    >>> parse_assignment("data.amount=1200")
    ('data.amount', 1200)
    >>> parse_assignment('data.metadata."plan.tier"=pro')
    ('data.metadata."plan.tier"', 'pro')
    """
    quoted = escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "=" and not quoted:
            path, raw = text[:i], text[i + 1 :]
            split_path(split_target(path)[1])
            try:
                # NaN and Infinity are not JSON: keep them as the strings they were typed as.
                return path, json.loads(raw, parse_constant=_reject_constant)
            except ValueError:
                return path, raw
    raise FixtureError(
        f'Expected PATH=VALUE, got {text!r}: for example data.amount=1200 or data.metadata."plan.tier"=pro.'
    )


def split_target(path: str) -> tuple[str | None, str]:
    """`customer:data.email` -> ("customer", "data.email"); a path with no step prefix -> (None, path)."""
    match = _STEP_PREFIX.match(path)
    return (match.group(1), path[match.end() :]) if match else (None, path)
