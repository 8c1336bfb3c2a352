"""Shards: which superposed model a new context joins.

A context joins the least-loaded shard (fewest live contexts; ties go to the lowest number)
among shards 0 to count - 1, and keeps it for good. With a capacity, the loads are read and the
rows inserted under the registry's allocation lock, so that concurrent registrations cannot
overshoot it; without one, a race only makes the spread a little uneven.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.registry.errors import ShardsFull
from service.registry.models import ContextRow
from service.registry.powers import lock_power_allocation


@dataclass(frozen=True)
class ShardPlan:
    """How many shards there are and how many live contexts each may hold (None: no cap)."""

    count: int = 1
    capacity: int | None = None


def live_per_shard(session: Session, count: int) -> list[int]:
    """The live contexts of shards 0 to count - 1, by shard number."""
    rows = session.execute(
        select(ContextRow.shard, func.count())
        .where(ContextRow.retired_at.is_(None))
        .group_by(ContextRow.shard)
    )
    loads = [0] * count
    for shard, live in rows:
        if 0 <= shard < count:
            loads[shard] = live
    return loads


def choose_shards(session: Session, plan: ShardPlan, how_many: int) -> list[int]:
    """The shard of each of `how_many` new contexts, one at a time to the least-loaded.

    Raises:
        ShardsFull: The shards have no room for all of them; nothing is chosen.
    """
    if plan.capacity is not None:
        # The same lock as one-power registration: loads read here stay true until commit.
        lock_power_allocation(session)
    loads = live_per_shard(session, plan.count)
    chosen: list[int] = []
    for _ in range(how_many):
        shard = min(range(plan.count), key=lambda k: (loads[k], k))
        if plan.capacity is not None and loads[shard] >= plan.capacity:
            _raise_full(plan, how_many)
        loads[shard] += 1
        chosen.append(shard)
    return chosen


def _raise_full(plan: ShardPlan, how_many: int) -> None:
    shards = "the 1 shard is" if plan.count == 1 else f"all {plan.count} shards are"
    asked = "a new context" if how_many == 1 else f"{how_many} new contexts"
    raise ShardsFull(
        f"{shards} full at {plan.capacity} live contexts each, with no room for {asked}; "
        "raise PSP_SHARDS__COUNT to add shards (or PSP_SHARDS__CAPACITY to let each hold "
        "more), or delete contexts that are no longer used"
    )
