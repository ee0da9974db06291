"""What every inspector page takes from a request: its base path, links to events and to the webhook
route, and a form body read within a bound (the inspector's forms are all URL-encoded)."""

from __future__ import annotations

from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "MAX_FORM_BYTES",
    "BadQuery",
    "FormTooLarge",
    "base_path",
    "event_url",
    "form_too_large",
    "read_form",
    "webhook_url",
]

MAX_FORM_BYTES = 16 * 1024
"""The largest form any inspector page sends, but the edit form (which takes its own limit)."""


def base_path(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/inspect"


def event_url(request: Request, event_id: str) -> str:
    return f"{base_path(request)}/events/{quote(event_id, safe='')}"


def webhook_url(request: Request, path: str) -> str:
    host = request.headers.get("host") or "127.0.0.1:8000"
    return f"{request.url.scheme}://{host}{request.scope.get('root_path', '')}{path}"


class FormTooLarge(Exception):
    """A form body larger than any of the inspector's forms: refused, never read as an empty form."""


async def read_form(request: Request, *, limit: int = MAX_FORM_BYTES) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (all our forms send), without python-multipart."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise FormTooLarge
    body = b"".join(chunks)
    pairs = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    form = {name: values[0] for name, values in pairs.items()}
    if any("\x00" in text for pair in form.items() for text in pair):
        raise BadQuery("The form holds a NUL character: no inspector form sends one.")
    return form


def form_too_large(limit: int = MAX_FORM_BYTES) -> Response:
    message = f"The form is larger than {limit} bytes: no inspector form is."
    return JSONResponse({"error": "body_too_large", "message": message}, status_code=413)


class BadQuery(Exception):
    """A query value the page cannot use: answered 400 with this message."""
