"""How a replayed event is named: a fresh webhook-id and a header that names the original.

A receiver runs an event again only under a new id, so a replay goes out as
`{original}_r{8 random hex}` with `montra-replay-of: {original}`. The CLI's `replay` and the
inspector's replay actions both name events here.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from .verify import MAX_ID_LENGTH

__all__ = ["REPLAY_OF_HEADER", "original_id", "replay_id"]

REPLAY_OF_HEADER = "montra-replay-of"
"""Carries the original webhook-id of a replayed event that was given a new id."""

_SUFFIX = len("_r") + 8


def original_id(event_id: str, headers: Mapping[str, str]) -> str:
    """The id an event was first sent under: a stored replay names it in `montra-replay-of`."""
    return headers.get(REPLAY_OF_HEADER) or event_id


def replay_id(original: str) -> str:
    """A new webhook-id for a replay: `{original}_r{8 random hex}`, so a receiver runs it again.

    Give it the first id (`original_id`): a replay of a replay keeps one suffix.
    """
    # Ids are at most MAX_ID_LENGTH characters; a longer original is cut, and montra-replay-of keeps it whole.
    return f"{original[: MAX_ID_LENGTH - _SUFFIX]}_r{secrets.token_hex(4)}"
