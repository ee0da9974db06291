"""receiver.logs: the JSON line format on its own (the serve tests check it end to end, uvicorn's lines included)."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest

from receiver.errors import ConfigurationError
from receiver.logs import JsonFormatter, log_config


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("montra.dispatch", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    made.created = 1795631216.503667  # 2026-11-25T18:26:56.503667Z
    return made


def test_a_record_is_one_json_line_with_the_run_fields() -> None:
    line = JsonFormatter().format(
        record("%s failed on %s", "app.grant_pro", "msg_1", event_id="msg_1", handler="app.grant_pro", attempt=2)
    )
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-11-25T18:26:56.503Z",  # milliseconds, UTC, Z
        "level": "warning",
        "message": "app.grant_pro failed on msg_1",
        "logger": "montra.dispatch",
        "event_id": "msg_1",
        "handler": "app.grant_pro",
        "attempt": 2,
    }


def test_a_traceback_stays_on_its_line_and_odd_extras_are_text() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        made = record("on_dead callback failed", outcome={1, 2})
        made.exc_info = sys.exc_info()
    line = JsonFormatter().format(made)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["error"].startswith("Traceback (most recent call last):")
    assert parsed["error"].endswith("RuntimeError: boom\nsecond line")
    assert parsed["outcome"] == "{1, 2}"  # a set is not JSON: written as text, not a crash that loses the line


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
    for name in ("uvicorn", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


def test_log_config_sends_the_receivers_and_uvicorns_loggers_through_one_json_handler(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.config.dictConfig(log_config("json"))
    for name in ("montra.dispatch", "uvicorn.error", "uvicorn.access", "myapp.handlers"):
        logging.getLogger(name).info("hello from %s", name)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        (name, f"hello from {name}")
        for name in ("montra.dispatch", "uvicorn.error", "uvicorn.access", "myapp.handlers")
    ]


def test_an_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="The log format must be one of text, json, got 'yaml'"):
        log_config("yaml")  # type: ignore[arg-type]
