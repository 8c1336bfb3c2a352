"""Query functions of the context registry.

Every function takes keyword arguments only and does one job against a `Session`.

Commit policy: these functions never commit. They flush, so generated values such as the
context index are set on the returned rows, and the caller commits (or rolls back) the
transaction. That lets a caller combine several calls in one transaction; the price is that a
caller must commit promptly after creating one-power contexts with a server-chosen power,
because the power allocation holds a lock until the transaction ends (an advisory lock on
PostgreSQL, the write lock on SQLite).

A key is unique among live contexts only. Deleting a context retires its row instead of removing
it, so its index is never handed out again, and the same key may later be registered anew under
a new index.

A seed or power, by contrast, is unique for the life of the registry, live and retired rows
alike: it names one model inside the shared weights. A retired context's weights stay
superposed, and they can never be recalled, because its seed is never issued again. One-power
exponents must moreover lie `min_power_gap` apart, since nearby powers recall nearly the same
model. Unique indices enforce the first rule in the database; the gap is checked under the power
allocation lock, which serialises every one-power registration across processes.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Final, NoReturn
from typing import cast as type_cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    Table,
    and_,
    bindparam,
    case,
    cast,
    distinct,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from psp_core.kinds import CONTEXT_KINDS
from service.registry.models import KEY_MAX_LENGTH, KEY_PATTERN, ContextRow, utcnow

_VALID_KEY: Final = re.compile(KEY_PATTERN)

SEED_LIMIT: Final = 2**63
"""Seeds lie in [0, SEED_LIMIT), so they fit a signed 64-bit column."""

MAX_BULK_CONTEXTS: Final = 10_000
"""The most contexts one `create_contexts` call registers."""

DEFAULT_MIN_POWER_GAP: Final = 1.0
"""How far apart one-power exponents must lie unless configured otherwise."""

# Any 64-bit constant works; it names the lock that serialises the choice of one-power powers.
_POWER_LOCK_ID: Final = 0x7073705F706F7772
# Bound on IN-lists; old SQLite builds allow only 999 parameters per statement.
_IN_CHUNK: Final = 900
# Doubles represent every integer exactly only up to 2**53; larger powers are never integral
# candidates, and casting them could overflow BIGINT on PostgreSQL.
_EXACT_INTEGER_LIMIT: Final = 2**53
# A key that is retired or re-registered by another transaction between our read and our insert
# is retried; more rounds than this means something keeps fighting over the same keys.
_MAX_INSERT_ROUNDS: Final = 5


class RegistryError(Exception):
    """Base class of the registry's errors; the message says what to send instead."""


class InvalidContextParameters(RegistryError, ValueError):
    """The key, seed or power does not fit the model's context kind (an HTTP 422)."""


class ContextConflict(RegistryError):
    """A live context already has this key with a different seed or power (an HTTP 409).

    Attributes:
        key: The conflicting key.
        existing: The live row that holds the key.
    """

    def __init__(self, message: str, *, key: str, existing: ContextRow) -> None:
        super().__init__(message)
        self.key = key
        self.existing = existing


class ContextParameterTaken(RegistryError):
    """A requested seed or power belongs, or lies too close, to another context (an HTTP 409).

    The message never names the other context's key: it may belong to another tenant.
    """


ContextItem = tuple[str, int | None, float | None]
"""A context to register: (key, seed or None, power or None)."""


@dataclass
class _Pending:
    """A context of the batch that will be inserted; seed or power is filled in when chosen."""

    key: str
    seed: int | None
    power: float | None
    requested_seed: int | None
    requested_power: float | None
    row: ContextRow | None = None


def _check_kind(kind: str) -> None:
    if kind not in CONTEXT_KINDS:
        raise ValueError(f"unknown context kind {kind!r}; expected one of {sorted(CONTEXT_KINDS)}")


def _validate_item(kind: str, item: ContextItem) -> ContextItem:
    """Checks one item against the kind and returns it with the power as a float."""
    key, seed, power = item
    if not isinstance(key, str) or not _VALID_KEY.match(key):
        raise InvalidContextParameters(
            f"key {key!r} is not valid; send 1 to {KEY_MAX_LENGTH} characters from "
            "A-Z, a-z, 0-9, '.', '_', ':' and '-'"
        )
    if kind == "onepower":
        if seed is not None:
            raise InvalidContextParameters(
                "one-power contexts are defined by a power (a real exponent), not a seed; "
                "send a number as power, or omit both to let the server choose"
            )
        if power is not None:
            if isinstance(power, bool) or not isinstance(power, int | float):
                raise InvalidContextParameters(
                    "power must be a finite number; send a number or omit it"
                )
            if not math.isfinite(power):
                raise InvalidContextParameters(
                    "power must be a finite number, not NaN or infinity; send a finite number "
                    "or omit it"
                )
            power = float(power)
        return key, None, power
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
    return key, seed, None


def _conflict(existing: ContextRow, seed: int | None, power: float | None) -> bool:
    """Whether the requested parameters contradict the live row (omitted ones never do)."""
    if seed is not None and seed != existing.seed:
        return True
    return power is not None and power != existing.power


def _raise_conflict(key: str, existing: ContextRow) -> NoReturn:
    if existing.power is not None:
        held = f"power {existing.power!r}"
        fix = "send that power or omit it"
    else:
        held = f"seed {existing.seed!r}"
        fix = "send that seed or omit it"
    raise ContextConflict(
        f"context {key!r} already exists with {held}; {fix} to get the existing context, or "
        "delete it first to register the key anew",
        key=key,
        existing=existing,
    )


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _live_rows_by_key(session: Session, keys: Sequence[str]) -> dict[str, ContextRow]:
    found: dict[str, ContextRow] = {}
    for chunk in _chunks(keys, _IN_CHUNK):
        rows = session.scalars(
            select(ContextRow).where(ContextRow.key.in_(chunk), ContextRow.retired_at.is_(None))
        )
        found.update((row.key, row) for row in rows)
    return found


def _lock_power_allocation(session: Session) -> None:
    """Serialises one-power registrations until this transaction ends.

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


def _free_powers(
    session: Session, count: int, reserved: Iterable[float], gap: float
) -> list[float]:
    """The `count` smallest non-negative integers at least `gap` away from every power in use
    (live or retired) and from `reserved`, and from each other.

    One aggregate query finds the first candidate in the common case, where the used integral
    powers are exactly 0..max; only when there are holes are the used values read to find them.
    Each candidate is then checked against its neighbourhood.
    """
    integral = _integral_power()
    used_count, used_max = session.execute(
        select(func.count(distinct(integral)), func.max(integral))
    ).one()
    taken: set[int] = set()
    if used_max is None:
        candidate = 0
    elif used_count == int(used_max) + 1:
        candidate = int(used_max) + 1
    else:
        candidate = 0
        taken.update(
            int(value)
            for value in session.scalars(select(integral).where(integral.is_not(None)).distinct())
        )
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


def _check_powers(session: Session, pending: Iterable[_Pending], gap: float) -> None:
    """Refuses explicit powers that lie closer than `gap` to each other or to any power in use.

    Raises:
        InvalidContextParameters: Two powers of the batch are too close.
        ContextParameterTaken: A power is too close to a registered context's.
    """
    explicit = sorted(item.power for item in pending if item.power is not None)
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


def _seed_holders(session: Session, seeds: Sequence[int]) -> dict[int, str | None]:
    """Which of `seeds` a row, live or retired, already has: seed -> the key of the live row
    that holds it, or None when a retired row does."""
    held: dict[int, str | None] = {}
    for start in range(0, len(seeds), _IN_CHUNK):
        chunk = seeds[start : start + _IN_CHUNK]
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


def _assign_seeds(session: Session, pending: Sequence[_Pending]) -> None:
    """Checks the requested seeds and draws the missing ones.

    Server seeds come from the operating system's cryptographic source, so they cannot be
    guessed, and are redrawn until none is in use or drawn twice.

    Raises:
        InvalidContextParameters: Two keys of the batch ask for one seed.
        ContextParameterTaken: A requested seed belongs to another context, live or deleted.
    """
    requested = [item.seed for item in pending if item.seed is not None]
    if len(set(requested)) < len(requested):
        raise InvalidContextParameters(
            "two keys of the batch ask for the same seed, which would make them one model; "
            "send a different seed for each key, or omit the seeds to let the server draw them"
        )
    holders = _seed_holders(session, requested)
    # A live row of the same key holding the seed was registered meanwhile by a concurrent
    # identical request; the insert then loses the race and the retry returns that row.
    used = sorted(
        item.seed
        for item in pending
        if item.seed is not None and item.seed in holders and holders[item.seed] != item.key
    )
    if used:
        raise ContextParameterTaken(
            f"seed {used[0]} belongs to another context (live or deleted), and a seed names one "
            "model for good; omit the seed to let the server draw an unused one, or send another"
        )
    drawing = [item for item in pending if item.seed is None]
    taken = set(requested)
    while drawing:
        draws = [secrets.randbits(63) for _ in drawing]
        in_use = _seed_holders(session, draws)
        for item, seed in zip(drawing, draws, strict=True):
            if seed not in in_use and seed not in taken:
                item.seed = seed
                taken.add(seed)
        drawing = [item for item in drawing if item.seed is None]


def _insert_rows(
    session: Session, pending: Sequence[_Pending], created_at: datetime
) -> dict[str, ContextRow]:
    """Inserts the pending contexts, skipping keys that went live in another transaction.

    Returns:
        The inserted rows by key; a key missing from it was registered concurrently.
    """
    if not pending:
        return {}
    dialect = session.connection().dialect.name
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert_fn(ContextRow)
        .on_conflict_do_nothing(
            index_elements=[ContextRow.key], index_where=ContextRow.retired_at.is_(None)
        )
        .returning(ContextRow)
    )
    parameters = [
        {
            "key": item.key,
            "seed": item.seed,
            "power": item.power,
            "created_at": created_at,
        }
        for item in pending
    ]
    return {row.key: row for row in session.scalars(statement, parameters)}


def create_contexts(
    *,
    session: Session,
    kind: str,
    items: Sequence[ContextItem],
    min_power_gap: float = DEFAULT_MIN_POWER_GAP,
) -> list[tuple[ContextRow, bool]]:
    """Registers many contexts at once, with the rules of `create_context` for each item.

    Items are taken in order: a key that appears twice behaves as if posted twice. Validation
    and conflict checks run before anything is written, so an invalid or conflicting item
    leaves the registry untouched; if a conflict only shows up at insert time (another
    transaction registered the key meanwhile), the rows this call inserted are removed again
    before `ContextConflict` is raised.

    Args:
        session: The session to work in; flushed, not committed.
        kind: The model's context kind, one of `psp_core.kinds.CONTEXT_KINDS`.
        items: Up to `MAX_BULK_CONTEXTS` tuples of (key, seed or None, power or None).
        min_power_gap: How far a new one-power exponent must lie from every other one.

    Returns:
        One (row, created) pair per item, in item order; created is False for a key that was
        already live (or appeared earlier in the batch).

    Raises:
        InvalidContextParameters: An item does not fit the kind, or the batch is too large.
        ContextConflict: A key is live with a different seed or power.
        ContextParameterTaken: A seed or power belongs, or lies too close, to another context.
        sqlalchemy.exc.IntegrityError: A concurrent transaction took a seed or power first;
            retrying the whole transaction answers correctly (`RegistryStore` does).
    """
    _check_kind(kind)
    if len(items) > MAX_BULK_CONTEXTS:
        raise InvalidContextParameters(
            f"{len(items)} contexts in one batch is too many; send at most {MAX_BULK_CONTEXTS} "
            "per request"
        )
    valid = [_validate_item(kind, item) for item in items]
    keys = list(dict.fromkeys(key for key, _, _ in valid))
    existing = _live_rows_by_key(session, keys)

    # Resolve items against live rows and earlier items before writing anything.
    pending: dict[str, _Pending] = {}
    for key, seed, power in valid:
        if key in existing:
            if _conflict(existing[key], seed, power):
                _raise_conflict(key, existing[key])
        elif key in pending:
            earlier = pending[key]
            if (seed is not None and seed != earlier.seed) or (
                power is not None and power != earlier.power
            ):
                raise InvalidContextParameters(
                    f"key {key!r} appears twice in the batch with different parameters; send "
                    "each key once"
                )
        else:
            pending[key] = _Pending(
                key=key, seed=seed, power=power, requested_seed=seed, requested_power=power
            )

    if kind == "onepower" and pending:
        _lock_power_allocation(session)
        _check_powers(session, pending.values(), min_power_gap)
        needs_power = [item for item in pending.values() if item.power is None]
        explicit = [item.power for item in pending.values() if item.power is not None]
        free = _free_powers(session, len(needs_power), explicit, min_power_gap)
        for item, chosen in zip(needs_power, free, strict=True):
            item.power = chosen
    elif pending:
        _assign_seeds(session, list(pending.values()))

    created_at = utcnow()
    to_insert = list(pending.values())
    inserted_now: list[ContextRow] = []
    for _ in range(_MAX_INSERT_ROUNDS):
        inserted = _insert_rows(session, to_insert, created_at)
        inserted_now.extend(inserted.values())
        raced = [item for item in to_insert if item.key not in inserted]
        for item in to_insert:
            item.row = inserted.get(item.key)
        if not raced:
            break
        # The other transaction has committed by now (the insert waited for its lock), so a
        # fresh read sees its row; its row wins if it agrees with what this item asked for.
        winners = _live_rows_by_key(session, [item.key for item in raced])
        for item in raced:
            winner = winners.get(item.key)
            if winner is None:
                continue
            if _conflict(winner, item.requested_seed, item.requested_power):
                for inserted_row in inserted_now:
                    session.delete(inserted_row)
                session.flush()
                _raise_conflict(item.key, winner)
            existing[item.key] = winner
            del pending[item.key]
        to_insert = [item for item in raced if item.key in pending]
        if not to_insert:
            break
    else:
        raise RuntimeError("contexts kept being registered and deleted concurrently; retry")

    results: list[tuple[ContextRow, bool]] = []
    seen: set[str] = set()
    for key, _, _ in valid:
        if key in existing:
            results.append((existing[key], False))
        else:
            row = pending[key].row
            if row is None:
                raise RuntimeError(f"context {key!r} was neither found nor inserted")
            results.append((row, key not in seen))
        seen.add(key)
    return results


def create_context(
    *,
    session: Session,
    key: str,
    kind: str,
    seed: int | None = None,
    power: float | None = None,
    min_power_gap: float = DEFAULT_MIN_POWER_GAP,
) -> tuple[ContextRow, bool]:
    """Registers one context, or returns the live one with the same key.

    One-power contexts are defined by a real `power`; the other kinds by an integer `seed` in
    [0, 2**63). When it is omitted, the server chooses: an unused random 63-bit seed, or the
    smallest non-negative integer power at least `min_power_gap` from every context's power
    (live or retired).

    Args:
        session: The session to work in; flushed, not committed.
        key: The client's name for the context.
        kind: The model's context kind.
        seed: The seed of a binary, complex, rotation or none context, or None to choose one.
        power: The exponent of a one-power context, or None to choose one.
        min_power_gap: How far a new one-power exponent must lie from every other one.

    Returns:
        The row and whether it was created now (False: the key was already live with the same
        or omitted parameters).

    Raises:
        InvalidContextParameters: The key, seed or power does not fit the kind.
        ContextConflict: The key is live with a different seed or power.
        ContextParameterTaken: The seed or power belongs, or lies too close, to another context.
    """
    return create_contexts(
        session=session, kind=kind, items=[(key, seed, power)], min_power_gap=min_power_gap
    )[0]


def get_context(*, session: Session, key: str) -> ContextRow | None:
    """The live context with this key, or None."""
    return session.scalars(
        select(ContextRow).where(ContextRow.key == key, ContextRow.retired_at.is_(None))
    ).one_or_none()


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
        live.append(ContextRow.key.startswith(key_prefix, autoescape=True))
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
    return type_cast(CursorResult[Any], result).rowcount > 0


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
    table = type_cast(Table, ContextRow.__table__)
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
    # The update bypassed the ORM, so loaded rows would show stale counters until expired.
    changed = {p["b_index"] for p in parameters}
    for obj in list(session.identity_map.values()):
        if isinstance(obj, ContextRow) and obj.index in changed:
            session.expire(
                obj, ["examples_seen", "prequential_seen", "prequential_correct", "refused"]
            )
