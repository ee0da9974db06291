"""The inspector: pages to look at stored events and their handler runs, and to re-run handlers.

`GET /inspect` lists events newest first, with filters, counts, pages and bulk actions, and the
rejected requests (`lists`, `listing`, `bulk`). `GET /inspect/events/{id}` shows
one event: its body pretty-printed, its headers, each handler run with its error and
traceback and every try (`timeline`), the resources it names, its `previous_attributes` as a
change (`changes`), re-run, replay and edit-and-replay (sent in-process through the webhook path:
`MontraApp.replay`), and a `montra-hooks replay` command to copy. `GET /inspect/resources/{ref}`
lists the events about one resource. Who may open them is
decided in `access`. Pages are rendered on the server with Jinja2, autoescaped (bodies
and headers come from the internet), with one small script and one stylesheet from this package:
nothing is fetched from anywhere else.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from ..command import command_name
from ..ordering import waiting_text
from ..replays import original_id
from ..stores.open import DEFAULT_DB
from ..stores.protocol import REDACTED, Run, StoredEvent, iso
from .access import InspectorAccess, Refusal, is_loopback_host
from .body import body_view, highlight_json
from .changes import changes
from .lists import ListPages
from .requests import (
    MAX_FORM_BYTES,
    BadQuery,
    FormTooLarge,
    base_path,
    event_url,
    form_too_large,
    read_form,
    webhook_url,
)
from .timeline import MAX_RESOURCE_PAGE, RESOURCE_PAGE_SIZE, attempt_rows, read_resource, resource_path

if TYPE_CHECKING:
    from ..app import MontraApp

__all__ = ["Inspector", "highlight_json"]


Endpoint = Callable[[Request], Awaitable[Response]]
Kind = Literal["page", "api", "action", "login", "static"]

_STATIC = {"inspector.css": "text/css; charset=utf-8", "inspector.js": "text/javascript; charset=utf-8"}
_SECURITY_HEADERS = {
    # Defence in depth behind autoescaping: no inline script, nothing loaded from another origin.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer, browsers send `Origin: null` on our own form POSTs.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",  # pages and JSON hold event data: keep them out of caches
}
_MAX_SEQ = 2**63 - 1
_AUTHENTICATED = "montra.inspector.authenticated"  # set in the request's scope by the guard


class Inspector:
    """The inspector's routes, for a `MontraApp` to mount: `Inspector(app, token=..., explicit=True).routes()`.

    `explicit=False` (a token created in `token_file`, not chosen by whoever started the receiver)
    also keeps the pages to this machine: see `access`.
    """

    def __init__(self, app: MontraApp, *, token: str, explicit: bool, token_file: Path | None = None) -> None:
        self.app = app
        self.access = InspectorAccess(token, explicit=explicit)
        self.token_file = token_file
        """Where the token was read or created, when it was not given explicitly."""
        self._token = token
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("receiver.inspector", "templates"),
            autoescape=True,  # always, whatever the file name: bodies and headers are attacker-controlled
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates = Jinja2Templates(env=env)
        static = resources.files("receiver.inspector").joinpath("static")
        self._static = {name: static.joinpath(name).read_bytes() for name in _STATIC}
        self.lists = ListPages(self)

    @property
    def login_path(self) -> str:
        """`/inspect/login?token=...`: the link that logs a browser in (relative to where the app is mounted)."""
        return f"/inspect/login?{urlencode({'token': self._token})}"

    def routes(self) -> list[BaseRoute]:
        guard = self._guard
        return [
            Route("/inspect/login", guard(self.login, "login"), methods=["GET", "POST"]),
            Route("/inspect/logout", guard(self.logout, "action"), methods=["POST"]),
            Route("/inspect/api/events/{event_id:path}", guard(self.api_event, "api"), methods=["GET"]),
            Route("/inspect/static/{name}", guard(self.static, "static"), methods=["GET"]),
            Route("/inspect/events/{event_id:path}/rerun", guard(self.rerun, "action"), methods=["POST"]),
            # The event and resource pages' actions and timeline (before the catch-all event path).
            Route("/inspect/events/{event_id:path}/replay", guard(self.replay, "action"), methods=["POST"]),
            Route("/inspect/resources/{ref:path}", guard(self.resource_page, "page"), methods=["GET"]),
            Route("/inspect/events/{event_id:path}", guard(self.event_page, "page"), methods=["GET"]),
            # The event list, its bulk actions and the rejections (ListPages, in lists.py).
            *self.lists.routes(guard),
        ]

    def _guard(self, endpoint: Endpoint, kind: Kind) -> Endpoint:
        async def guarded(request: Request) -> Response:
            refusal = self.access.check_network(request)
            if refusal is None and _has_nul(request):
                # No stored id, type or handler holds one, and PostgreSQL refuses it in any text parameter.
                refusal = Refusal(400, "bad_query", "The address holds a NUL character (%00): no event id has one.")
            if refusal is None and request.method == "POST":
                refusal = self.access.check_same_origin(request)
            if refusal is None and kind not in ("login", "static"):
                refusal = self.access.authenticate(request)
                if refusal is not None and refusal.status == 401 and kind == "page":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return _secured(RedirectResponse(f"{base_path(request)}/login?{urlencode({'next': target})}", 303))
                request.scope[_AUTHENTICATED] = refusal is None
            if refusal is not None:
                return _secured(refusal.response())
            try:
                return _secured(await endpoint(request))
            except BadQuery as e:
                return _secured(JSONResponse({"error": "bad_query", "message": str(e)}, status_code=400))

        return guarded

    # -- pages -----------------------------------------------------------------------------

    async def event_page(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        event = await self.app.store.get_event(event_id)
        if event is None:
            return self._render(request, "not_found.html", {"event_id": event_id}, status_code=404)
        requeued = _whole_number("requeued", request.query_params.get("requeued", "").strip())
        return await self._event_view(request, event, requeued=requeued)

    async def _event_view(
        self,
        request: Request,
        event: StoredEvent,
        *,
        requeued: int | None = None,
        edited: str | None = None,
        replay_error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        """The event page; after a refused replay, with the error and the edited text kept in the form."""
        store = self.app.store
        runs = await store.get_runs(event.id)
        attempts, refs = await store.get_attempts(event.id), await store.get_refs(event.id)
        body_html, body_kind = body_view(event.body)
        parsed = json.loads(event.body) if body_kind == "JSON" else None  # only a body body_view could pretty-print
        original = original_id(event.id, event.headers)
        context = {
            "event": _event_row(request, event),
            "occurred_at": event.occurred_at,
            "runs": [self._run_view(run) for run in runs],
            "rerunnable": sum(1 for run in runs if run.status in ("failed", "dead")),
            "headers": sorted(event.headers.items()),
            "redacted": REDACTED,
            "body_html": body_html,
            "body_kind": body_kind,
            "body_size": len(event.body),
            "replay_command": self._replay_command(request, event.id),
            "state": _state(event, runs),
            "state_url": f"{base_path(request)}/api/events/{quote(event.id, safe='')}",
            "requeued": requeued,
            "waiting": await self._waiting(request, event.id, runs),
            # The event and resource pages' history, change and edit form.
            "attempts": attempt_rows(attempts),
            "refs": [(kind, ref, base_path(request) + resource_path(ref)) for kind, ref in refs],
            "changes": changes(parsed),
            "replay_of": (original, event_url(request, original)) if original != event.id else None,
            "edit_text": edited if edited is not None else _edit_text(event.body, parsed),
            "replay_error": replay_error,
        }
        return self._render(request, "event.html", context, status_code=status_code)

    # -- the event and resource pages' replay action and timeline ----------------------------

    async def replay(self, request: Request) -> Response:
        """Send the event (as stored, or the form's edited `body`) to this receiver under a new id; show the new one."""
        event_id = request.path_params["event_id"]
        limit = _edit_form_limit(self.app.max_body)
        try:
            form = await read_form(request, limit=limit)
        except FormTooLarge:
            return form_too_large(limit)
        event = await self.app.store.get_event(event_id)
        if event is None:
            return JSONResponse({"error": "not_found", "message": f"No event {event_id!r} is stored."}, 404)
        edited = form.get("body")
        body = event.body
        if edited is not None:
            edited = edited.replace("\r\n", "\n")  # browsers send a textarea's lines with CRLF
            try:
                json.loads(edited)
            except (ValueError, RecursionError) as e:
                error = f"The edited body is not JSON ({_json_error(e)}). Nothing was sent: fix it and submit again."
                return await self._event_view(request, event, edited=edited, replay_error=error, status_code=400)
            body = edited.encode()
        status, answer = await self.app.replay(body, original=original_id(event.id, event.headers))
        # Stored is what counts: an inline receiver answers 500 when a handler failed, with the event kept.
        if status == 200 or answer.get("error") == "handler_failed":
            return RedirectResponse(event_url(request, answer["id"]), 303)
        error = f"The receiver refused the replay ({answer['error']}): {answer['message']} Nothing was stored."
        return await self._event_view(request, event, edited=edited, replay_error=error, status_code=status)

    async def resource_page(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        after = _whole_number("after", request.query_params.get("after", "").strip())
        limit = _whole_number("limit", request.query_params.get("limit", "").strip()) or RESOURCE_PAGE_SIZE
        page = await read_resource(self.app.store, ref, after=after, limit=min(limit, MAX_RESOURCE_PAGE))
        if not page.events and after is None:
            return self._render(request, "resource.html", {"ref": ref, "found": False}, status_code=404)
        here = base_path(request) + resource_path(ref)
        context = {
            "ref": ref,
            "found": True,
            "kinds": page.kinds,
            "rows": [
                {**_event_row(request, event), "occurred_at": event.occurred_at, "runs": runs}
                for event, runs in page.events
            ],
            "after": after,
            "first_url": here,
            "next_url": f"{here}?{urlencode({'after': page.next_after})}" if page.next_after is not None else None,
            "list_url": f"{base_path(request)}?{urlencode({'ref': ref})}",
        }
        return self._render(request, "resource.html", context)

    async def _waiting(self, request: Request, event_id: str, runs: list[Run]) -> dict[str, dict[str, str]]:
        """For each run of an ordered handler held back by an earlier event: that event, its link, and why."""
        found: dict[str, dict[str, str]] = {}
        for run in runs:
            registration = self.app.hooks.get(run.handler)
            if run.status not in ("pending", "failed") or registration is None or registration.ordered_by is None:
                continue
            waiting = await self.app.store.waiting_for(event_id, run.handler)
            if waiting is not None:
                limit = registration.max_attempts or self.app.settings.max_attempts
                text = waiting_text(waiting, limit).removeprefix(f"waiting for {waiting.event_id} ")
                url = event_url(request, waiting.event_id)
                found[run.handler] = {"event_id": waiting.event_id, "url": url, "state": text}
        return found

    async def login(self, request: Request) -> Response:
        base = base_path(request)
        if request.method == "POST":
            try:
                form = await read_form(request)
            except FormTooLarge:
                return form_too_large()
            token, target = form.get("token", ""), form.get("next", "")
        else:
            token, target = request.query_params.get("token", ""), request.query_params.get("next", "")
            if token:
                _hide_query(request)
        target = target if _is_inspector_path(base, target) else base
        if not token:
            if self.access.has_session(request):
                return RedirectResponse(target, 303)
            return self._render(request, "login.html", {"next": target, "error": None})
        refusal = self.access.try_token(request, token)
        if refusal is None:
            redirect = RedirectResponse(target, 303)
            self.access.start_session(request, redirect)
            return redirect
        error = refusal.message if refusal.status != 401 else self._wrong_token_message()
        page = self._render(request, "login.html", {"next": target, "error": error}, status_code=refusal.status)
        if refusal.retry_after is not None:
            page.headers["retry-after"] = str(refusal.retry_after)
        return page

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{base_path(request)}/login", 303)
        self.access.end_session(request, response)
        return response

    async def rerun(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        try:
            handler = (await read_form(request)).get("handler") or None
        except FormTooLarge:
            return form_too_large()
        if await self.app.store.get_event(event_id) is None:
            return JSONResponse({"error": "not_found", "message": f"No event {event_id!r} is stored."}, 404)
        count = await self.app.rerun(event_id, handler=handler)
        return RedirectResponse(f"{event_url(request, event_id)}?requeued={count}", 303)

    # -- JSON for the pages' polling -------------------------------------------------------

    async def api_event(self, request: Request) -> Response:
        event_id = request.path_params["event_id"]
        event = await self.app.store.get_event(event_id)
        if event is None:
            return JSONResponse({"error": "not_found", "message": f"No event {event_id!r} is stored."}, 404)
        runs = await self.app.store.get_runs(event_id)
        return JSONResponse(
            {
                "id": event.id,
                "status": event.status,
                "state": _state(event, runs),
                "runs": [{"handler": r.handler, "status": r.status, "attempts": r.attempts} for r in runs],
            }
        )

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self._static:
            return JSONResponse({"error": "not_found", "message": f"No inspector file {name!r}."}, 404)
        return Response(self._static[name], media_type=_STATIC[name], headers={"cache-control": "no-cache"})

    # -- helpers ---------------------------------------------------------------------------

    def _render(self, request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> Response:
        logged_in = bool(request.scope.get(_AUTHENTICATED)) or self.access.has_session(request)
        context = {"base": base_path(request), "logged_in": logged_in, "token_file": self.token_file, **context}
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def _wrong_token_message(self) -> str:
        if self.token_file is None:
            return "That token is not the receiver's --inspect-token."
        return f"That token is not the one in {self.token_file}: use the login link the receiver printed."

    def _run_view(self, run: Run) -> dict[str, Any]:
        registration = self.app.hooks.get(run.handler)
        error = (run.last_error or "").rstrip()
        return {
            "handler": run.handler,
            "status": run.status,
            "attempts": run.attempts,
            "max_attempts": (registration.max_attempts or self.app.settings.max_attempts) if registration else None,
            "registered": registration is not None,
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "duration_ms": run.duration_ms,
            "next_attempt_at": _iso(run.next_attempt_at) if run.status in ("failed", "pending") else None,
            "lease_until": _iso(run.lease_until) if run.status == "running" else None,
            "error": error,
            "error_summary": error.splitlines()[-1] if error else "",
            "can_rerun": run.status in ("failed", "dead") and registration is not None,
        }

    def _replay_command(self, request: Request, event_id: str) -> str:
        parts = [command_name(), "replay", "--id", event_id, "--to", webhook_url(request, self.app.path)]
        if self.app.store.path != DEFAULT_DB:
            parts[2:2] = ["--db", self.app.store.path]
        if not is_loopback_host(request.headers.get("host", "")):
            parts.append("--allow-remote")
        return shlex.join(parts)


def _whole_number(name: str, text: str) -> int | None:
    """A query value that must be an event seq or a count: None when absent, `BadQuery` when not one."""
    if not text:
        return None
    # A store's seq is a signed 64-bit integer: a larger number is no seq (and SQLite would overflow on it).
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > _MAX_SEQ:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise BadQuery(f"{name} must be a whole number from 0 to {_MAX_SEQ}, got {shown!r}.")
    return int(text)


def _has_nul(request: Request) -> bool:
    values = [*request.path_params.values(), *request.query_params.keys(), *request.query_params.values()]
    return any("\x00" in str(value) for value in values)


def _event_row(request: Request, event: StoredEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "id": event.id,
        "type": event.type,
        "status": event.status,
        "received_at": iso(event.received_at),
        "received": _display_time(iso(event.received_at)),
        "url": event_url(request, event.id),
    }


def _state(event: StoredEvent, runs: list[Run]) -> str:
    """A short fingerprint of what the event page shows that can change; the page reloads when it does."""
    parts = [event.status, *(f"{r.handler}\0{r.status}\0{r.attempts}\0{r.finished_at}" for r in runs)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else iso(moment)


def _display_time(iso_text: str | None) -> str:
    # 2026-11-25T17:00:00.123456Z -> 2026-11-25 17:00:00.123
    return iso_text[:23].replace("T", " ") if iso_text else ""


def _is_inspector_path(base: str, target: str) -> bool:
    # Only a path of this inspector: never another site (`//evil`, `https://...`) after logging in.
    return (target == base or target.startswith((f"{base}/", f"{base}?"))) and "\\" not in target


def _hide_query(request: Request) -> None:
    # uvicorn's access log prints the request's scope after the app has answered: keep the token out of it.
    request.scope["query_string"] = b"token=[redacted]"


def _edit_form_limit(max_body: int) -> int:
    # A body the receiver takes, pretty-printed and URL-encoded (up to 3 bytes a byte), and room for the rest.
    return 2 * 3 * max_body + MAX_FORM_BYTES


def _edit_text(body: bytes, parsed: object) -> str:
    """The body as the edit form holds it: pretty-printed when it is JSON the page could pretty-print."""
    if parsed is not None:
        return json.dumps(parsed, indent=2, ensure_ascii=False)
    return body.decode("utf-8", "replace")


def _json_error(error: ValueError | RecursionError) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return "nested too deep" if isinstance(error, RecursionError) else str(error)


def _secured(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
