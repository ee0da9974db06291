"""The inspector's list pages: events (filters, counts, pages, bulk actions) and rejected requests.

- `GET /inspect`: the events the filters match (see `listing`), newest first, a page at a time, with
  counts by status; the newest page polls `/inspect/api/events` so new events appear without a reload.
- `GET /inspect/bulk/{rerun,replay}?<filters>`: how many events the action would touch, and a button;
  `POST` to the same address acts (see `bulk`), then returns to the list, which says what was done.
- `GET /inspect/rejections` and `/inspect/rejections/{id}`: refused requests, each explained in words.
- JSON twins under `/inspect/api/`: `events`, `counts`, `rejections`, `rejections/{id}`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..command import command_name
from ..errors import REJECTION_REASONS
from ..rejections import explain, rejection_json
from ..stores.protocol import MAX_REJECTIONS, REDACTED, Rejection, iso
from . import bulk
from .listing import (
    COUNT_CAP,
    EVENT_STATUSES,
    FILTERS,
    PAGE_SIZE,
    BadFilter,
    ListQuery,
    count_by_status,
    read_page,
    row_view,
    short_time,
    shown_count,
    whole_number,
)
from .requests import FormTooLarge, base_path, event_url, form_too_large, read_form, webhook_url

if TYPE_CHECKING:
    from ..app import MontraApp
    from .pages import Endpoint, Inspector, Kind

__all__ = ["REJECTIONS_SHOWN", "ListPages"]

REJECTIONS_SHOWN = 100
"""Rejections per page: the newest this many of the (at most MAX_REJECTIONS) kept."""
SHOWN_BODY_CHARS = 2000
"""A rejected body is shown this far (the store keeps at most REJECTED_BODY_BYTES of it)."""
_POLL_LIMIT = 500  # the most rows the polling endpoint returns at once


class ListPages:
    """The list pages of one `Inspector` (its store, templates and access rules)."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector

    def routes(self, g: Callable[[Endpoint, Kind], Endpoint]) -> list[BaseRoute]:
        """The routes, each wrapped by the inspector's guard `g` (access rules for its kind)."""
        return [
            Route("/inspect", g(self.list_page, "page"), methods=["GET"]),
            Route("/inspect/api/events", g(self.api_events, "api"), methods=["GET"]),
            Route("/inspect/api/counts", g(self.api_counts, "api"), methods=["GET"]),
            Route("/inspect/bulk/{action}", g(self.bulk_confirm, "page"), methods=["GET"]),
            Route("/inspect/bulk/{action}", g(self.bulk_act, "action"), methods=["POST"]),
            Route("/inspect/rejections", g(self.rejections_page, "page"), methods=["GET"]),
            Route("/inspect/rejections/{rejection_id}", g(self.rejection_page, "page"), methods=["GET"]),
            Route("/inspect/api/rejections", g(self.api_rejections, "api"), methods=["GET"]),
            Route("/inspect/api/rejections/{rejection_id}", g(self.api_rejection, "api"), methods=["GET"]),
        ]

    @property
    def app(self) -> MontraApp:
        return self.inspector.app

    # -- the event list ----------------------------------------------------------------------

    async def list_page(self, request: Request) -> Response:
        params = request.query_params
        raw = {name: params.get(name, "").strip() for name in FILTERS}  # shown back as typed when one is bad
        try:
            query = ListQuery.parse(params)
            before = whole_number("before", params.get("before", "").strip())
            newer = whole_number("newer", params.get("newer", "").strip())
            for name in ("after", "limit"):  # the polling endpoint's: a page ignores them, but never a bad one
                whole_number(name, params.get(name, "").strip())
            notice = _notice(params)
        except BadFilter as e:
            context = self._list_context(request, raw, error=str(e), error_parameter=e.parameter)
            return self.inspector._render(request, "list.html", context, status_code=400)
        # Both read on the store's own threads (or connections), at once.
        page, counts = await asyncio.gather(
            read_page(self.app.store, query.selection, before=before, newer=newer),
            count_by_status(self.app.store, query.selection),
        )
        live = before is None and newer is None
        context = self._list_context(
            request,
            query.text,
            events=[row_view(e, event_url(request, e.id)) for e in page.events],
            counts=[
                {
                    "status": name,
                    "count": shown_count(counts[name]),
                    "current": (query.text["status"] or "all") == name,
                    "link": query.query(status=None if name == "all" else name),
                }
                for name in counts
            ],
            older=query.query(before=page.older) if page.older is not None else None,
            newer=query.query(newer=page.newer) if page.newer is not None else None,
            newest=query.query() if not live else None,
            live=live,
            after=(page.events[-1].seq - 1) if page.events else 0,
            filter_query=query.query(),
            filtered=query.filtered,
            notice=notice,
        )
        return self.inspector._render(request, "list.html", context)

    def _list_context(self, request: Request, filters: dict[str, str], **context: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "events": [],
            "counts": [],
            "older": None,
            "newer": None,
            "newest": None,
            "live": False,
            "after": 0,
            "filter_query": "",
            "filtered": any(filters.values()),
            "notice": None,
            "error": None,
            "error_parameter": None,
        }
        return {
            **defaults,
            "filters": filters,
            "statuses": EVENT_STATUSES,
            "handlers": sorted(self.app.hooks.names),
            "page_size": PAGE_SIZE,
            "count_cap": COUNT_CAP,
            "bulk_max": bulk.BULK_MAX,
            "trigger_command": shlex.join(
                [command_name(), "trigger", "customer.created", "--to", webhook_url(request, self.app.path)]
            ),
            **context,
        }

    async def api_events(self, request: Request) -> Response:
        """The list's rows as JSON: the same filters, plus `after`/`before` (seqs) and `limit`, newest first."""
        params = request.query_params
        try:
            query = ListQuery.parse(params)
            before = whole_number("before", params.get("before", "").strip())
            after = whole_number("after", params.get("after", "").strip())
            limit = whole_number("limit", params.get("limit", "").strip())
        except BadFilter as e:
            return _bad_filter(e)
        selection = dataclasses.replace(
            query.selection,
            after_seq=after,
            max_seq=before - 1 if before is not None else None,
            limit=min(max(limit, 1), _POLL_LIMIT) if limit is not None else PAGE_SIZE,
        )
        rows = await self.app.store.list_events(selection)
        return JSONResponse({"events": [row_view(e, event_url(request, e.id)) for e in rows]})

    async def api_counts(self, request: Request) -> Response:
        """Events the filters match, by status and in all (`all`), each counted to `cap + 1` at most."""
        try:
            query = ListQuery.parse(request.query_params)
        except BadFilter as e:
            return _bad_filter(e)
        counts = await count_by_status(self.app.store, query.selection)
        return JSONResponse({"counts": counts, "cap": COUNT_CAP})

    # -- bulk actions ------------------------------------------------------------------------

    async def bulk_confirm(self, request: Request) -> Response:
        action = _action(request)
        if action is None:
            return _no_action(request)
        try:
            query = ListQuery.parse(request.query_params)
        except BadFilter as e:
            return _bad_filter(e)
        plan = await bulk.plan(self.app, action, query.selection)
        context = {
            "action": action,
            "plan": plan,
            "count": f"{plan.count:,}",
            "bulk_max": f"{bulk.BULK_MAX:,}",
            "filters": query.text,
            "filter_query": query.query(),
            "handler": query.text["handler"],
            "cli_command": _cli_command(action, query),
        }
        return self.inspector._render(request, "bulk.html", context)

    async def bulk_act(self, request: Request) -> Response:
        action = _action(request)
        if action is None:
            return _no_action(request)
        try:
            form = await read_form(request)
        except FormTooLarge:
            return form_too_large()
        try:
            query = ListQuery.parse(form)
            max_seq = whole_number("max_seq", form.get("max_seq", "").strip())
        except BadFilter as e:
            return _bad_filter(e)
        if max_seq is None:
            return _bad_filter(BadFilter("max_seq", "max_seq is missing: confirm the action from its page."))
        try:
            if action == "rerun":
                events, runs = await bulk.rerun(self.app, query.selection, max_seq=max_seq)
                done = {"requeued": runs, "events": events}
            else:
                answers = await bulk.replay(self.app, query.selection, max_seq=max_seq)
                refused = sum(n for answer, n in answers.items() if answer not in bulk.ACCEPTED)
                done = {"replayed": sum(answers.values()), "refused": refused}
        except bulk.TooMany:
            message = (
                f"More than {bulk.BULK_MAX:,} events match now: narrow the filters (a time range, a type) and "
                "confirm again, or use the command line, which takes any number."
            )
            return JSONResponse({"error": "too_many_events", "message": message}, status_code=400)
        except bulk.CannotSign as e:
            return JSONResponse({"error": "cannot_sign", "message": f"Nothing was replayed. {e}"}, status_code=409)
        return RedirectResponse(f"{base_path(request)}?{query.query(**done)}", 303)

    # -- rejections --------------------------------------------------------------------------

    async def rejections_page(self, request: Request) -> Response:
        try:
            reason = _reason(request)
        except BadFilter as e:
            context = {"rejections": [], "reason": "", "error": str(e), "shown": REJECTIONS_SHOWN, "kept": ""}
            return self.inspector._render(request, "rejections.html", context, status_code=400)
        rows = await self.app.store.list_rejections(reasons=[reason] if reason else (), limit=REJECTIONS_SHOWN)
        context = {
            "rejections": [_rejection_row(request, r) for r in rows],
            "reason": reason,
            "error": None,
            "shown": REJECTIONS_SHOWN,
            "kept": f"{MAX_REJECTIONS:,}",
        }
        return self.inspector._render(request, "rejections.html", context)

    async def rejection_page(self, request: Request) -> Response:
        try:
            found = await self._rejection(request)
        except BadFilter as e:
            return _bad_filter(e)
        if found is None:
            context = {"r": None, "rejection_id": request.path_params["rejection_id"]}
            return self.inspector._render(request, "rejection.html", context, status_code=404)
        text = found.body.decode("utf-8", errors="replace")
        context = {
            "r": _rejection_row(request, found),
            "message": found.message,
            "headers": sorted(found.headers.items()),
            "redacted": REDACTED,
            "body": text[:SHOWN_BODY_CHARS],
            "body_cut": len(text) > SHOWN_BODY_CHARS,
            "body_bytes": len(found.body),
            "shown_chars": SHOWN_BODY_CHARS,
        }
        return self.inspector._render(request, "rejection.html", context)

    async def api_rejections(self, request: Request) -> Response:
        try:
            reason = _reason(request)
        except BadFilter as e:
            return _bad_filter(e)
        rows = await self.app.store.list_rejections(reasons=[reason] if reason else (), limit=REJECTIONS_SHOWN)
        return JSONResponse({"rejections": [rejection_json(r) for r in rows]})

    async def api_rejection(self, request: Request) -> Response:
        try:
            found = await self._rejection(request)
        except BadFilter as e:
            return _bad_filter(e)
        if found is None:
            number = request.path_params["rejection_id"]
            return JSONResponse({"error": "not_found", "message": f"No rejection {number} is kept."}, 404)
        return JSONResponse(rejection_json(found))

    async def _rejection(self, request: Request) -> Rejection | None:
        number = whole_number("id", request.path_params["rejection_id"])
        return None if not number else await self.app.store.get_rejection(number)


def _action(request: Request) -> bulk.Action | None:
    name = request.path_params["action"]
    return next((a for a in bulk.ACTIONS if a == name), None)


def _no_action(request: Request) -> Response:
    message = f"No bulk action {request.path_params['action']!r}: use rerun or replay."
    return JSONResponse({"error": "not_found", "message": message}, status_code=404)


def _bad_filter(error: BadFilter) -> Response:
    return JSONResponse({"error": "bad_filter", "message": str(error), "parameter": error.parameter}, 400)


def _notice(params: Any) -> str | None:
    """What a bulk action did, from the numbers its redirect carries (only numbers: the sentence is ours)."""
    numbers = {name: whole_number(name, params.get(name, "").strip()) for name in ("requeued", "events")}
    numbers |= {name: whole_number(name, params.get(name, "").strip()) for name in ("replayed", "refused")}
    if numbers["requeued"] is not None:
        events = numbers["events"] or 0
        return (
            f"Re-queued {numbers['requeued']:,} run(s) of {events:,} event(s): "
            "the dispatcher runs them now, and their statuses change here as they finish."
        )
    if numbers["replayed"] is not None:
        refused = numbers["refused"] or 0
        refusals = f"; {refused:,} refused (see Rejections)" if refused else ""
        return f"Replayed {numbers['replayed']:,} event(s) under new ids{refusals}: they are the newest events."
    return None


def _cli_command(action: bulk.Action, query: ListQuery) -> str:
    """The command that does the same for any number of events (what the page says past BULK_MAX)."""
    text = query.text
    if action == "rerun":
        parts = [command_name(), "retry"]
        if text["handler"]:
            parts += ["--handler", text["handler"]]
        if text["status"] in bulk.RERUNNABLE:
            parts += ["--status", text["status"]]
        return shlex.join(parts)
    parts = [command_name(), "replay"]
    for name in ("type", "status", "since", "until", "id"):
        if text[name]:
            parts += [f"--{name}", text[name]]
    return shlex.join([*parts, "--to", "URL"])


def _reason(request: Request) -> str:
    """The `reason` filter of the rejections pages: empty, or one of the codes a refusal is recorded under."""
    reason = request.query_params.get("reason", "").strip()
    if reason and reason not in REJECTION_REASONS:
        shown = reason if len(reason) <= 40 else reason[:40] + "..."
        raise BadFilter("reason", f"reason must be one of {', '.join(REJECTION_REASONS)}; got {shown!r}.")
    return reason


def _rejection_row(request: Request, rejection: Rejection) -> dict[str, Any]:
    return {
        "id": rejection.id,
        "reason": rejection.reason,
        "why": explain(rejection),
        "remote": rejection.remote or "",
        "received_at": iso(rejection.received_at),
        "received": short_time(rejection.received_at),
        "webhook_id": rejection.headers.get("webhook-id") or rejection.headers.get("svix-id") or "",
        "url": f"{base_path(request)}/rejections/{rejection.id}",
    }
