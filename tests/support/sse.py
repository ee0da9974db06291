"""Server-Sent Events, as the tests read them."""

from __future__ import annotations

import json
from typing import Any


def sse_frame(raw: bytes) -> dict[str, Any]:
    """One Server-Sent Events frame (no blank line) as a dict: `data` parsed as JSON, a comment as `comment`."""
    frame: dict[str, Any] = {}
    for line in raw.decode("ascii").split("\n"):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "":
            frame["comment"] = value
        elif field == "data":
            frame["data"] = json.loads(value)
        else:
            frame[field] = value
    return frame
