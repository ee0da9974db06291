"""A local webhook target for the tunnel tests, run as its own process: `python tunnel_target.py PORT SECRET DIR`.

It verifies each request with `receiver.Verifier` (401 when the signature is wrong), answers 500
while `DIR/fail` exists (a target that is down for a while), 400 for ids listed in `DIR/reject` (a
bug in local code), and otherwise appends the event to `DIR/received.jsonl` and answers 200.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from receiver import VerificationError, Verifier


def build(secret: str, folder: Path) -> Starlette:
    verifier = Verifier([secret])

    async def webhook(request: Request) -> Response:
        body = await request.body()
        try:
            verifier.verify(body, dict(request.headers))
        except VerificationError as e:
            return JSONResponse({"error": e.code, "message": e.message}, status_code=401)
        event_id = request.headers["webhook-id"]
        if (folder / "fail").exists():
            return JSONResponse({"error": "down", "message": "failing on purpose"}, status_code=500)
        reject = folder / "reject"
        if reject.exists() and event_id in reject.read_text().split():
            return JSONResponse({"error": "rejected", "message": "a bug in local code"}, status_code=400)
        with (folder / "received.jsonl").open("a") as f:
            f.write(json.dumps({"id": event_id, "body": body.decode("latin-1")}) + "\n")
        return JSONResponse({"id": event_id, "status": "stored"})

    async def index(request: Request) -> Response:
        return PlainTextResponse("target")

    return Starlette(routes=[Route("/webhooks", webhook, methods=["POST"]), Route("/", index)])


if __name__ == "__main__":
    port, secret, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    uvicorn.run(build(secret, folder), host="127.0.0.1", port=port, log_level="warning")
