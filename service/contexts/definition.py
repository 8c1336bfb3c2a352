"""What defines a registered context, as the registry stores it and the model host builds it.

It lives below both, so reading the registry never loads the model's machinery (torch).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContextDefinition:
    """A context's bank row: its registry index, the one number that defines it (a seed, or a
    real exponent for one-power contexts) and the shard (the model) that holds it."""

    index: int
    seed: int | None
    power: float | None
    shard: int = 0
