"""Prediction ids: `p<context index>.<milliseconds>.<random>`, in hex.

The context and the time are in the id itself, so that an id from another context or one past
its time to live is recognised even after its row is gone; the random part makes ids
unguessable.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_ID = re.compile(r"^p([0-9a-f]{1,16})\.([0-9a-f]{1,16})\.([0-9a-f]{16})$")


@dataclass(frozen=True)
class PredictionId:
    """A parsed prediction id."""

    text: str
    context_index: int
    created_ms: int


def new_ids(context_index: int, created_ms: int, count: int) -> list[str]:
    return [f"p{context_index:x}.{created_ms:x}.{secrets.token_hex(8)}" for _ in range(count)]


def parse_id(text: str) -> PredictionId | None:
    """The id's parts, or None when `text` is not a prediction id."""
    match = _ID.match(text)
    if match is None:
        return None
    return PredictionId(text, int(match[1], 16), int(match[2], 16))
