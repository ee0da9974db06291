"""`replay --edit`: open each selected body in the user's editor, and send what was saved.

The editor is `$VISUAL`, else `$EDITOR` (as git chooses), a command that may hold arguments
(`code --wait`), split as a shell would. It gets a temporary file, readable by its owner only,
holding the body pretty-printed, as its last argument; it needs no terminal, so any program
that rewrites the file will do. Every body is edited before any is sent: an editor that exits
with an error stops the replay with nothing sent. A saved body that is not JSON is reported and
not sent; the others go.

>>> command = editor_command(os.environ)
>>> edited, refused = await edit_all(stored_events(store, selection), command, on_refused=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from pathlib import Path

from receiver.errors import MontraHooksError

from .send import Outgoing

__all__ = ["EditorFailed", "RefusedEdit", "edit_all", "edit_event", "editor_command"]


class EditorFailed(MontraHooksError):
    """The editor could not run, or exited with an error: the replay stops and sends nothing."""


class RefusedEdit(MontraHooksError):
    """What was saved for one event is not JSON: that event is not sent."""


def editor_command(environ: Mapping[str, str]) -> list[str]:
    """`$VISUAL`, else `$EDITOR`, split into a command line; EditorFailed when neither names one."""
    for name in ("VISUAL", "EDITOR"):
        text = environ.get(name, "").strip()
        if text:
            try:
                command = shlex.split(text)
            except ValueError as e:
                raise EditorFailed(f"${name} ({text!r}) is not a command line: {e}.") from e
            if command:
                return command
    raise EditorFailed("--edit needs an editor: set $VISUAL or $EDITOR (e.g. export EDITOR=nano).")


def edit_event(event: Outgoing, command: list[str]) -> Outgoing:
    """`event` with the body saved in the editor (the exact bytes saved); EditorFailed or RefusedEdit."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", event.id)[:64]
    # mkstemp creates the file 0600: a body may hold a customer's details.
    handle, name = tempfile.mkstemp(prefix=f"montra-{safe}-", suffix=".json")
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(_pretty(event.body))
        try:
            finished = subprocess.run([*command, str(path)], check=False)
        except OSError as e:
            raise EditorFailed(
                f"Cannot run the editor {shlex.join(command)!r} ({e.strerror or e}): "
                "set $VISUAL or $EDITOR to an editor on PATH. Nothing was sent."
            ) from e
        if finished.returncode != 0:
            raise EditorFailed(
                f"The editor exited with status {finished.returncode} while editing {event.id}: nothing was sent."
            )
        try:
            saved = path.read_bytes()
        except FileNotFoundError as e:
            raise RefusedEdit(
                f"The editor removed the file of {event.id}, so nothing was saved: it was not sent."
            ) from e
    finally:
        with contextlib.suppress(FileNotFoundError):  # an editor may have replaced or removed it
            path.unlink()
    try:
        envelope = json.loads(saved)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = f"{e.msg} at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise RefusedEdit(f"The body saved for {event.id} is not JSON ({reason}): it was not sent.") from e
    new_type = envelope.get("type") if isinstance(envelope, dict) else None
    return dataclasses.replace(event, body=saved, type=new_type if isinstance(new_type, str) else event.type)


async def edit_all(
    events: AsyncIterable[Outgoing] | Iterable[Outgoing],
    command: list[str],
    *,
    on_refused: Callable[[RefusedEdit], None],
) -> tuple[list[Outgoing], int]:
    """Edit every event in turn: (the edited events to send, how many saves were refused).

    The editor runs in a thread, one at a time, so a store being read meanwhile is not held up.
    """
    edited: list[Outgoing] = []
    refused = 0

    async def one(event: Outgoing) -> None:
        nonlocal refused
        try:
            edited.append(await asyncio.to_thread(edit_event, event, command))
        except RefusedEdit as e:
            refused += 1
            on_refused(e)

    if isinstance(events, AsyncIterable):
        async for event in events:
            await one(event)
    else:
        for event in events:
            await one(event)
    return edited, refused


def _pretty(body: bytes) -> bytes:
    """The body as the editor shows it: indented JSON and a final newline, or the bytes as they are."""
    try:
        return (json.dumps(json.loads(body), indent=2, ensure_ascii=False) + "\n").encode()
    except (ValueError, RecursionError):
        return body
