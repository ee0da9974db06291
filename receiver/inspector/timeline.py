"""What the event page and the resource page show of handler history: each try, and each event about a resource.

The event page lists every try of every handler (`handler_attempts`), the facts `montra-hooks events
show` prints: try number, which process ran it, when it started, how long it took, how it ended and
its error. The resource page (`/inspect/resources/{ref}`) lists the events about one resource, a page
at a time by seq, with each handler's run status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from ..stores.protocol import Attempt, EventFilter, Run, Store, StoredEvent, iso, parse_iso

__all__ = ["MAX_RESOURCE_PAGE", "RESOURCE_PAGE_SIZE", "ResourcePage", "attempt_rows", "read_resource", "resource_path"]

RESOURCE_PAGE_SIZE = 50
"""Events per resource page (`?limit=` asks for another count, up to MAX_RESOURCE_PAGE)."""
MAX_RESOURCE_PAGE = 200


def attempt_rows(attempts: Sequence[Attempt]) -> dict[str, list[dict[str, Any]]]:
    """Each handler's tries in the order they ended, as the event page's timeline shows them."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for attempt in attempts:
        error = (attempt.error or "").rstrip()
        rows.setdefault(attempt.handler, []).append(
            {
                "attempt": attempt.attempt,
                "owner": attempt.owner,
                "started_at": iso(attempt.started_at) if attempt.started_at else None,
                "duration_ms": attempt.duration_ms,
                "outcome": attempt.outcome,
                "error": error,
                "error_summary": error.splitlines()[-1] if error else "",
            }
        )
    return rows


def resource_path(ref: str) -> str:
    """The resource page's path below the inspector's base: `/resources/sub_...`."""
    return f"/resources/{quote(ref, safe='')}"


@dataclass(frozen=True, slots=True)
class ResourcePage:
    """One page of the events about a resource, in (occurred_at, seq) order, each with its handler runs."""

    kinds: list[str]
    """What the resource is (`subscription`), from the page's first event; usually one kind."""
    events: list[tuple[StoredEvent, list[Run]]]
    next_after: int | None
    """The seq to read the next page after; None on the last page."""


async def read_resource(store: Store, ref: str, *, after: int | None, limit: int) -> ResourcePage:
    """The events about `ref` with seq above `after` (the first `limit` by seq), and their runs.

    Paged by seq, so a page costs about the same however many events the resource has (`COMMON_REF_ROWS`); within
    a page the events are put in the order they happened (their envelope timestamp, then seq), so a
    webhook that arrived late shows where it belongs. Events without a readable timestamp sort by
    when they were received.
    """
    found = await store.list_events(EventFilter(ref=ref, after_seq=after, limit=limit))
    # One index lookup per event, a page at most: a page's runs, not the store's.
    events = [(event, await store.get_runs(event.id)) for event in found]
    kinds = [kind for kind, value in await store.get_refs(found[0].id) if value == ref] if found else []
    events.sort(key=lambda pair: (_happened(pair[0]), pair[0].seq))
    return ResourcePage(kinds, events, found[-1].seq if len(found) == limit else None)


def _happened(event: StoredEvent) -> datetime:
    try:
        moment = parse_iso(event.occurred_at.replace("Z", "+00:00")) if event.occurred_at else None
    except ValueError:
        moment = None
    return moment or event.received_at
