"""The contexts' training counters: examples learned, scored before learning, and refused.

Like every registry query, `add_training_counts` works in the caller's transaction and never
commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from sqlalchemy import Table, bindparam, func, update
from sqlalchemy.orm import Session

from service.registry.models import ContextRow

TrainingCounts = tuple[int, int] | tuple[int, int, int]
"""Per context: (examples learned, of those right before learning[, examples refused])."""


def add_training_counts(*, session: Session, counts: Mapping[int, TrainingCounts]) -> None:
    """Adds trained, prequentially scored and refused examples to the contexts' counters.

    The increments happen in the database (`SET n = n + :delta`), so concurrent writers never
    lose each other's counts.

    Args:
        session: The session to work in; flushed, not committed.
        counts: Context index -> (examples, correct[, refused]). The examples are added to
            `examples_seen` and `prequential_seen`, the correct ones to `prequential_correct`,
            the refused ones (rows of steps the trainer refused) to `refused`. Unknown indices
            are ignored.

    Raises:
        ValueError: A count is negative or correct exceeds examples.
    """
    full = {index: (*values, 0)[:3] for index, values in counts.items()}
    for index, (examples, correct, refused) in full.items():
        if examples < 0 or correct < 0 or correct > examples or refused < 0:
            raise ValueError(
                f"counts for context {index} must satisfy 0 <= correct <= examples and "
                f"refused >= 0, got examples={examples}, correct={correct}, refused={refused}"
            )
    # Sorted so that concurrent writers lock rows in the same order and cannot deadlock.
    parameters = [
        {"b_index": index, "b_examples": examples, "b_correct": correct, "b_refused": refused}
        for index, (examples, correct, refused) in sorted(full.items())
        if examples or correct or refused
    ]
    if not parameters:
        return
    table = cast(Table, ContextRow.__table__)
    statement = (
        update(table)
        .where(table.c.index == bindparam("b_index"))
        .values(
            examples_seen=table.c.examples_seen + bindparam("b_examples"),
            prequential_seen=table.c.prequential_seen + bindparam("b_examples"),
            prequential_correct=table.c.prequential_correct + bindparam("b_correct"),
            # Stays NULL (no heap bytes) while nothing was refused.
            refused=func.nullif(func.coalesce(table.c.refused, 0) + bindparam("b_refused"), 0),
        )
    )
    session.execute(statement, parameters)
    _expire_counters(session, {p["b_index"] for p in parameters})


def _expire_counters(session: Session, indices: set[int]) -> None:
    """The update bypassed the ORM, so loaded rows would show stale counters until expired."""
    for obj in list(session.identity_map.values()):
        if isinstance(obj, ContextRow) and obj.index in indices:
            session.expire(
                obj, ["examples_seen", "prequential_seen", "prequential_correct", "refused"]
            )
