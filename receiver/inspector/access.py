"""Who may use the inspector: loopback only without a token, a token session with one, same-origin POSTs.

The inspector shows webhook bodies (customers, payments) and can re-run handlers, so it is
closed unless asked for, and then guarded against the ways a local web tool is usually
reached from outside:
- without a token, only a loopback client that names a loopback `Host` gets in: a reverse
  proxy (it forwards from loopback, but adds forwarding headers or its own Host) and DNS
  rebinding (a hostile page whose name now points at 127.0.0.1, so its `Host` is that name)
  are refused;
- with a token, the token is presented once (login or `Authorization: Bearer`); the session
  cookie is `HttpOnly; SameSite=Strict` and holds an expiring HMAC keyed by the token, never
  the token itself;
- every POST must come from the inspector's own origin (`Origin`, and `Sec-Fetch-Site` when
  the browser sends it), so another site cannot make the browser re-run handlers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..loopback import is_loopback_address

__all__ = ["SESSION_COOKIE", "SESSION_SECONDS", "InspectorAccess", "Refusal", "is_loopback_host"]

SESSION_COOKIE = "montra_inspect"
SESSION_SECONDS = 12 * 3600
"""A login lasts this long; then the token is asked for again."""

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST = re.compile(r"^(?P<name>\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(?P<port>\d{1,5}))?$")
# Headers a reverse proxy adds: a request that carries one came through a proxy, whatever its client address.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
_SESSION_CONTEXT = b"montra-hooks inspector session v1"


def is_loopback_host(host: str) -> bool:
    """Whether a `Host` header names this machine: `localhost`, `127.0.0.1` or `[::1]`, with or without a port."""
    match = _HOST.match(host.strip())
    return match is not None and match.group("name").lower() in _LOOPBACK_NAMES


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not let in, as the JSON error it is answered with."""

    status: int
    code: str
    message: str

    def response(self) -> Response:
        headers = {"www-authenticate": 'Bearer realm="montra-inspector"'} if self.status == 401 else None
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status, headers=headers)


class InspectorAccess:
    """The inspector's access rules. `token=None` means loopback only."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def needs_login(self) -> bool:
        return self._token is not None

    def check_network(self, request: Request) -> Refusal | None:
        """Without a token: refuse a foreign `Host`, a non-loopback client, or a proxied request."""
        if self._token is not None:
            return None
        if not is_loopback_host(request.headers.get("host", "")):
            return Refusal(
                403,
                "forbidden_host",
                "The inspector answers only requests for localhost, 127.0.0.1 or [::1]: "
                "open it on this machine, or start the receiver with --inspect-token.",
            )
        client = request.client.host if request.client else None
        if not is_loopback_address(client):
            return Refusal(
                403,
                "forbidden_client",
                "The inspector answers only clients on this machine: start the receiver with --inspect-token "
                "to open it to others.",
            )
        if any(name in request.headers for name in _FORWARDING_HEADERS):
            return Refusal(
                403,
                "forbidden_proxy",
                "The inspector does not answer through a proxy without a token: start the receiver with "
                "--inspect-token.",
            )
        return None

    def is_authenticated(self, request: Request) -> bool:
        """With a token: a valid session cookie or `Authorization: Bearer <token>`. Without one: always."""
        if self._token is None:
            return True
        authorization = request.headers.get("authorization", "")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(presented.strip()):
            return True
        return self._valid_session(request.cookies.get(SESSION_COOKIE, ""))

    def token_matches(self, presented: str) -> bool:
        """Constant-time comparison of a presented token with the configured one, on bytes."""
        if self._token is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token)

    def check_same_origin(self, request: Request) -> Refusal | None:
        """A POST must carry an `Origin` naming the host it was sent to, and no cross-site `Sec-Fetch-Site`."""
        refusal = Refusal(
            403,
            "cross_site_request",
            "This action must come from the inspector's own page: reload the page and press the button there.",
        )
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site != "same-origin":
            return refusal
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return refusal
        parts = urlsplit(origin)
        # Compare the authority only: behind a TLS-terminating proxy the app sees http while the browser says https.
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != request.headers.get("host", "").lower():
            return refusal
        return None

    def start_session(self, request: Request, response: Response, *, now: float | None = None) -> None:
        """Set a new session cookie on `response`: an expiring HMAC keyed by the token, never the token."""
        assert self._token is not None
        expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
        response.set_cookie(
            SESSION_COOKIE,
            f"v1.{expires}.{self._sign(expires)}",
            max_age=SESSION_SECONDS,
            path=_cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def end_session(self, request: Request, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path=_cookie_path(request), httponly=True, samesite="strict")

    def _valid_session(self, value: str, *, now: float | None = None) -> bool:
        version, _, rest = value.partition(".")
        expires_text, _, signature = rest.partition(".")
        if version != "v1" or not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(signature.encode("ascii", "replace"), self._sign(expires).encode("ascii"))

    def _sign(self, expires: int) -> str:
        # Keyed by the token: the cookie proves the token was presented, works across workers and restarts,
        # and stops working when the token changes. Its value reveals nothing about the token.
        assert self._token is not None
        key = hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).digest()
        mac = hmac.new(key, str(expires).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _cookie_path(request: Request) -> str:
    # Only the inspector's own paths get the cookie, wherever the receiver is mounted.
    return f"{request.scope.get('root_path', '')}/inspect"
