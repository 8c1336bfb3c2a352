"""What a registration may ask for: a valid key, and a seed or a power that fits the kind."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Final

from psp_core.kinds import CONTEXT_KINDS
from service.registry.errors import InvalidContextParameters
from service.registry.models import KEY_MAX_LENGTH, KEY_PATTERN

_VALID_KEY: Final = re.compile(KEY_PATTERN)

SEED_LIMIT: Final = 2**63
"""Seeds lie in [0, SEED_LIMIT), so they fit a signed 64-bit column."""

MAX_BULK_CONTEXTS: Final = 10_000
"""The most contexts one `create_contexts` call registers."""

ContextItem = tuple[str, int | None, float | None]
"""A context to register: (key, seed or None, power or None)."""


def validate_items(kind: str, items: Sequence[ContextItem]) -> list[ContextItem]:
    """Checks a batch against the model's kind; returns it with every power as a float.

    Raises:
        ValueError: The kind is not a context kind (a programming error, not a request's).
        InvalidContextParameters: The batch is too large, or an item does not fit the kind.
    """
    if kind not in CONTEXT_KINDS:
        raise ValueError(f"unknown context kind {kind!r}; expected one of {sorted(CONTEXT_KINDS)}")
    if len(items) > MAX_BULK_CONTEXTS:
        raise InvalidContextParameters(
            f"{len(items)} contexts in one batch is too many; send at most {MAX_BULK_CONTEXTS} "
            "per request"
        )
    return [_validate_item(kind, item) for item in items]


def _validate_item(kind: str, item: ContextItem) -> ContextItem:
    key, seed, power = item
    if not isinstance(key, str) or not _VALID_KEY.match(key):
        raise InvalidContextParameters(
            f"key {key!r} is not valid; send 1 to {KEY_MAX_LENGTH} characters from "
            "A-Z, a-z, 0-9, '.', '_', ':' and '-'"
        )
    if kind == "onepower":
        return key, None, _validate_power(seed, power)
    return key, _validate_seed(kind, seed, power), None


def _validate_power(seed: int | None, power: float | None) -> float | None:
    """The power of a one-power context as a float, or None for the server to choose."""
    if seed is not None:
        raise InvalidContextParameters(
            "one-power contexts are defined by a power (a real exponent), not a seed; "
            "send a number as power, or omit both to let the server choose"
        )
    if power is None:
        return None
    if isinstance(power, bool) or not isinstance(power, int | float):
        raise InvalidContextParameters("power must be a finite number; send a number or omit it")
    if not math.isfinite(power):
        raise InvalidContextParameters(
            "power must be a finite number, not NaN or infinity; send a finite number or omit it"
        )
    return float(power)


def _validate_seed(kind: str, seed: int | None, power: float | None) -> int | None:
    """The seed of a context of the other kinds, or None for the server to draw."""
    if power is not None:
        raise InvalidContextParameters(
            f"{kind} contexts are defined by an integer seed, not a power; send an integer "
            f"seed in [0, 2**63) instead, or omit both to let the server choose"
        )
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT
    ):
        raise InvalidContextParameters(
            f"seed {seed!r} is out of range; send an integer in [0, 2**63), or omit it to let "
            "the server choose"
        )
    return seed
