"""Log output: readable text lines (the default) or one JSON object per line, uvicorn's own lines included.

JSON lines carry `time` (ISO 8601 UTC), `level`, `message` and `logger`, plus `event_id`, `type`,
`handler`, `attempt` and `outcome` when the line is about a handler run (the dispatcher passes them
with `extra=`), and `error` with the traceback when there is one:

    {"time": "2026-11-25T17:00:00.123Z", "level": "warning", "message": "app.grant_pro failed on msg_1 ...",
     "logger": "montra.dispatch", "event_id": "msg_1", "type": "subscription.upgraded",
     "handler": "app.grant_pro", "attempt": 1, "outcome": "failed"}
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import ConfigurationError

__all__ = ["FIELDS", "LOG_FORMATS", "JsonFormatter", "LogFormat", "log_config"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

FIELDS = ("event_id", "type", "handler", "attempt", "outcome")
"""Keys copied from a record's `extra=` into its JSON line when present."""

_TEXT_FORMAT = "%(levelname)-9s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (newlines in a traceback are escaped, not written)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "time": stamp.removesuffix("+00:00") + "Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "logger": record.name,
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["error"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra someone passed that JSON cannot hold is written as text, not lost with the line.
        return json.dumps(line, ensure_ascii=False, default=str)


def log_config(log_format: LogFormat, *, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the receiver's loggers and uvicorn's, to pass as uvicorn's `log_config`.

    Every logger writes to stderr through one handler: the receiver's (`montra.*`), the merchant's handlers'
    (the root logger) and uvicorn's (`uvicorn.error`, `uvicorn.access`), so in JSON every line is an object.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(f"The log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}.")
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": _TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": log_format, "stream": "ext://sys.stderr"}
    own = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {log_format: formatter},
        "handlers": {"default": handler},
        "loggers": {"uvicorn": own, "uvicorn.error": {"level": level}, "uvicorn.access": own},
        "root": {"handlers": ["default"], "level": level},
    }
