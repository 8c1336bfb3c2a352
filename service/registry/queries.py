"""Reading, listing and retiring live contexts.

Like every registry query, these functions take keyword arguments only and never commit: the
caller commits (or rolls back) the transaction.

Retiring a context keeps its row: its index is never handed out again, and its key may later be
registered anew under a new index (see `service.registry.registration`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, select, update
from sqlalchemy.orm import Session

from service.registry.models import ContextRow, utcnow


def get_context(*, session: Session, key: str) -> ContextRow | None:
    """The live context with this key, or None."""
    return session.scalars(
        select(ContextRow).where(ContextRow.key == key, ContextRow.retired_at.is_(None))
    ).one_or_none()


def key_starts_with(prefix: str) -> ColumnElement[bool]:
    """Keys that start with `prefix`, exactly and case-sensitively on every database.

    Not `LIKE`: SQLite's ignores case (a key limited to `acme-` would see `ACME-victim`), and
    its `_` and `%` are wildcards. Not a range either: PostgreSQL orders by the database's
    collation, not by bytes. Comparing the key's first characters with `=` is exact on both.
    """
    return func.substr(ContextRow.key, 1, len(prefix)) == prefix


def list_contexts(
    *, session: Session, limit: int, offset: int, key_prefix: str = ""
) -> tuple[list[ContextRow], int]:
    """A page of live contexts in index order, and the number of live contexts.

    Args:
        session: The session to read with.
        limit: The most rows to return (non-negative).
        offset: How many rows of the ordering to skip (non-negative).
        key_prefix: Only keys starting with this (a tenant's API key may be limited to one).

    Returns:
        The rows of the page and the total count of live contexts with the prefix.
    """
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be non-negative")
    live: list[ColumnElement[bool]] = [ContextRow.retired_at.is_(None)]
    if key_prefix:
        live.append(key_starts_with(key_prefix))
    rows = session.scalars(
        select(ContextRow).where(*live).order_by(ContextRow.index).limit(limit).offset(offset)
    ).all()
    total = session.scalar(select(func.count()).select_from(ContextRow).where(*live)) or 0
    return list(rows), total


def count_live_contexts(*, session: Session) -> int:
    """The number of live contexts."""
    return (
        session.scalar(
            select(func.count()).select_from(ContextRow).where(ContextRow.retired_at.is_(None))
        )
        or 0
    )


def live_keys(*, session: Session) -> list[tuple[str, int]]:
    """Every live context as `(key, index)`: what a serving process resolves keys with."""
    rows = session.execute(
        select(ContextRow.key, ContextRow.index).where(ContextRow.retired_at.is_(None))
    )
    return [(key, index) for key, index in rows]


def retired_since(*, session: Session, since: datetime) -> list[tuple[str, int]]:
    """Contexts retired at or after `since`, as `(key, index)` (served by a partial index)."""
    rows = session.execute(
        select(ContextRow.key, ContextRow.index).where(
            ContextRow.retired_at.is_not(None), ContextRow.retired_at >= since
        )
    )
    return [(key, index) for key, index in rows]


def retire_context(*, session: Session, key: str) -> bool:
    """Deletes a context: its key stops answering and its index is never reused.

    Returns:
        True if a live context with the key was retired, False if there was none.
    """
    result = session.execute(
        update(ContextRow)
        .where(ContextRow.key == key, ContextRow.retired_at.is_(None))
        .values(retired_at=utcnow())
        .execution_options(synchronize_session="evaluate")
    )
    return cast(CursorResult[Any], result).rowcount > 0
