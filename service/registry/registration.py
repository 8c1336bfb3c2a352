"""Registering contexts, one or a batch, each under a seed or power that is its own for good.

A key is unique among live contexts only: deleting a context retires its row, so its index is
never handed out again, and the same key may later be registered anew under a new index. A seed
or power is unique for the life of the registry, live and retired rows alike (see
`service.registry.seeds` and `service.registry.powers`).

Commit policy: these functions never commit. They flush, so generated values such as the
context index are set on the returned rows, and the caller commits (or rolls back) the
transaction. That lets a caller combine several calls in one transaction; the price is that a
caller must commit promptly after creating one-power contexts, because the power allocation
holds a lock until the transaction ends (an advisory lock on PostgreSQL, the write lock on
SQLite).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, NoReturn

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.registry.database import in_chunks, insert_with_on_conflict
from service.registry.errors import ContextConflict, InvalidContextParameters
from service.registry.models import ContextRow, utcnow
from service.registry.parameters import ContextItem, validate_items
from service.registry.powers import (
    DEFAULT_MIN_POWER_GAP,
    check_requested_powers,
    free_powers,
    lock_power_allocation,
)
from service.registry.seeds import check_requested_seeds, draw_unused_seeds
from service.registry.shards import ShardPlan, choose_shards

# A key that is retired or re-registered by another transaction between our read and our insert
# is retried; more rounds than this means something keeps fighting over the same keys.
_MAX_INSERT_ROUNDS: Final = 5


@dataclass
class _Pending:
    """A context of the batch that will be inserted; seed or power is filled in when chosen."""

    key: str
    seed: int | None
    power: float | None
    requested_seed: int | None
    requested_power: float | None
    shard: int = 0
    row: ContextRow | None = None


def create_contexts(
    *,
    session: Session,
    kind: str,
    items: Sequence[ContextItem],
    min_power_gap: float = DEFAULT_MIN_POWER_GAP,
    shards: ShardPlan = ShardPlan(),
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
        shards: The shards new contexts are spread over (see `service.registry.shards`).

    Returns:
        One (row, created) pair per item, in item order; created is False for a key that was
        already live (or appeared earlier in the batch).

    Raises:
        InvalidContextParameters: An item does not fit the kind, or the batch is too large.
        ContextConflict: A key is live with a different seed or power.
        ContextParameterTaken: A seed or power belongs, or lies too close, to another context.
        ShardsFull: The shards have no room for the new contexts.
        sqlalchemy.exc.IntegrityError: A concurrent transaction took a seed or power first;
            retrying the whole transaction answers correctly (`RegistryStore` does).
    """
    valid = validate_items(kind, items)
    existing = _live_rows_by_key(session, list(dict.fromkeys(key for key, _, _ in valid)))
    pending = _new_contexts(valid, existing)
    _choose_shards(session, list(pending.values()), shards)
    if pending and kind == "onepower":
        _choose_powers(session, list(pending.values()), min_power_gap)
    elif pending:
        _choose_seeds(session, list(pending.values()))
    _insert(session, pending, existing)
    return _answers(valid, existing, pending)


def create_context(
    *,
    session: Session,
    key: str,
    kind: str,
    seed: int | None = None,
    power: float | None = None,
    min_power_gap: float = DEFAULT_MIN_POWER_GAP,
    shards: ShardPlan = ShardPlan(),
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
        shards: The shards a new context is spread over.

    Returns:
        The row and whether it was created now (False: the key was already live with the same
        or omitted parameters).

    Raises:
        InvalidContextParameters: The key, seed or power does not fit the kind.
        ContextConflict: The key is live with a different seed or power.
        ContextParameterTaken: The seed or power belongs, or lies too close, to another context.
        ShardsFull: Every shard holds its capacity of live contexts.
    """
    return create_contexts(
        session=session,
        kind=kind,
        items=[(key, seed, power)],
        min_power_gap=min_power_gap,
        shards=shards,
    )[0]


def _new_contexts(
    valid: Sequence[ContextItem], existing: dict[str, ContextRow]
) -> dict[str, _Pending]:
    """The keys of the batch that are not live yet, each once, by key.

    Raises:
        ContextConflict: An item contradicts the live row of its key.
        InvalidContextParameters: A key appears twice in the batch with different parameters.
    """
    pending: dict[str, _Pending] = {}
    for key, seed, power in valid:
        if key in existing:
            if _contradicts(existing[key], seed, power):
                _raise_conflict(key, existing[key])
        elif key in pending:
            if _contradicts(pending[key], seed, power):
                raise InvalidContextParameters(
                    f"key {key!r} appears twice in the batch with different parameters; send "
                    "each key once"
                )
        else:
            pending[key] = _Pending(
                key=key, seed=seed, power=power, requested_seed=seed, requested_power=power
            )
    return pending


def _choose_shards(session: Session, pending: Sequence[_Pending], plan: ShardPlan) -> None:
    """Spreads the new contexts over the shards; with one uncapped shard there is no choice."""
    if not pending or (plan.count == 1 and plan.capacity is None):
        return
    for item, shard in zip(pending, choose_shards(session, plan, len(pending)), strict=True):
        item.shard = shard


def _choose_powers(session: Session, pending: Sequence[_Pending], gap: float) -> None:
    """Checks the requested powers and chooses the missing ones, under the allocation lock."""
    lock_power_allocation(session)
    requested = [item.power for item in pending if item.power is not None]
    check_requested_powers(session, requested, gap)
    missing = [item for item in pending if item.power is None]
    chosen = free_powers(session, len(missing), requested, gap)
    for item, power in zip(missing, chosen, strict=True):
        item.power = power


def _choose_seeds(session: Session, pending: Sequence[_Pending]) -> None:
    """Checks the requested seeds and draws the missing ones."""
    requested = {item.key: item.seed for item in pending if item.seed is not None}
    check_requested_seeds(session, requested)
    missing = [item for item in pending if item.seed is None]
    drawn = draw_unused_seeds(session, len(missing), set(requested.values()))
    for item, seed in zip(missing, drawn, strict=True):
        item.seed = seed


def _insert(
    session: Session, pending: dict[str, _Pending], existing: dict[str, ContextRow]
) -> None:
    """Inserts the pending contexts, in rounds while other transactions race for their keys.

    An item whose key another transaction registered meanwhile leaves `pending` for `existing`
    (see `_yield_to_winners`); each round inserts the items left over.
    """
    created_at = utcnow()
    to_insert = list(pending.values())
    for _ in range(_MAX_INSERT_ROUNDS):
        inserted = _insert_rows(session, to_insert, created_at)
        for item in to_insert:
            item.row = inserted.get(item.key)
        raced = [item for item in to_insert if item.row is None]
        to_insert = _yield_to_winners(session, raced, pending, existing)
        if not to_insert:
            return
    raise RuntimeError("contexts kept being registered and deleted concurrently; retry")


def _insert_rows(
    session: Session, pending: Sequence[_Pending], created_at: datetime
) -> dict[str, ContextRow]:
    """Inserts the pending contexts, skipping keys that went live in another transaction.

    Returns:
        The inserted rows by key; a key missing from it was registered concurrently.
    """
    if not pending:
        return {}
    statement = (
        insert_with_on_conflict(session, ContextRow)
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
            "shard": item.shard,
            "created_at": created_at,
        }
        for item in pending
    ]
    return {row.key: row for row in session.scalars(statement, parameters)}


def _yield_to_winners(
    session: Session,
    raced: Sequence[_Pending],
    pending: dict[str, _Pending],
    existing: dict[str, ContextRow],
) -> list[_Pending]:
    """Settles the items whose insert found their key live; returns those to insert again.

    The other transaction has committed by now (the insert waited for its lock), so a fresh
    read sees its row; its row wins if it agrees with what the item asked for. A key that is no
    longer live was retired again meanwhile, and its item is inserted in the next round.

    Raises:
        ContextConflict: A winner's row contradicts the item; the rows this call inserted are
            removed first.
    """
    winners = _live_rows_by_key(session, [item.key for item in raced])
    for item in raced:
        winner = winners.get(item.key)
        if winner is None:
            continue
        if _contradicts(winner, item.requested_seed, item.requested_power):
            _remove_inserted(session, pending.values())
            _raise_conflict(item.key, winner)
        existing[item.key] = winner
        del pending[item.key]
    return [item for item in raced if item.key in pending]


def _remove_inserted(session: Session, pending: Iterable[_Pending]) -> None:
    for item in pending:
        if item.row is not None:
            session.delete(item.row)
    session.flush()


def _answers(
    valid: Sequence[ContextItem], existing: dict[str, ContextRow], pending: dict[str, _Pending]
) -> list[tuple[ContextRow, bool]]:
    """One (row, created) pair per item, in item order; only a key's first item created it."""
    answers: list[tuple[ContextRow, bool]] = []
    seen: set[str] = set()
    for key, _, _ in valid:
        if key in existing:
            answers.append((existing[key], False))
        else:
            row = pending[key].row
            if row is None:
                raise RuntimeError(f"context {key!r} was neither found nor inserted")
            answers.append((row, key not in seen))
        seen.add(key)
    return answers


def _live_rows_by_key(session: Session, keys: Sequence[str]) -> dict[str, ContextRow]:
    found: dict[str, ContextRow] = {}
    for chunk in in_chunks(keys):
        rows = session.scalars(
            select(ContextRow).where(ContextRow.key.in_(chunk), ContextRow.retired_at.is_(None))
        )
        found.update((row.key, row) for row in rows)
    return found


def _contradicts(held: ContextRow | _Pending, seed: int | None, power: float | None) -> bool:
    """Whether the requested parameters contradict the held ones (omitted ones never do)."""
    if seed is not None and seed != held.seed:
        return True
    return power is not None and power != held.power


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
