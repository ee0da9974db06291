"""How the inspector shows a stored body: JSON pretty-printed and highlighted, anything else as text.

Bodies come from the internet, so every piece of text is escaped, and a body that would cost too
much to pretty-print (too large, or nested so deep that `json.dumps(indent=...)`, which recurses
in Python, would end in RecursionError) is shown as the text it is.
"""

from __future__ import annotations

import json
import re

from markupsafe import Markup, escape

__all__ = ["MAX_PRETTY_BYTES", "MAX_PRETTY_DEPTH", "body_view", "highlight_json"]

MAX_PRETTY_BYTES = 512 * 1024
"""Bodies larger than this are shown as text: highlighting costs a span per token."""
MAX_PRETTY_DEPTH = 100
# Strings are skipped whole, so brackets inside them do not count.
_NESTING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_JSON_TOKEN = re.compile(
    r'(?P<key>"(?:[^"\\]|\\.)*")(?=: )|(?P<str>"(?:[^"\\]|\\.)*")'
    r"|(?P<num>-?(?:\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|Infinity)|NaN)|(?P<lit>true|false|null)"
)


def highlight_json(text: str) -> Markup:
    """Pretty JSON text (as `json.dumps(indent=2)` writes it) as escaped HTML with a span per token."""
    out: list[str] = []
    last = 0
    for match in _JSON_TOKEN.finditer(text):
        out.append(str(escape(text[last : match.start()])))
        out.append(f'<span class="j-{match.lastgroup}">{escape(match.group())}</span>')
        last = match.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))  # noqa: S704 - every piece of text above went through escape()


def body_view(body: bytes) -> tuple[Markup, str]:
    """(escaped HTML, what the body is) for the event page."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return escape(repr(body)), "bytes (not UTF-8)"
    if len(body) > MAX_PRETTY_BYTES:
        return escape(text), f"text (JSON or not: larger than {MAX_PRETTY_BYTES // 1024} KiB is not pretty-printed)"
    if _nesting(text) > MAX_PRETTY_DEPTH:
        # json.dumps(indent=...) recurses in Python: a body nested ~1,000 deep would end in RecursionError.
        return escape(text), f"text (JSON or not: nested deeper than {MAX_PRETTY_DEPTH} levels is not pretty-printed)"
    try:
        value = json.loads(text)
    except ValueError:
        return escape(text), "text (not JSON)"
    return highlight_json(json.dumps(value, indent=2, ensure_ascii=False)), "JSON"


def _nesting(text: str) -> int:
    """How deep JSON text nests (an upper bound for text that is not JSON), in one pass without recursion."""
    depth = deepest = 0
    for match in _NESTING_TOKEN.finditer(text):
        found = match.group()
        if found in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif found in "]}":
            depth -= 1
    return deepest
