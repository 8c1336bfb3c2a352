"""Powers of one-power contexts: a requested power is checked, a missing one is chosen.

A power names one model inside the shared weights, so it is unique for the life of the
registry, live and retired rows alike, and it must moreover lie `min_power_gap` away from every
other, since nearby powers recall nearly the same model. The unique index on power stops exact
duplicates; the gap is checked under the power allocation lock, which serialises every one-power
registration across processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import pairwise
from typing import Any, Final

from sqlalchemy import BigInteger, ColumnElement, and_, case, cast, distinct, func, select, text
from sqlalchemy.orm import Session

from service.registry.errors import ContextParameterTaken, InvalidContextParameters
from service.registry.models import ContextRow

DEFAULT_MIN_POWER_GAP: Final = 1.0
"""How far apart one-power exponents must lie unless configured otherwise."""

# Any 64-bit constant works; it names the lock that serialises the choice of one-power powers.
_POWER_LOCK_ID: Final = 0x7073705F706F7772
# Doubles represent every integer exactly only up to 2**53; larger powers are never integral
# candidates, and casting them could overflow BIGINT on PostgreSQL.
_EXACT_INTEGER_LIMIT: Final = 2**53


def lock_power_allocation(session: Session) -> None:
    """Serialises one-power registrations until this transaction ends (an advisory lock on
    PostgreSQL, the write lock on SQLite).

    The unique index on power stops exact duplicates, but not two powers closer than the gap;
    the check and the insert must therefore not interleave with another transaction's.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": _POWER_LOCK_ID}
        )
    elif dialect == "sqlite":
        # pysqlite opens a transaction only at the first write, so the reads below would run on a
        # snapshot that a concurrent writer could invalidate. Taking the write lock up front
        # closes that window; a connection already inside a transaction has written and so
        # holds the lock already.
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is not None and not dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def check_requested_powers(session: Session, requested: Iterable[float], gap: float) -> None:
    """Refuses requested powers that lie closer than `gap` to each other or to any power in use.

    Raises:
        InvalidContextParameters: Two powers of the batch are too close.
        ContextParameterTaken: A power is too close to a registered context's.
    """
    explicit = sorted(requested)
    for low, high in pairwise(explicit):
        if high - low < gap:
            raise InvalidContextParameters(
                f"powers {low!r} and {high!r} of the batch lie closer than {gap:g}; send powers "
                f"at least {gap:g} apart, or omit them to let the server choose"
            )
    for power in explicit:
        if _power_near(session, power, gap):
            raise ContextParameterTaken(
                f"power {power!r} lies closer than {gap:g} to the power of another context "
                "(live or deleted), and nearby powers recall nearly the same model; send a "
                f"power at least {gap:g} away from every registered one, or omit it to let the "
                "server choose"
            )


def free_powers(session: Session, count: int, reserved: Iterable[float], gap: float) -> list[float]:
    """The `count` smallest non-negative integers at least `gap` away from every power in use
    (live or retired) and from `reserved`, and from each other.

    Each candidate is checked against its neighbourhood in the power index.
    """
    candidate, taken = _first_candidate(session)
    chosen: list[float] = []
    nearby = list(reserved)
    while len(chosen) < count:
        value = float(candidate)
        if (
            candidate not in taken
            and all(abs(value - other) >= gap for other in nearby)
            and not _power_near(session, value, gap)
        ):
            chosen.append(value)
            nearby.append(value)
        candidate += 1
    return chosen


def _first_candidate(session: Session) -> tuple[int, set[int]]:
    """Where the search for free integral powers starts, and the used ones it must skip.

    One aggregate query answers in the common case, where the used integral powers are exactly
    0..max; only when there are holes are the used values read to find them.
    """
    integral = _integral_power()
    used_count, used_max = session.execute(
        select(func.count(distinct(integral)), func.max(integral))
    ).one()
    if used_max is None:
        return 0, set()
    if used_count == int(used_max) + 1:
        return int(used_max) + 1, set()
    used = session.scalars(select(integral).where(integral.is_not(None)).distinct())
    return 0, {int(value) for value in used}


def _integral_power() -> ColumnElement[Any]:
    """The power where it is a non-negative integer, else NULL."""
    power = ContextRow.power
    return case(
        (
            and_(power >= 0, power < _EXACT_INTEGER_LIMIT),
            case((cast(power, BigInteger) == power, power)),
        )
    )


def _power_near(session: Session, power: float, gap: float) -> bool:
    """Whether a row, live or retired, has a power closer than `gap` to `power` (an index range
    scan on the unique power index)."""
    near = select(ContextRow.index).where(
        ContextRow.power > power - gap, ContextRow.power < power + gap
    )
    return session.scalar(near.limit(1)) is not None
