"""`montra-hooks listen`: the laptop side of the tunnel.

It reads a public receiver's `GET /stream` and delivers each event to a local target, in order,
re-signed for the local secret (same `webhook-id`, fresh timestamp, the exact body). A local
target that is down or answers 5xx is retried with backoff, never skipped. A 401, 403, 404 or
405 says listen itself is set up wrong (the secret, the path): it would be the same answer for
every event, so listen stops before that event, exit 1, and says what to fix. Another 4xx is the
local code's answer to that one event, so it is shown and passed. The cursor (the last seq fully
handled) is saved after the local target answered, so a listener killed at any moment resumes
where it stopped and loses nothing; events stored while it was away are waiting on the relay, in its database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from receiver.dev_secret import DEV_SECRET_FILE
from receiver.errors import ConfigurationError, MontraHooksError
from receiver.verify import sign

from .forward import LocalTarget

__all__ = ["CursorFile", "ListenError", "ListenSettings", "Listener", "default_state_path", "run_until_stopped"]

STATE_DIR = Path(".montra-hooks")
USER_AGENT = "montra-hooks-listen"
SAVE_EVERY = 0.2
"""Seconds between cursor saves while events stream; a quiet stream's cursor is saved at once."""
PREFETCH = 256
"""Frames read ahead of delivery, at most."""
CONFIGURATION_STATUSES = frozenset({401, 403, 404, 405})
"""Answers from the local target that stop listen: its secret or path is wrong, not one event."""


class ListenError(MontraHooksError):
    """Listening cannot go on: the relay refused the stream (token, URL, filter: exit 2) or sent a
    frame that cannot be read (exit 1: an event was not delivered)."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def default_state_path(source: str) -> Path:
    """`.montra-hooks/listen-<hash>.json`: one cursor per relay URL."""
    return STATE_DIR / f"listen-{hashlib.sha256(source.encode()).hexdigest()[:12]}.json"


class CursorFile:
    """The last seq fully handled, in a small JSON file replaced atomically (write a new file, rename).

    No fsync: a killed process loses nothing (the kernel has the file), and after a power cut an
    older cursor only means re-delivering a few events, which the local receiver answers as duplicates.
    """

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self._dir_made = False

    def load(self) -> int | None:
        """The saved cursor, or None when there is none yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigurationError(f"Cannot read the cursor file {self.path}: {e.strerror}.") from e
        try:
            data = json.loads(text)
            cursor, source = data["cursor"], data["from"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(
                f"{self.path} is not a listen cursor file: delete it to start from the live end."
            ) from e
        if type(cursor) is not int or cursor < 0:
            raise ConfigurationError(f"{self.path} holds no valid cursor: delete it to start from the live end.")
        if source != self.source:
            raise ConfigurationError(
                f"{self.path} holds the cursor of {source}, not {self.source}: pass another --state."
            )
        return cursor

    def save(self, cursor: int) -> None:
        if not self._dir_made:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._dir_made = True
        # A fresh name opened with O_EXCL | O_NOFOLLOW: a link planted at a predictable temporary name
        # would otherwise have this write land in whatever file it points at.
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"from": self.source, "cursor": cursor}))
        os.replace(temp, self.path)


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """What `listen` reads from, where it delivers, and how patiently."""

    source: str
    """The relay's base URL; the stream is `{source}/stream`."""
    token: str = field(repr=False)
    target: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = ()
    start: str = "live"
    """`live`, `all` or a seq: where to begin when no cursor is saved."""
    backoff: float = 0.5
    max_backoff: float = 10.0
    silence: float = 45.0
    """Reconnect after this long without a byte: the relay sends a keep-alive every 15 s."""
    timeout: float = 30.0
    as_json: bool = False

    @property
    def stream_url(self) -> str:
        return self.source.rstrip("/") + "/stream"


class Listener:
    """Follows the relay's stream and delivers every event to the target, in order, resuming from `cursor`."""

    def __init__(self, settings: ListenSettings, cursor_file: CursorFile, *, out: TextIO | None = None) -> None:
        self.settings = settings
        self.cursor_file = cursor_file
        self.out = out or sys.stdout
        self.cursor: int | None = None
        self.delivered = 0
        self._saved: int | None = None
        self._saved_at = -SAVE_EVERY
        self._pending_save: asyncio.TimerHandle | None = None
        self._connected = False

    def _info(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _delay(self, failures: int) -> float:
        return float(min(self.settings.max_backoff, self.settings.backoff * 2 ** min(failures - 1, 30)))

    def _save(self, cursor: int) -> None:
        # Renaming over a file costs ext4 a flush, so a burst saves every SAVE_EVERY s, not per event:
        # a kill then re-sends at most that much, which the local receiver answers as duplicates.
        self.cursor = cursor
        wait = self._saved_at + SAVE_EVERY - time.monotonic()
        if wait <= 0:
            self.flush()
        elif self._pending_save is None:
            self._pending_save = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Save the cursor now if it moved since the last save."""
        if self._pending_save is not None:
            self._pending_save.cancel()
            self._pending_save = None
        if self.cursor is not None and self.cursor != self._saved:
            self.cursor_file.save(self.cursor)
            self._saved = self.cursor
            self._saved_at = time.monotonic()

    def begin(self) -> None:
        """Load the saved cursor (or apply `start`) and say where delivery begins."""
        s = self.settings
        saved = self.cursor_file.load()
        self._info(f"montra-hooks listen: {s.stream_url} -> {s.target}")
        if saved is not None:
            self.cursor = saved
            note = "" if s.start == "live" else f"; --start {s.start} applies only with no saved cursor"
            self._info(f"  resuming after seq {saved} (cursor in {self.cursor_file.path}{note})")
        elif s.start == "all":
            self.cursor = 0
            self._info("  starting with the relay's oldest stored event")
        elif s.start != "live":
            self.cursor = int(s.start) - 1
            self._info(f"  starting at seq {s.start}")
        else:
            self._info("  starting at the live end (--start all delivers the relay's backlog first)")
        if s.events:
            self._info(f"  events: {', '.join(s.events)}")

    async def run(self) -> None:
        """Follow the stream until cancelled; reconnect with backoff whenever it breaks."""
        self.begin()
        s = self.settings
        relay_timeout = httpx.Timeout(10.0, read=s.silence)
        async with (
            httpx.AsyncClient(timeout=relay_timeout, headers={"user-agent": USER_AGENT}) as relay,
            LocalTarget(s.target, timeout=s.timeout, user_agent=USER_AGENT) as local,
        ):
            failures = 0
            try:
                while True:
                    self._connected = False
                    try:
                        await self._follow(relay, local)
                        reason = "the relay ended the stream"
                    except httpx.ReadTimeout:
                        reason = f"no data from the relay for {s.silence:g} s"
                    except httpx.TransportError as e:
                        reason = f"cannot reach the relay ({_describe(e)})"
                    except (SSEError, _RelayUnavailable) as e:
                        reason = str(e)
                    self.flush()
                    failures = 1 if self._connected else failures + 1
                    delay = self._delay(failures)
                    self._info(f"reconnecting in {delay:.2f} s: {reason}")
                    await asyncio.sleep(delay)
            finally:
                self.flush()

    async def _follow(self, relay: httpx.AsyncClient, local: LocalTarget) -> None:
        """Read one connection's frames until it ends."""
        s = self.settings
        headers = {"authorization": f"Bearer {s.token}", "accept": "text/event-stream", "cache-control": "no-store"}
        if self.cursor is not None:
            headers["last-event-id"] = str(self.cursor)
        params = {"types": ",".join(s.events)} if s.events else None
        async with relay.stream("GET", s.stream_url, headers=headers, params=params) as response:
            if response.status_code != 200:
                await response.aread()
                _refuse(response, s.stream_url)
            self._connected = True
            self._info(
                f"connected to {s.stream_url}" + (f" after seq {self.cursor}" if self.cursor is not None else "")
            )
            # Frames are read and parsed while the local target works on the event before: delivery
            # stays one event at a time, in order, but the two processes no longer wait on each other.
            frames: asyncio.Queue[ServerSentEvent] = asyncio.Queue(maxsize=PREFETCH)
            reader = asyncio.create_task(_read_frames(response, frames))
            try:
                while True:
                    if frames.empty():
                        if reader.done():
                            reader.result()  # the reader's error, if any, ends this connection
                            return
                        getter = asyncio.ensure_future(frames.get())
                        await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                        if not getter.done():
                            getter.cancel()
                            continue
                        frame = getter.result()
                    else:
                        frame = frames.get_nowait()
                    await self._on_frame(frame, local)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _on_frame(self, frame: ServerSentEvent, local: LocalTarget) -> None:
        if frame.event == "montra.event":
            try:
                data = json.loads(frame.data)
                seq, event_id, event_type = int(data["seq"]), str(data["id"]), str(data["type"])
                body = data["body"].encode() if "body" in data else base64.b64decode(data["body_b64"], validate=True)
                headers: dict[str, Any] = data.get("headers") or {}
            except (ValueError, KeyError, TypeError) as e:
                message = f"The relay sent an event frame listen cannot read ({e!r}): {frame.data[:200]}"
                raise ListenError(message, exit_code=1) from e
            if self.cursor is not None and seq <= self.cursor:
                return  # handled already (a relay resent it): in order means once
            await self._deliver(seq, event_id, event_type, body, headers, local)
            self._save(seq)
        elif frame.event == "cursor":
            moved = _seq(frame.id)
            if moved is not None and (self.cursor is None or moved > self.cursor):
                self._save(moved)
        elif frame.event == "gap" and (resume := _seq(frame.id)) is not None:
            try:
                gap = json.loads(frame.data)
            except ValueError:
                gap = {}
            if gap.get("reason") == "pruned":
                self._info(
                    f"warning: the relay no longer holds events {gap.get('cursor', -1) + 1} to {resume} "
                    f"(pruned before this listener read them); continuing with seq {resume + 1}"
                )
            else:
                self._info(
                    f"warning: the relay's newest seq is {resume}, before this cursor {self.cursor} "
                    f"(a new database?); continuing from its live end"
                )
            self._save(resume)

    async def _deliver(
        self, seq: int, event_id: str, event_type: str, body: bytes, headers: dict[str, Any], local: LocalTarget
    ) -> None:
        s = self.settings
        if not s.as_json:
            print(f"--> {event_type} [{event_id}]", file=self.out, flush=True)
        content_type = str(headers.get("content-type") or "application/json")
        attempt = 0
        while True:
            attempt += 1
            try:
                # Re-signed on every try: a fresh timestamp stays inside the local receiver's tolerance.
                signed = sign(body, secret=s.secret, msg_id=event_id)
            except ConfigurationError as e:
                self._result(seq, event_id, event_type, None, 0.0, attempt, f"not sent: {e}")
                return
            started = time.perf_counter()
            try:
                status, answer = await local.post(body, {"content-type": content_type, **signed})
            except httpx.TransportError as e:
                problem = _describe(e)
            else:
                elapsed = (time.perf_counter() - started) * 1000
                if status < 500:
                    detail = None if 200 <= status < 300 else answer[:300]
                    self._result(seq, event_id, event_type, status, elapsed, attempt, detail)
                    if status in CONFIGURATION_STATUSES:
                        self._stop_before(seq, event_id, status, answer)
                    return
                problem = f"it answered {status} {answer[:200]}".rstrip()
            delay = self._delay(attempt)
            self._info(
                f"waiting for {s.target}: {problem}; retry {attempt} in {delay:.2f} s (seq {seq} is not skipped)"
            )
            await asyncio.sleep(delay)

    def _stop_before(self, seq: int, event_id: str, status: int, answer: str) -> None:
        """End listening on a configuration error, the cursor kept before `seq`: a restart delivers it."""
        if self.cursor is None:
            self.cursor = seq - 1  # started at the live end: remember this event, or a restart would skip it
        self.flush()
        target = self.settings.target
        if status == 401:
            fix = (
                f"the local receiver at {target} refused the signature (401): pass --secret with the local "
                f"receiver's secret, or run both with the dev secret in {DEV_SECRET_FILE} (start the local "
                "`montra-hooks serve` without a secret, and listen without --secret, in the same folder)"
            )
        elif status == 403:
            fix = f"the local receiver at {target} forbids these requests (403): check --forward-to and its rules"
        else:
            fix = (
                f"{target} does not take webhooks ({status}): check --forward-to's path (the local receiver's "
                "--path, /webhooks by default)"
            )
        answered = f" It answered: {answer[:200]}" if answer.strip() else ""
        raise ListenError(
            f"listen stopped before seq {seq} ({event_id}), which is not delivered: {fix}.{answered} "
            "A restart resumes with that event.",
            exit_code=1,
        )

    def _result(
        self, seq: int, event_id: str, event_type: str, status: int | None, ms: float, attempts: int, detail: str | None
    ) -> None:
        if status not in CONFIGURATION_STATUSES:
            self.delivered += 1
        if self.settings.as_json:
            record: dict[str, Any] = {"seq": seq, "id": event_id, "type": event_type, "status": status}
            record.update(ms=round(ms, 2), attempts=attempts)
            if detail:
                record["error"] = detail
            print(json.dumps(record), file=self.out, flush=True)
        else:
            tries = f", {attempts} tries" if attempts > 1 else ""
            line = f"<-- [{status or '---'}] ({ms:.0f} ms{tries})" + (f" {detail}" if detail else "")
            print(line, file=self.out, flush=True)
        if status is not None and 400 <= status < 500 and status not in CONFIGURATION_STATUSES:
            self._info(f"    {status} is a local bug, not an outage: passed, not retried")


class _RelayUnavailable(Exception):
    """The relay answered with a status worth retrying (a proxy's 502, a 503)."""


def _refuse(response: httpx.Response, url: str) -> None:
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    status = response.status_code
    if status == 401:
        raise ListenError(f"The relay refused the token (401): pass the relay's --stream-token as --token. {message}")
    if status == 404:
        raise ListenError(
            f"No event stream at {url} (404): start the relay with --stream-token, and pass its base URL as --from."
        )
    if 400 <= status < 500:
        raise ListenError(f"The relay refused the stream ({status}): {message or response.text[:200]}")
    raise _RelayUnavailable(f"the relay answered {status}")


async def _read_frames(response: httpx.Response, frames: asyncio.Queue[ServerSentEvent]) -> None:
    async for frame in EventSource(response).aiter_sse():
        await frames.put(frame)


def _seq(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _describe(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect: {error}" if str(error) else "cannot connect"
    if isinstance(error, httpx.TimeoutException):
        return f"no answer in time ({type(error).__name__})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def run_until_stopped(listener: Listener) -> None:
    """Run `listener` until Ctrl+C or SIGTERM, then return normally: its cursor is already saved."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl+C only
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await listener.run()
        except asyncio.CancelledError:
            where = f"after seq {listener.cursor}" if listener.cursor is not None else "before any event"
            listener._info(f"stopped {where} ({listener.delivered} delivered); a restart resumes from there")

    asyncio.run(main())
