"""Seeds of the seeded kinds: a requested seed is checked, a missing one is drawn.

A seed names one model inside the shared weights, so it is unique for the life of the registry,
live and retired rows alike: a retired context's weights stay superposed, and they can never be
recalled because its seed is never issued again. Server seeds come from the operating system's
cryptographic source, so they cannot be guessed.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.database import in_chunks
from service.registry.errors import ContextParameterTaken, InvalidContextParameters
from service.registry.models import ContextRow


def check_requested_seeds(session: Session, requested: Mapping[str, int]) -> None:
    """Refuses requested seeds (key -> seed) that two keys share or another context holds.

    A live row of the same key holding the seed was registered meanwhile by a concurrent
    identical request; that is no refusal, since the insert then loses the race and the retry
    returns that row.

    Raises:
        InvalidContextParameters: Two keys of the batch ask for one seed.
        ContextParameterTaken: A requested seed belongs to another context, live or deleted.
    """
    seeds = list(requested.values())
    if len(set(seeds)) < len(seeds):
        raise InvalidContextParameters(
            "two keys of the batch ask for the same seed, which would make them one model; "
            "send a different seed for each key, or omit the seeds to let the server draw them"
        )
    holders = _seed_holders(session, seeds)
    used = sorted(
        seed for key, seed in requested.items() if seed in holders and holders[seed] != key
    )
    if used:
        raise ContextParameterTaken(
            f"seed {used[0]} belongs to another context (live or deleted), and a seed names one "
            "model for good; omit the seed to let the server draw an unused one, or send another"
        )


def draw_unused_seeds(session: Session, count: int, reserved: set[int]) -> list[int]:
    """`count` random 63-bit seeds that no row holds, none in `reserved`, all distinct.

    Draws are repeated, for the slots whose draw was in use, until every slot has one.
    """
    drawn: list[int | None] = [None] * count
    missing = list(range(count))
    taken = set(reserved)
    while missing:
        draws = [secrets.randbits(63) for _ in missing]
        in_use = _seed_holders(session, draws)
        for slot, seed in zip(missing, draws, strict=True):
            if seed not in in_use and seed not in taken:
                drawn[slot] = seed
                taken.add(seed)
        missing = [slot for slot in missing if drawn[slot] is None]
    return [seed for seed in drawn if seed is not None]


def _seed_holders(session: Session, seeds: Sequence[int]) -> dict[int, str | None]:
    """Which of `seeds` a row, live or retired, already has: seed -> the key of the live row
    that holds it, or None when a retired row does."""
    held: dict[int, str | None] = {}
    for chunk in in_chunks(seeds):
        rows = session.execute(
            select(ContextRow.seed, ContextRow.key, ContextRow.retired_at).where(
                ContextRow.seed.in_(chunk)
            )
        )
        held.update(
            (seed, key if retired_at is None else None)
            for seed, key, retired_at in rows
            if seed is not None
        )
    return held
