"""The ASGI app: `POST /webhooks` verifies, stores durably, acknowledges, then dispatches.

The webhook path is served by a lean ASGI function (no Request object, no middleware): it
is the hot path. Everything else (`/healthz`, `/stream`, `/inspect`) goes through Starlette.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, Any, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from .dev_secret import secrets_from_env
from .dispatch import Dispatcher, DispatchSettings
from .errors import ConfigurationError, EnvelopeError, StoreUnavailable, VerificationError
from .event import parse_envelope, resource_refs
from .hooks import Hooks
from .ordering import order_time, run_ordering
from .replays import REPLAY_OF_HEADER, replay_id
from .retention import Retention
from .stores.open import DEFAULT_DB, open_store
from .stores.protocol import Incoming, Store
from .stream import DEFAULT_KEEPALIVE, EventStream
from .verify import Verifier, sign

if TYPE_CHECKING:
    from .inspector.pages import Inspector
    from .metrics import Metrics

__all__ = ["DEFAULT_MAX_BODY", "MontraApp", "create_app"]

log = logging.getLogger("montra.receiver")

DEFAULT_MAX_BODY = 1024 * 1024
_MIB = 1024 * 1024
MIN_FREE_BYTES = 64 * _MIB
"""`/healthz` is 503 below this much free space on the store's disk (or 4 x max_body, if more)."""
MAX_HEADER_BYTES = 32 * 1024
"""Request headers larger than this are refused (431): by `receiver.server`'s protocol as they arrive, and here
again for servers that do not bound them."""

_STATUS_OF_REASON = {
    "missing_headers": 400,
    "bad_timestamp": 400,
    "timestamp_out_of_tolerance": 401,
    "invalid_signature": 401,
}
_JSON_HEADERS = [(b"content-type", b"application/json")]
# Headers that must have one value, with the error code of a request that sends two different ones.
_SINGLE_VALUED = {
    "webhook-id": "missing_headers",
    "svix-id": "missing_headers",
    "webhook-timestamp": "bad_timestamp",
    "svix-timestamp": "bad_timestamp",
}
_SIGNATURE_NAMES = frozenset({"webhook-signature", "svix-signature"})


def create_app(
    hooks: Hooks | None = None,
    *,
    db: str | os.PathLike[str] | Store | None = None,
    secrets: Sequence[str] | str | None = None,
    path: str = "/webhooks",
    tolerance: int = 300,
    max_body: int = DEFAULT_MAX_BODY,
    dispatch: Literal["background", "inline"] = "background",
    max_attempts: int = 7,
    backoff: float = 1.0,
    concurrency: int = 16,
    lease: float = 30.0,
    inspect: bool = False,
    inspect_token: str | None = None,
    stream_token: str | None = None,
    stream_keepalive: float = DEFAULT_KEEPALIVE,
    min_free_bytes: int | None = None,
    retain: float | timedelta | None = None,
    metrics: bool = False,
    metrics_token: str | None = None,
) -> MontraApp:
    """Build the receiver app, standalone or to mount in a Starlette or FastAPI app.

    >>> app = create_app(hooks, db="montra-events.db", secrets=["whsec_..."])

    `secrets` default to env `MONTRA_HOOKS_SECRETS`; `db` (a SQLite file, or a `postgresql://` URL for
    several instances on one database) to env `MONTRA_HOOKS_DB`, then `montra-events.db`.
    Mounted, pass `app.lifespan` to the parent (`FastAPI(lifespan=app.lifespan)`).
    `stream_token` (default env `MONTRA_HOOKS_STREAM_TOKEN`) turns on `GET /stream`, the tunnel's source.
    `inspect=True` (or an `inspect_token`, default env `MONTRA_HOOKS_INSPECT_TOKEN`) turns on the `/inspect` pages.
    They always need a token (16 characters or more): without one, `inspect=True` reads or creates
    `.montra-hooks/inspect-token` in the working directory, and then answers this machine only
    (loopback `Host` and client); `app.inspector.login_path` is the link that logs a browser in.
    `/healthz` answers 503 when the store's disk has less than `min_free_bytes` free (default: 64 MiB or
    4 x `max_body`, whichever is more).
    `retain` (seconds or a timedelta: `timedelta(days=30)`) prunes older events in the background, in small batches.
    `metrics=True` (or a `metrics_token`, then required as a bearer token) serves `GET /metrics` for Prometheus.
    """
    if secrets is None:
        secrets = secrets_from_env()
    if not secrets:
        raise ConfigurationError("No webhook secret: pass secrets=[...] or set MONTRA_HOOKS_SECRETS.")
    if dispatch not in ("background", "inline"):
        raise ConfigurationError(f"dispatch must be 'background' or 'inline', got {dispatch!r}.")
    if max_attempts < 1:
        raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}.")
    if db is None:
        db = os.environ.get("MONTRA_HOOKS_DB") or DEFAULT_DB
    if inspect_token is None:
        inspect_token = os.environ.get("MONTRA_HOOKS_INSPECT_TOKEN") or None
    if stream_token is None:
        stream_token = os.environ.get("MONTRA_HOOKS_STREAM_TOKEN") or None
    keep = retain.total_seconds() if isinstance(retain, timedelta) else retain
    if keep is not None and keep <= 0:
        raise ConfigurationError(f"retain must be a positive duration, got {retain!r}.")
    settings = DispatchSettings(max_attempts=max_attempts, backoff=backoff, concurrency=concurrency, lease=lease)
    secrets = [secrets] if isinstance(secrets, str) else list(secrets)
    return MontraApp(
        hooks or Hooks(),
        db=db,
        verifier=Verifier(secrets, tolerance=tolerance),
        signing_secret=_signing_secret(secrets),
        path=path,
        max_body=max_body,
        inline=dispatch == "inline",
        inspect=inspect or bool(inspect_token),
        inspect_token=inspect_token or None,
        settings=settings,
        stream_token=stream_token,
        stream_keepalive=stream_keepalive,
        min_free_bytes=min_free_bytes if min_free_bytes is not None else max(MIN_FREE_BYTES, 4 * max_body),
        retain=keep,
        metrics=metrics or metrics_token is not None,
        metrics_token=metrics_token,
    )


class MontraApp:
    """The receiver as an ASGI app. `lifespan` opens the store and runs the dispatcher."""

    def __init__(
        self,
        hooks: Hooks,
        *,
        db: str | os.PathLike[str] | Store,
        verifier: Verifier,
        path: str,
        max_body: int,
        inline: bool,
        settings: DispatchSettings,
        inspect: bool = False,
        inspect_token: str | None = None,
        stream_token: str | None = None,
        stream_keepalive: float = DEFAULT_KEEPALIVE,
        min_free_bytes: int = 0,
        retain: float | None = None,
        metrics: bool = False,
        metrics_token: str | None = None,
        signing_secret: str | None = None,
    ) -> None:
        self.hooks = hooks
        # What the inspector's replay signs with: never shown, logged or stored (see `replay`).
        self._signing_secret = signing_secret
        self.min_free_bytes = min_free_bytes
        self.verifier = verifier
        self.path = path
        self.max_body = max_body
        self.inline = inline
        self.settings = settings
        self._db = db
        self._inspect = inspect
        self._store: Store | None = None
        self._dispatcher: Dispatcher | None = None
        self.retain = retain
        self._retention: Retention | None = None
        self.stream = EventStream(lambda: self.store, token=stream_token, keepalive=stream_keepalive)
        self.inspector: Inspector | None = None
        """The `/inspect` pages when on: `inspector.login_path` is the link that logs a browser in."""
        self.metrics: Metrics | None = None
        if metrics:
            from .metrics import Metrics  # imported only when on: nothing of prometheus-client loads otherwise

            self.metrics = Metrics(store=lambda: self.store, stream=self.stream, token=metrics_token)
        self.router = Starlette(
            routes=[
                Route("/", self._index, methods=["GET"]),
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/stream", self.stream.endpoint, methods=["GET"]),
                *([Route("/metrics", self.metrics.endpoint, methods=["GET"])] if self.metrics else []),
                Route(path, self._method_not_allowed, methods=["GET", "PUT", "PATCH", "DELETE"]),
                *self._inspector_routes(inspect, inspect_token),
            ],
            exception_handlers={HTTPException: _http_error},
            lifespan=self.lifespan,
        )

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("The receiver has not started: enter app.lifespan(app) or send it a request first.")
        return self._store

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Open the store and run the dispatcher (crash recovery included) for the app's lifetime."""
        await self._start()
        try:
            yield
        finally:
            await self._stop()

    async def _start(self) -> None:
        if self._store is not None:
            return
        store = self._db if not isinstance(self._db, str | os.PathLike) else open_store(self._db)
        # Set before the first await, so concurrent first requests share this store.
        self._store = store
        on_try = None
        if self.metrics is not None:
            self.metrics.handlers(self.hooks.names)
            store.observe_batches(self.metrics.committed)
            on_try = self.metrics.handler_try
        self._dispatcher = Dispatcher(self.hooks, store, self.settings, on_try=on_try)
        self.stream.open()
        if self.stream.enabled:
            store.watch(self.stream.notify)  # events other instances store reach this one's streams at once
        await self._dispatcher.start(background=not self.inline)
        if self.retain is not None:
            self._retention = Retention(store, keep=self.retain)
            self._retention.start()

    async def _stop(self) -> None:
        if self._store is None:
            return
        self.stream.close()  # before the store closes under the open streams
        if self._retention is not None:
            await self._retention.stop()
            self._retention = None
        assert self._dispatcher is not None
        await self._dispatcher.stop()
        if self.metrics is not None:
            self._store.observe_batches(None)
        if isinstance(self._db, str | os.PathLike):
            await self._store.close()
        self._store = self._dispatcher = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._store is None:
                log.warning(
                    "montra-webhooks started on its first request: its lifespan did not run, so crash recovery "
                    "waited for traffic. Pass app.lifespan to the parent app (FastAPI(lifespan=montra.lifespan))."
                )
                await self._start()
            if scope["method"] == "POST" and _route_path(scope) == self.path:
                await self._receive_webhook(scope, receive, send)
                return
        await self.router(scope, receive, send)

    # -- POST /webhooks --------------------------------------------------------------------

    async def _receive_webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        raw_headers = scope["headers"]
        try:
            # Sized before anything is built from them: under a server without our protocol (mounted elsewhere)
            # nothing else bounds them.
            if sum(map(len, itertools.chain.from_iterable(raw_headers))) > MAX_HEADER_BYTES:
                message_text = (
                    f"The request headers are larger than {MAX_HEADER_BYTES} bytes; send fewer or shorter ones."
                )
                status, payload = 431, {"error": "headers_too_large", "message": message_text}
            else:
                headers, conflict = _collect_headers(raw_headers)
                status, payload = await self._handle(scope, receive, headers, conflict)
        except Exception:  # a bug must cost one request a 500, never the server
            log.exception("unexpected error receiving a webhook")
            status, payload = 500, {"error": "internal_error", "message": "The receiver failed unexpectedly."}
        body = _answer_body(payload)
        await send({"type": "http.response.start", "status": status, "headers": _json_headers(body)})
        await send({"type": "http.response.body", "body": body})
        if self.metrics is not None:
            self.metrics.answered(status, payload.get("error") or payload["status"], started)

    async def _handle(
        self, scope: Scope, receive: Receive, headers: dict[str, str], conflict: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        declared = headers.get("content-length")
        # isascii: str.isdigit() also accepts "²", which int() refuses.
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > self.max_body:
            return self._reject(scope, headers, b"", 413, "body_too_large", self._too_large)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return 400, {"error": "disconnected", "message": "The client went away before sending the body."}
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return self._reject(scope, headers, b"".join(chunks), 413, "body_too_large", self._too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)

        content_type = headers.get("content-type")
        if content_type is not None and not _is_json(content_type):
            message_text = f"Content-Type {content_type!r} is not JSON: send application/json."
            return self._reject(scope, headers, body, 415, "unsupported_media_type", message_text)
        if conflict is not None:
            return self._reject(scope, headers, body, 400, *conflict)
        try:
            self.verifier.verify(body, headers)
        except VerificationError as e:
            return self._reject(scope, headers, body, _STATUS_OF_REASON[e.code], e.code, e.message)
        try:
            envelope = parse_envelope(body)
        except EnvelopeError as e:
            return self._reject(scope, headers, body, 400, e.code, e.message)

        event_id = headers.get("webhook-id") or headers["svix-id"]
        event_type: str = envelope["type"]
        occurred_at = envelope.get("timestamp")
        registrations = self.hooks.handlers_for(event_type)
        refs = resource_refs(event_type, envelope.get("data"))
        ordering = run_ordering(registrations, refs)
        incoming = Incoming(
            id=event_id,
            type=event_type,
            # Kept as sent, unless it holds a NUL, which PostgreSQL text cannot (the body keeps every byte).
            occurred_at=occurred_at if isinstance(occurred_at, str) and "\x00" not in occurred_at else None,
            received_at=time.time(),
            headers=headers,
            body=body,
            handlers=[r.name for r in registrations],
            refs=refs,
            ordering=ordering,
            order_at=order_time(occurred_at) if ordering else None,  # only ordered runs keep a time
        )
        store, dispatcher = self.store, self._dispatcher
        assert dispatcher is not None
        try:
            result = await store.ingest(incoming)
        except StoreUnavailable as e:
            return 503, {"error": "store_unavailable", "message": f"{e} Nothing was stored: send it again later."}
        if result.status == "stored":
            self.stream.notify()
        if incoming.handlers and (result.status == "stored" or result.requeued or self.inline):
            if self.inline:
                failures = await dispatcher.run_inline(event_id)
                if failures:
                    names = ", ".join(name for name, _ in failures)
                    message_text = f"Stored, but handler(s) failed: {names}. Send it again to retry them."
                    return 500, {"error": "handler_failed", "message": message_text, "id": event_id}
            else:
                dispatcher.wake()
        return 200, {"id": event_id, "status": result.status}

    @property
    def _too_large(self) -> str:
        return f"The body is larger than the limit of {self.max_body} bytes."

    def _reject(
        self, scope: Scope, headers: dict[str, str], body: bytes, status: int, code: str, message: str
    ) -> tuple[int, dict[str, Any]]:
        client = scope.get("client")
        with contextlib.suppress(StoreUnavailable):  # diagnosis is best effort; the answer is what matters
            self.store.reject(
                reason=code,
                remote=client[0] if client else None,
                headers=headers,
                body=body,
                message=message,
                # What `montra-hooks rejections` needs to explain it in words; counts only, never a secret.
                detail={"secrets": self.verifier.key_count, "tolerance": self.verifier.tolerance},
            )
        return status, {"error": code, "message": message}

    async def rerun(self, event_id: str, *, handler: str | None = None) -> int:
        """Re-queue an event's failed and dead runs (one handler's, or all) and run them now; return how many."""
        return await self.rerun_events([event_id], handler=handler)

    async def rerun_events(self, event_ids: Sequence[str], *, handler: str | None = None) -> int:
        """`rerun` for several events in one write (the inspector's bulk re-run); return how many runs."""
        count = await self.store.requeue(ids=event_ids, handler=handler) if event_ids else 0
        if count and self._dispatcher is not None:
            if self.inline:
                for event_id in event_ids:
                    await self._dispatcher.run_inline(event_id)
            else:
                self._dispatcher.wake()
        return count

    async def replay(self, body: bytes, *, original: str) -> tuple[int, dict[str, Any]]:
        """Send `body` to this receiver as a replay of event `original`; return its (status, answer).

        In-process, through the same checks and store as `POST /webhooks` (no HTTP to itself): signed with
        this receiver's first secret that can sign, under `replay_id(original)` with `montra-replay-of`.
        The answer is the webhook endpoint's JSON: `{"id": ..., "status": "stored"}`, or its error.
        """
        if self._signing_secret is None:
            message = (
                "This receiver has only whpk_ public keys: it can verify but not sign, so it cannot replay to itself. "
                "Add its whsk_ signing key to its secrets, or replay with `montra-hooks replay --secret whsk_...`."
            )
            return 409, {"error": "cannot_sign", "message": message}
        new_id = replay_id(original)
        signed = sign(body, secret=self._signing_secret, msg_id=new_id)
        headers = {"content-type": "application/json", **signed, REPLAY_OF_HEADER: original}
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": self.path,
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()],
            "client": None,  # no remote: a rejection of it is stored without one
        }
        answer: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            answer.append(message)

        await self._receive_webhook(scope, receive, send)
        status: int = answer[0]["status"]
        payload: dict[str, Any] = json.loads(answer[1]["body"])
        return status, payload

    # -- other routes ----------------------------------------------------------------------

    def _inspector_routes(self, inspect: bool, token: str | None) -> list[BaseRoute]:
        if not inspect:
            return []
        # Imported only when on: they bring Jinja2.
        from .inspector.access import INSPECT_TOKEN_FILE, load_or_create_inspect_token
        from .inspector.pages import Inspector

        if token is not None:
            self.inspector = Inspector(self, token=token, explicit=True)
        else:
            # A loopback Host proves nothing behind a proxy: the inspector always needs a token, so make one.
            token = load_or_create_inspect_token()
            self.inspector = Inspector(self, token=token, explicit=False, token_file=INSPECT_TOKEN_FILE)
            log.info("inspector: log in at /inspect/login with the token in %s", INSPECT_TOKEN_FILE)
        return self.inspector.routes()

    async def _index(self, request: Request) -> Response:
        """What a person who opens the receiver's address in a browser (or curls it) needs to know."""
        root = request.scope.get("root_path", "")
        routes = {
            "webhooks": f"POST {root}{self.path} (Standard Webhooks signatures)",
            "health": f"GET {root}/healthz",
            "stream": f"GET {root}/stream (bearer token)" if self.stream.enabled else None,
            "inspector": f"GET {root}/inspect (token)" if self._inspect else None,
        }
        return JSONResponse({"service": "montra-webhooks", **{k: v for k, v in routes.items() if v is not None}})

    async def _healthz(self, request: Request) -> Response:
        store = self.store
        # A real write: it fails on a read-only disk, and on a database file deleted or replaced while serving.
        if not await store.check_writable():
            message = "The event store cannot write (its log says why: a full disk, or its file deleted or replaced)."
            return JSONResponse({"error": "store_unavailable", "message": message}, status_code=503)
        free = store.free_space()
        if free is not None and free < self.min_free_bytes:
            message = (
                f"Only {free / _MIB:.1f} MiB are free on the event store's disk, below the "
                f"{self.min_free_bytes / _MIB:.1f} MiB kept for incoming webhooks: free some space."
            )
            return JSONResponse({"error": "low_disk_space", "message": message}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def _method_not_allowed(self, request: Request) -> Response:
        return JSONResponse(
            {"error": "method_not_allowed", "message": f"Send webhooks with POST {self.path}."},
            status_code=405,
            headers={"allow": "POST"},
        )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = exc.detail
    if exc.status_code == 404:
        root = request.scope.get("root_path", "")
        message = f"Nothing at {request.url.path}: GET {root or '/'} lists this receiver's routes."
    return JSONResponse({"error": code, "message": message}, status_code=exc.status_code, headers=exc.headers)


def _collect_headers(raw: Sequence[tuple[bytes, bytes]]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The request's headers as a dict, in time linear in their size, and the (code, message) of a conflict.

    Repeated lines are joined once at the end (joining as they come is quadratic): `webhook-signature`
    with a space, since each of its tokens stands alone; others with ", ", as HTTP says. The message id
    and timestamp must not be ambiguous: repeated with different values is a conflict.
    """
    headers: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for raw_name, raw_value in raw:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name not in headers:
            headers[name] = value
        elif name in repeated:
            repeated[name].append(value)
        else:
            repeated[name] = [headers[name], value]
    conflict: tuple[str, str] | None = None
    for name, values in repeated.items():
        single = _SINGLE_VALUED.get(name)
        if single is not None:
            if conflict is None and any(value != values[0] for value in values):
                conflict = (single, f"{name} is repeated with different values; send it once.")
        else:
            headers[name] = (" " if name in _SIGNATURE_NAMES else ", ").join(values)
    return headers, conflict


def _signing_secret(secrets: Sequence[str]) -> str | None:
    """The first configured secret that can sign (a whpk_ public key only verifies)."""
    return next((secret for secret in secrets if not secret.startswith("whpk_")), None)


def _answer_body(payload: dict[str, Any]) -> bytes:
    """An answer as JSON: an acknowledgement ({"id", "status"}, most answers) without the general encoder's setup.

    Byte for byte what `json.dumps` writes for the acknowledgements `_handle` builds (a test checks), in a tenth
    of its time.
    """
    if len(payload) == 2 and "id" in payload and "status" in payload:
        return b'{"id": %s, "status": %s}' % (_quote(payload["id"]).encode(), _quote(payload["status"]).encode())
    return json.dumps(payload).encode()


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _route_path(scope: Scope) -> str:
    # As Starlette does: a mounted app sees the full path, with the mount's prefix in root_path.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
