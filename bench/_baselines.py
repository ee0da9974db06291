"""The two baselines `bench/ingest.py` measures the receiver against, each served by uvicorn as `serve` does.

- `bare`: a Starlette route that reads the body and answers a small JSON: the ceiling of a Python
  ASGI endpoint on this machine, with no verification and no storage.
- `naive`: the receiver as a plain Starlette app would be written: `Request`, the same
  `Verifier`, the same JSON checks, the same schema and INSERT (WAL, `synchronous=FULL`), but one
  transaction and one fsync per request. Two ways a plain app does that: `inline` (the default:
  the INSERT and COMMIT run right in the `async def` endpoint, blocking the loop through the
  fsync) and `thread` (in Starlette's thread pool, on one connection behind a lock, as SQLite
  takes one writer at a time anyway). On 2 cores `inline` was the faster of the two (1.3x to 1.4x
  on a quiet machine, about even while other processes fsync), so it is the default baseline: the
  harder one to beat.

Run one: `python bench/_baselines.py bare PORT` or `python bench/_baselines.py naive PORT DB SECRET [inline|thread]`.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver import VerificationError, Verifier
from receiver.stores.protocol import iso, redact
from receiver.stores.sqlite.store import connect

_INSERT = (
    "INSERT INTO events (id, type, occurred_at, received_at, headers, body) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)


def bare_app() -> Starlette:
    """POST /webhooks reads the body and answers `{"status": "ok"}`: nothing else."""

    async def webhook(request: Request) -> Response:
        await request.body()
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/webhooks", webhook, methods=["POST"])])


def naive_app(db: str, secret: str, mode: str = "inline") -> Starlette:
    """POST /webhooks verifies, then INSERTs and COMMITs (one fsync) before answering 200."""
    if mode not in ("inline", "thread"):
        raise ValueError(f"mode must be inline or thread, not {mode!r}")
    verifier = Verifier([secret])
    conn = connect(db)  # WAL, synchronous=FULL, the receiver's schema; autocommit mode
    lock = threading.Lock()

    def store(row: tuple[str, str, str | None, str, str, bytes]) -> bool:
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = conn.execute(_INSERT, row).rowcount == 1
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return stored

    async def webhook(request: Request) -> Response:
        body = await request.body()
        try:
            verifier.verify(body, request.headers)
        except VerificationError as e:
            return JSONResponse({"error": e.code, "message": e.message}, status_code=401)
        try:
            envelope = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "invalid_json", "message": "The body is not JSON."}, status_code=400)
        if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
            return JSONResponse({"error": "invalid_event", "message": 'No string "type".'}, status_code=400)
        event_id = request.headers["webhook-id"]
        occurred_at = envelope.get("timestamp")
        row = (
            event_id,
            envelope["type"],
            occurred_at if isinstance(occurred_at, str) else None,
            iso(time.time()),
            json.dumps(redact(request.headers)),
            body,
        )
        stored = store(row) if mode == "inline" else await run_in_threadpool(store, row)
        return JSONResponse({"id": event_id, "status": "stored" if stored else "duplicate"})

    return Starlette(routes=[Route("/webhooks", webhook, methods=["POST"])])


def _serve(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    app = bare_app() if kind == "bare" else naive_app(argv[2], argv[3], *argv[4:5])
    # The settings `montra-hooks serve` passes: same loop and HTTP implementation, access log off.
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="info", lifespan="on")


if __name__ == "__main__":
    _serve(sys.argv[1:])
