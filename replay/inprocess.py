"""Running events through the merchant's handlers in this process (`replay --app`, `watch --app`).

No HTTP, no store, no retries: each event goes to `hooks.dispatch`, which runs every matching
handler once, now, and raises their errors together. The result says which handlers ran and why
any failed, with their tracebacks.

>>> target = AppTarget(import_hooks("examples.handlers:hooks"))
>>> result = await target.send(Outgoing(id="evt_1", type="refund.created", body=body))
>>> result.answer, result.handlers
('handled', ('examples.handlers.refund',))
"""

from __future__ import annotations

import time
import traceback

from receiver.errors import EnvelopeError
from receiver.event import Event, parse_envelope
from receiver.hooks import Hooks

from .send import REPLAY_OF_HEADER, Outgoing, Result, replay_id

__all__ = ["AppTarget"]


class AppTarget:
    """Dispatches events to `hooks` in-process. `hooks` may be swapped (watch reloads it)."""

    def __init__(self, hooks: Hooks, *, keep_id: bool = False) -> None:
        self.hooks = hooks
        self.keep_id = keep_id

    def __repr__(self) -> str:
        return f"AppTarget({', '.join(self.hooks.names) or 'no handlers'}, keep_id={self.keep_id})"

    async def send(self, event: Outgoing) -> Result:
        """Run the handlers matching `event` once; `answer` is `handled`, `unhandled` or `failed`."""
        sent_as = event.id if self.keep_id else replay_id(event.original_id)
        headers = {**event.headers, "webhook-id": sent_as}
        if sent_as != event.id:
            headers[REPLAY_OF_HEADER] = event.original_id
        started = time.perf_counter()
        # Refused as the receiver refuses it: only a JSON object with a string "type" is an event.
        try:
            envelope = parse_envelope(event.body)
        except EnvelopeError as e:
            return Result(event, sent_as, False, None, e.code, 0.0, error=e.message)
        parsed = Event.from_envelope(sent_as, envelope, event.body, headers)
        handlers = tuple(r.name for r in self.hooks.handlers_for(parsed.type))
        try:
            await self.hooks.dispatch(parsed)
        except ExceptionGroup as group:
            ms = (time.perf_counter() - started) * 1000
            errors = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
            detail = "".join(line for e in group.exceptions for line in traceback.format_exception(e))
            error = f"{group.message} ({errors})"
            return Result(event, sent_as, False, None, "failed", ms, error=error, handlers=handlers, detail=detail)
        ms = (time.perf_counter() - started) * 1000
        return Result(event, sent_as, True, None, "handled" if handlers else "unhandled", ms, handlers=handlers)
