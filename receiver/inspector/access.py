"""Who may use the inspector: a token always, presented once, then a session; same-origin POSTs.

The inspector shows webhook bodies (customers, payments) and can re-run handlers, so it is
closed unless asked for, and then guarded against the ways a local web tool is usually
reached from outside:
- it always needs a token. A loopback `Host` proves nothing: a reverse proxy on the same
  machine (nginx's default `proxy_pass`) forwards every client with `Host: 127.0.0.1:port`
  from a loopback address. Without an explicit token one is created once in
  `.montra-hooks/inspect-token` and the receiver prints the login URL, as Jupyter does;
- the token is presented once (login or `Authorization: Bearer`); the session cookie is
  `HttpOnly; SameSite=Strict` and holds an expiring HMAC keyed by the token, never the token;
- a token that was not given explicitly only opens the inspector to this machine: a foreign
  `Host` (DNS rebinding), a client that is not loopback, or a proxied request is refused;
- failed logins are throttled per client (429 after 10 a minute), so the token cannot be guessed;
- every POST must come from the inspector's own origin (`Origin`, and `Sec-Fetch-Site` when
  the browser sends it), so another site cannot make the browser re-run handlers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ConfigurationError
from ..loopback import is_loopback_address
from ..private_files import PRIVATE_DIR, load_or_create_private

__all__ = [
    "INSPECT_TOKEN_FILE",
    "MIN_TOKEN_LENGTH",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "InspectorAccess",
    "LoginThrottle",
    "Refusal",
    "check_token",
    "is_loopback_host",
    "load_or_create_inspect_token",
]

SESSION_COOKIE = "montra_inspect"
SESSION_SECONDS = 12 * 3600
"""A login lasts this long; then the token is asked for again."""
INSPECT_TOKEN_FILE = PRIVATE_DIR / "inspect-token"
"""Where `--inspect` without `--inspect-token` keeps the token it created, relative to the working directory."""
MIN_TOKEN_LENGTH = 16

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST = re.compile(r"^(?P<name>\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(?P<port>\d{1,5}))?$")
# Headers a reverse proxy adds: a request that carries one came through a proxy, whatever its client address.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
_SESSION_CONTEXT = b"montra-hooks inspector session v1"


def is_loopback_host(host: str) -> bool:
    """Whether a `Host` header names this machine: `localhost`, `127.0.0.1` or `[::1]`, with or without a port."""
    match = _HOST.match(host.strip())
    return match is not None and match.group("name").lower() in _LOOPBACK_NAMES


def check_token(token: str) -> str:
    """`token` if it is long enough to stand against guessing, else a `ConfigurationError` that says so."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"The inspect token is {len(token)} characters long: use at least {MIN_TOKEN_LENGTH} (e.g. the output "
            "of `python -c 'import secrets; print(secrets.token_urlsafe(24))'`), or leave it out and --inspect "
            f"creates one in {INSPECT_TOKEN_FILE}."
        )
    return token


def load_or_create_inspect_token(path: Path = INSPECT_TOKEN_FILE) -> str:
    """The token in `.montra-hooks/inspect-token`, created once (random, readable by this user only)."""
    token, _ = load_or_create_private(path, lambda: secrets.token_urlsafe(24))
    return check_token(token)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not let in, as the JSON error it is answered with."""

    status: int
    code: str
    message: str
    retry_after: int | None = None

    def response(self) -> Response:
        headers = {"www-authenticate": 'Bearer realm="montra-inspector"'} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status, headers=headers)


class LoginThrottle:
    """At most `limit` failed token presentations per client in `window` seconds; then 429 until one expires.

    Clients are keyed by address (an IPv6 client by its /64, which one host usually holds whole).
    Memory is bounded: past `max_clients`, the clients that failed longest ago are forgotten.
    """

    def __init__(
        self,
        *,
        limit: int = 10,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str | None) -> int | None:
        """Seconds until `client` may try again, or None when it may try now."""
        failures = self._failures.get(_client_key(client))
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, client: str | None) -> None:
        key = _client_key(client)
        failures = self._failures.pop(key, None) or deque(maxlen=self.limit)
        failures.append(self._clock())
        self._failures[key] = failures  # re-inserted: the dict's order is the order of last failure
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]


class InspectorAccess:
    """The inspector's access rules for one token.

    `explicit=False` means the token was created here (not chosen by whoever started the
    receiver): then the inspector also answers only this machine's browsers.
    """

    def __init__(self, token: str, *, explicit: bool = True, throttle: LoginThrottle | None = None) -> None:
        self._token = check_token(token).encode()
        self.explicit = explicit
        self.throttle = throttle or LoginThrottle()

    def check_network(self, request: Request) -> Refusal | None:
        """With a created token: refuse a foreign `Host`, a non-loopback client, or a proxied request."""
        if self.explicit:
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
                "The inspector does not answer through a proxy unless the receiver was started with --inspect-token.",
            )
        return None

    def authenticate(self, request: Request) -> Refusal | None:
        """None when the request carries a valid session cookie or `Authorization: Bearer <token>`.

        A wrong bearer token counts as a failed login (so does a wrong token at the login page).
        """
        if self.has_session(request):
            return None
        authorization = request.headers.get("authorization", "")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.try_token(request, presented.strip())
        return Refusal(401, "unauthorized", "Log in at /inspect/login, or send Authorization: Bearer <inspect token>.")

    def try_token(self, request: Request, presented: str) -> Refusal | None:
        """Check a presented token, throttled: None when it is the token, else 401 (or 429 when throttled)."""
        client = request.client.host if request.client else None
        wait = self.throttle.retry_after(client)
        if wait is not None:
            # Not even compared: while throttled, an answer must tell a guesser nothing.
            message = f"Too many wrong inspect tokens from {client}: try again in {wait} s."
            return Refusal(429, "too_many_attempts", message, retry_after=wait)
        if hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._token):
            return None
        self.throttle.failed(client)
        return Refusal(401, "unauthorized", "That is not the inspect token: log in at /inspect/login.")

    def has_session(self, request: Request) -> bool:
        """Whether the request carries a valid, unexpired session cookie."""
        return self._valid_session(request.cookies.get(SESSION_COOKIE, ""))

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
        key = hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).digest()
        mac = hmac.new(key, str(expires).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def _cookie_path(request: Request) -> str:
    # Only the inspector's own paths get the cookie, wherever the receiver is mounted.
    return f"{request.scope.get('root_path', '')}/inspect"


def _client_key(client: str | None) -> str:
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return client or ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)
