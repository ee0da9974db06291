"""The event list's filters, pages and counts: what `GET /inspect` (and its JSON twins) read from the store.

Every filter is a query parameter, so a filtered view is a link: `type` (a pattern), `status`,
`handler` (a stable name), `ref` (a resource id such as `cus_...`), `since` and `until` (on
`received_at`: an ISO time or a duration ago, as the CLI takes them) and `id`. A value the page
cannot use is a `BadFilter` that names its parameter. Pages are keyset pages on `seq` (`before`,
`newer`), never an OFFSET; counts stop at `COUNT_CAP`, so a store of a million events answers as
fast as one of a hundred. Every read goes through the store (its own threads), never this loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args
from urllib.parse import urlencode

from ..errors import ConfigurationError
from ..event import EventStatus
from ..patterns import validate_pattern
from ..replays import REPLAY_OF_HEADER
from ..stores.protocol import EventFilter, Store, StoredEvent, iso
from ..times import parse_when

__all__ = [
    "COUNT_CAP",
    "EVENT_STATUSES",
    "FILTERS",
    "MAX_SEQ",
    "PAGE_SIZE",
    "BadFilter",
    "ListQuery",
    "Page",
    "count_by_status",
    "id_parts",
    "read_page",
    "row_view",
    "short_time",
    "shown_count",
    "whole_number",
]

PAGE_SIZE = 100
"""Events per list page."""
COUNT_CAP = 1000
"""Counts stop here and show as `1,000+`: a count never reads more rows than this."""
EVENT_STATUSES: tuple[str, ...] = get_args(EventStatus)
FILTERS = ("type", "status", "handler", "ref", "since", "until", "id")
"""The list's filters, in the order the form shows them; each one a query parameter."""
MAX_SEQ = 2**63 - 1
_MAX_TEXT = 256  # ids, references and handler names are never longer (a webhook-id is at most 256 characters)


class BadFilter(Exception):
    """A query value the list cannot use: answered 400, naming `parameter`."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters of one list view: as typed (`text`, for the form and links) and as the store reads them."""

    text: dict[str, str]
    selection: EventFilter
    """Without paging or limit."""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ListQuery:
        """Read the filters from query (or form) parameters; `BadFilter` for the first one that is not usable."""
        text = {name: params.get(name, "").strip() for name in FILTERS}
        if text["type"]:
            try:
                validate_pattern(text["type"])
            except ConfigurationError as e:
                raise BadFilter("type", f"type: {e}") from None
        if text["status"] and text["status"] not in EVENT_STATUSES:
            raise BadFilter("status", f"Unknown status {text['status']!r}: use one of {', '.join(EVENT_STATUSES)}.")
        for name, what in (("handler", "a handler's name (module.qualname)"), ("ref", "a resource id, e.g. cus_...")):
            value = text[name]
            if value and (len(value) > _MAX_TEXT or not value.isprintable() or " " in value):
                raise BadFilter(name, f"{name} must be {what}: at most {_MAX_TEXT} characters, no spaces.")
        since, until = _when(text, "since"), _when(text, "until")
        if since is not None and until is not None and until <= since:
            raise BadFilter("until", f"until ({iso(until)}) must be later than since ({iso(since)}).")
        selection = EventFilter(
            ids=[text["id"]] if text["id"] else (),
            types=[text["type"]] if text["type"] else (),
            status=[text["status"]] if text["status"] else (),
            since=since,
            until=until,
            ref=text["ref"] or None,
            handler=text["handler"] or None,
            newest_first=True,
        )
        return cls(text, selection)

    @property
    def filtered(self) -> bool:
        return any(self.text.values())

    def query(self, **extra: object) -> str:
        """The filters as a query string (without `?`), with `extra` parameters; empty and None values left out."""
        pairs = {**self.text, **{k: "" if v is None else str(v) for k, v in extra.items()}}
        return urlencode({k: v for k, v in pairs.items() if v})


def _when(text: dict[str, str], name: str) -> datetime | None:
    if not text[name]:
        return None
    try:
        return parse_when(text[name])
    except (ValueError, OverflowError) as e:
        raise BadFilter(name, f"{name}: {e}") from None


def whole_number(name: str, text: str) -> int | None:
    """A query value that must be an event seq or a count: None when absent, `BadFilter` when not one."""
    if not text:
        return None
    # A store's seq is a signed 64-bit integer: a larger number is no seq (and SQLite would overflow on it).
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_SEQ:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadFilter(name, f"{name} must be a whole number from 0 to {MAX_SEQ}, got {shown!r}.")
    return int(text)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the list, newest first, and where the neighbouring pages start (None: there is none)."""

    events: list[StoredEvent]
    older: int | None
    """`before=` for the next older page: the oldest seq shown."""
    newer: int | None
    """`newer=` for the next newer page: the newest seq shown."""


async def read_page(store: Store, selection: EventFilter, *, before: int | None, newer: int | None) -> Page:
    """The page below `before` (older), above `newer` (newer), or the newest one: keyset reads of `PAGE_SIZE + 1`."""
    if newer is not None:
        # The PAGE_SIZE events just above `newer`, read oldest first, shown newest first.
        rows = await store.list_events(
            dataclasses.replace(selection, after_seq=newer, limit=PAGE_SIZE + 1, newest_first=False)
        )
        more_newer = len(rows) > PAGE_SIZE
        events = rows[:PAGE_SIZE][::-1]
        more_older = await _any(store, dataclasses.replace(selection, max_seq=newer))
    else:
        bound = before - 1 if before is not None else None
        rows = await store.list_events(dataclasses.replace(selection, max_seq=bound, limit=PAGE_SIZE + 1))
        more_older = len(rows) > PAGE_SIZE
        events = rows[:PAGE_SIZE]
        more_newer = before is not None and await _any(store, dataclasses.replace(selection, after_seq=bound))
    return Page(
        events,
        older=events[-1].seq if events and more_older else None,
        newer=events[0].seq if events and more_newer else None,
    )


async def _any(store: Store, selection: EventFilter) -> bool:
    return bool(await store.list_events(dataclasses.replace(selection, limit=1)))


async def count_by_status(store: Store, selection: EventFilter) -> dict[str, int]:
    """How many events the filter matches, by status and in all (key `all`), each counted to `COUNT_CAP + 1`.

    The status filter is left out, so the counts say what the other statuses hold; a value over
    COUNT_CAP means "more than COUNT_CAP".
    """
    base = dataclasses.replace(selection, status=(), limit=None, after_seq=None, max_seq=None)
    names = ("all", *EVENT_STATUSES)
    selections = [base, *(dataclasses.replace(base, status=[s]) for s in EVENT_STATUSES)]
    counts = await asyncio.gather(*(store.count_events(s, cap=COUNT_CAP + 1) for s in selections))
    return dict(zip(names, counts, strict=True))


def shown_count(count: int) -> str:
    """`37`, `1,000`, or `1,000+` past the cap."""
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP else f"{count:,}"


def short_time(moment: datetime, *, now: datetime | None = None) -> str:
    """`12:04:05` today, `Dec 3 12:04` another day this year, `Dec 3 2025` before (UTC): a row stays one line."""
    moment = moment.astimezone(UTC)
    today = (now or datetime.now(UTC)).astimezone(UTC)
    if moment.date() == today.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == today.year:
        return f"{moment.strftime('%b')} {moment.day} {moment.strftime('%H:%M')}"
    return f"{moment.strftime('%b')} {moment.day} {moment.year}"


def id_parts(event_id: str) -> tuple[str, str]:
    """An id split so that its end stays visible when the row truncates it: `(head, tail)`.

    A replay's suffix (`_r1a2b3c4d`) is the tail; a long id keeps its last 6 characters; a short one is whole.
    """
    if len(event_id) > 12 and event_id[-10:-8] == "_r" and all(c in "0123456789abcdef" for c in event_id[-8:]):
        return event_id[:-10], event_id[-10:]
    if len(event_id) > 28:
        return event_id[:-6], event_id[-6:]
    return event_id, ""


def row_view(event: StoredEvent, url: str, *, now: datetime | None = None) -> dict[str, Any]:
    """One row of the list, as the template and the JSON twin show it."""
    head, tail = id_parts(event.id)
    return {
        "seq": event.seq,
        "id": event.id,
        "id_head": head,
        "id_tail": tail,
        "type": event.type,
        "status": event.status,
        "received_at": iso(event.received_at),
        "received": short_time(event.received_at, now=now),
        "replay_of": event.headers.get(REPLAY_OF_HEADER),
        "url": url,
    }
