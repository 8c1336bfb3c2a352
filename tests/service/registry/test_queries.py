"""The registry's query functions, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from psp_core.kinds import CONTEXT_KINDS, kind_class
from service.registry.database import make_engine, make_session_factory
from service.registry.migrate import upgrade
from service.registry.models import ContextRow
from service.registry.queries import (
    MAX_BULK_CONTEXTS,
    ContextConflict,
    ContextParameterTaken,
    InvalidContextParameters,
    add_training_counts,
    count_live_contexts,
    create_context,
    create_contexts,
    get_context,
    list_contexts,
    live_keys,
    retire_context,
    retired_since,
)

T = TypeVar("T")


def _all_rows(session: Session) -> list[ContextRow]:
    """Every row, retired ones included, in index order."""
    return list(session.scalars(select(ContextRow).order_by(ContextRow.index)))


def _run_concurrently(workers: int, job: Callable[[], T]) -> list[T]:
    """Runs `job` in `workers` threads released at the same moment."""
    barrier = threading.Barrier(workers)

    def start() -> T:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(start) for _ in range(workers)]
        return [future.result(timeout=60) for future in futures]


# ------------------------------------------------------------------------------------------------
# create_context


def test_create_returns_a_new_row_with_a_server_chosen_seed(registry_session: Session) -> None:
    before = datetime.now(UTC)
    row, created = create_context(session=registry_session, key="tenant-1", kind="complex")
    registry_session.commit()

    assert created is True
    assert row.key == "tenant-1"
    assert row.index >= 1
    assert row.seed is not None and 0 <= row.seed < 2**63
    assert row.power is None
    assert row.retired_at is None
    assert (row.examples_seen, row.prequential_seen, row.prequential_correct, row.shard) == (
        0,
        0,
        0,
        0,
    )
    assert row.created_at.tzinfo is not None
    assert row.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= row.created_at <= datetime.now(UTC)


@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_every_model_kind_registers_contexts(registry_session: Session, kind: str) -> None:
    row, created = create_context(session=registry_session, key="a", kind=kind)
    assert created is True
    assert (row.power is not None, row.seed is not None) == (
        kind_class(kind).uses_power,
        not kind_class(kind).uses_power,
    )


def test_an_unknown_kind_is_refused(registry_session: Session) -> None:
    with pytest.raises(ValueError, match="unknown context kind 'quantum'; expected one of"):
        create_context(session=registry_session, key="a", kind="quantum")


def test_created_at_reads_back_as_utc(
    registry_session_factory: sessionmaker[Session],
) -> None:
    with registry_session_factory() as session:
        row, _ = create_context(session=session, key="a", kind="binary", seed=1)
        written = row.created_at
        session.commit()
    with registry_session_factory() as session:
        read = get_context(session=session, key="a")
        assert read is not None
        assert read.created_at == written
        assert read.created_at.utcoffset() == timedelta(0)


def test_seeds_are_random_63_bit(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="binary")[0] for i in range(50)
    ]
    seeds = {row.seed for row in rows}
    assert len(seeds) == 50
    assert all(seed is not None and 0 <= seed < 2**63 for seed in seeds)
    # 50 uniform 63-bit draws all below 2**40 would mean the range is wrong.
    assert max(seed for seed in seeds if seed is not None) > 2**40


def test_same_key_again_returns_the_existing_row(registry_session: Session) -> None:
    first, created = create_context(session=registry_session, key="a", kind="rotation", seed=7)
    registry_session.commit()
    again, again_created = create_context(
        session=registry_session, key="a", kind="rotation", seed=7
    )
    omitted, omitted_created = create_context(session=registry_session, key="a", kind="rotation")

    assert (created, again_created, omitted_created) == (True, False, False)
    assert again.index == omitted.index == first.index
    assert again.seed == omitted.seed == 7
    assert count_live_contexts(session=registry_session) == 1


def test_different_seed_for_a_live_key_conflicts(registry_session: Session) -> None:
    create_context(session=registry_session, key="a", kind="binary", seed=7)
    registry_session.commit()

    with pytest.raises(ContextConflict, match="seed 7") as caught:
        create_context(session=registry_session, key="a", kind="binary", seed=8)

    assert caught.value.key == "a"
    assert caught.value.existing.seed == 7
    row = get_context(session=registry_session, key="a")
    assert row is not None and row.seed == 7


def test_different_power_for_a_live_key_conflicts(registry_session: Session) -> None:
    create_context(session=registry_session, key="p", kind="onepower", power=2.5)
    registry_session.commit()

    assert create_context(session=registry_session, key="p", kind="onepower", power=2.5)[1] is False
    with pytest.raises(ContextConflict, match=r"power 2\.5"):
        create_context(session=registry_session, key="p", kind="onepower", power=3.0)


def test_explicit_seed_is_kept(registry_session: Session) -> None:
    row, _ = create_context(session=registry_session, key="a", kind="none", seed=2**63 - 1)
    registry_session.commit()
    assert row.seed == 2**63 - 1
    registry_session.expire_all()
    read = get_context(session=registry_session, key="a")
    assert read is not None and read.seed == 2**63 - 1


@pytest.mark.parametrize(
    ("kind", "key", "seed", "power", "message"),
    [
        ("onepower", "a", 3, None, "not a seed"),
        ("onepower", "a", None, math.nan, "finite"),
        ("onepower", "a", None, math.inf, "finite"),
        ("binary", "a", None, 1.0, "not a power"),
        ("complex", "a", None, 0.0, "not a power"),
        ("rotation", "a", -1, None, r"\[0, 2\*\*63\)"),
        ("rotation", "a", 2**63, None, r"\[0, 2\*\*63\)"),
        ("binary", "a", True, None, r"\[0, 2\*\*63\)"),
        ("binary", "", None, None, "not valid"),
        ("binary", "has space", None, None, "not valid"),
        ("binary", "x" * 129, None, None, "not valid"),
    ],
)
def test_invalid_parameters_are_refused(
    registry_session: Session,
    kind: str,
    key: str,
    seed: int | None,
    power: float | None,
    message: str,
) -> None:
    with pytest.raises(InvalidContextParameters, match=message):
        create_context(session=registry_session, key=key, kind=kind, seed=seed, power=power)
    assert isinstance(InvalidContextParameters("x"), ValueError)
    assert count_live_contexts(session=registry_session) == 0


def test_unknown_kind_is_a_programming_error(registry_session: Session) -> None:
    with pytest.raises(ValueError, match="unknown context kind"):
        create_context(session=registry_session, key="a", kind="quaternion")


def test_longest_key_is_accepted(registry_session: Session) -> None:
    key = "A-z0.9_:" * 16
    assert len(key) == 128
    row, created = create_context(session=registry_session, key=key, kind="binary")
    registry_session.commit()
    assert created and row.key == key


# ------------------------------------------------------------------------------------------------
# one-power: the server chooses the smallest free non-negative integer power


def test_onepower_chooses_the_smallest_unused_integer_power(registry_session: Session) -> None:
    def auto(key: str) -> float | None:
        row, created = create_context(session=registry_session, key=key, kind="onepower")
        assert created
        return row.power

    assert [auto("a"), auto("b"), auto("c")] == [0.0, 1.0, 2.0]
    assert all(isinstance(value, float) for value in (auto("d"),))  # 3.0
    create_context(session=registry_session, key="five", kind="onepower", power=5.0)
    create_context(session=registry_session, key="half", kind="onepower", power=8.5)
    create_context(session=registry_session, key="neg", kind="onepower", power=-1.0)
    create_context(session=registry_session, key="huge", kind="onepower", power=1e300)
    registry_session.commit()
    assert [auto("e"), auto("f"), auto("g")] == [4.0, 6.0, 7.0]


def test_onepower_fills_gaps_and_never_reuses_retired_powers(registry_session: Session) -> None:
    create_context(session=registry_session, key="two", kind="onepower", power=2.0)
    create_context(session=registry_session, key="zero", kind="onepower", power=0.0)
    registry_session.commit()
    assert retire_context(session=registry_session, key="zero") is True
    registry_session.commit()

    row, _ = create_context(session=registry_session, key="x", kind="onepower")
    assert row.power == 1.0
    row, _ = create_context(session=registry_session, key="y", kind="onepower")
    assert row.power == 3.0


def test_bulk_onepower_avoids_explicit_powers_of_the_batch(registry_session: Session) -> None:
    create_context(session=registry_session, key="old", kind="onepower", power=0.0)
    results = create_contexts(
        session=registry_session,
        kind="onepower",
        items=[("a", None, None), ("b", None, 2.0), ("c", None, None), ("d", None, 5.5)],
    )
    registry_session.commit()
    assert [row.power for row, _ in results] == [1.0, 2.0, 3.0, 5.5]
    assert all(created for _, created in results)


def test_concurrent_onepower_creates_choose_distinct_powers(
    registry_session_factory: sessionmaker[Session],
) -> None:
    counter = iter(range(1000))
    lock = threading.Lock()

    def job() -> float | None:
        with lock:
            key = f"tenant-{next(counter)}"
        with registry_session_factory() as session:
            row, _ = create_context(session=session, key=key, kind="onepower")
            session.commit()
            return row.power

    powers = _run_concurrently(8, job)
    assert sorted(p for p in powers if p is not None) == [float(i) for i in range(8)]


def test_concurrent_creates_of_one_key_make_one_row(
    registry_session_factory: sessionmaker[Session],
) -> None:
    def job() -> tuple[int, bool, int | None]:
        with registry_session_factory() as session:
            row, created = create_context(session=session, key="shared", kind="complex")
            session.commit()
            return row.index, created, row.seed

    results = _run_concurrently(8, job)
    assert sum(created for _, created, _ in results) == 1
    assert len({index for index, _, _ in results}) == 1
    assert len({seed for _, _, seed in results}) == 1
    with registry_session_factory() as session:
        assert count_live_contexts(session=session) == 1
        assert len(_all_rows(session)) == 1


def test_concurrent_create_with_a_conflicting_seed_loses(
    registry_session_factory: sessionmaker[Session],
) -> None:
    seeds = iter(range(1, 9))
    lock = threading.Lock()

    def job() -> int | str:
        with lock:
            seed = next(seeds)
        with registry_session_factory() as session:
            try:
                row, _ = create_context(session=session, key="shared", kind="binary", seed=seed)
            except ContextConflict:
                return "conflict"
            session.commit()
            assert row.seed == seed
            return seed

    results = _run_concurrently(8, job)
    winners = [result for result in results if result != "conflict"]
    assert len(winners) == 1
    with registry_session_factory() as session:
        row = get_context(session=session, key="shared")
        assert row is not None and row.seed == winners[0]
        assert len(_all_rows(session)) == 1


# ------------------------------------------------------------------------------------------------
# indices, retirement and re-registration


def test_indices_are_monotonic_and_never_reused(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="binary")[0] for i in range(5)
    ]
    registry_session.commit()
    indices = [row.index for row in rows]
    assert indices == sorted(indices) and len(set(indices)) == 5

    assert retire_context(session=registry_session, key="k4") is True
    registry_session.commit()
    new, created = create_context(session=registry_session, key="k5", kind="binary")
    registry_session.commit()
    assert created and new.index > indices[-1]

    # Even a physically deleted highest row never gives its index away (SQLite AUTOINCREMENT,
    # PostgreSQL sequence); create_contexts deletes rows when a concurrent conflict aborts it.
    top = new.index
    registry_session.delete(new)
    registry_session.commit()
    after, _ = create_context(session=registry_session, key="k6", kind="binary")
    registry_session.commit()
    assert after.index > top


def test_retired_key_stops_answering_and_can_be_registered_again(
    registry_session: Session,
) -> None:
    old, _ = create_context(session=registry_session, key="a", kind="binary", seed=1)
    create_context(session=registry_session, key="b", kind="binary", seed=2)
    registry_session.commit()

    assert retire_context(session=registry_session, key="a") is True
    registry_session.commit()
    assert retire_context(session=registry_session, key="a") is False
    assert retire_context(session=registry_session, key="never") is False
    assert get_context(session=registry_session, key="a") is None
    assert old.retired_at is not None and old.retired_at.utcoffset() == timedelta(0)
    assert count_live_contexts(session=registry_session) == 1

    # A different seed is no conflict once the key is retired; the key gets a new index.
    new, created = create_context(session=registry_session, key="a", kind="binary", seed=99)
    registry_session.commit()
    assert created is True
    assert new.index > old.index
    assert new.seed == 99
    fetched = get_context(session=registry_session, key="a")
    assert fetched is not None and fetched.index == new.index

    rows = _all_rows(registry_session)
    assert [(row.key, row.seed, row.retired_at is None) for row in rows] == [
        ("a", 1, False),
        ("b", 2, True),
        ("a", 99, True),
    ]


def test_live_keys_maps_each_live_key_to_its_index(registry_session: Session) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="complex")[0] for i in range(4)
    ]
    retire_context(session=registry_session, key="k2")
    again, _ = create_context(session=registry_session, key="k2", kind="complex")
    registry_session.commit()

    assert sorted(live_keys(session=registry_session)) == [
        ("k0", rows[0].index),
        ("k1", rows[1].index),
        ("k2", again.index),
        ("k3", rows[3].index),
    ]
    assert again.index > rows[3].index


def test_retired_since_lists_only_retirements_from_that_time_on(
    registry_session: Session,
) -> None:
    rows = [
        create_context(session=registry_session, key=f"k{i}", kind="complex")[0] for i in range(3)
    ]
    retire_context(session=registry_session, key="k0")
    registry_session.commit()
    between = datetime.now(UTC)
    time.sleep(0.01)
    retire_context(session=registry_session, key="k1")
    registry_session.commit()

    assert retired_since(session=registry_session, since=between) == [("k1", rows[1].index)]
    assert sorted(retired_since(session=registry_session, since=between - timedelta(hours=1))) == [
        ("k0", rows[0].index),
        ("k1", rows[1].index),
    ]
    assert retired_since(session=registry_session, since=datetime.now(UTC)) == []


def test_list_contexts_pages_in_index_order_with_total(registry_session: Session) -> None:
    create_contexts(
        session=registry_session, kind="binary", items=[(f"k{i:02d}", i, None) for i in range(25)]
    )
    retire_context(session=registry_session, key="k00")
    retire_context(session=registry_session, key="k10")
    registry_session.commit()

    page, total = list_contexts(session=registry_session, limit=10, offset=0)
    assert total == 23
    assert [row.key for row in page] == [f"k{i:02d}" for i in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]]
    page, total = list_contexts(session=registry_session, limit=10, offset=20)
    assert total == 23
    assert [row.key for row in page] == ["k22", "k23", "k24"]
    assert list_contexts(session=registry_session, limit=0, offset=0) == ([], 23)
    assert list_contexts(session=registry_session, limit=10, offset=100) == ([], 23)
    with pytest.raises(ValueError, match="non-negative"):
        list_contexts(session=registry_session, limit=-1, offset=0)


# ------------------------------------------------------------------------------------------------
# create_contexts


def test_bulk_create_registers_10k_contexts_quickly(
    registry_session: Session, request: pytest.FixtureRequest
) -> None:
    items: list[tuple[str, int | None, float | None]] = [
        (f"tenant-{i:05d}", None, None) for i in range(MAX_BULK_CONTEXTS)
    ]
    started = time.perf_counter()
    results = create_contexts(session=registry_session, kind="complex", items=items)
    registry_session.commit()
    elapsed = time.perf_counter() - started
    print(f"\n{request.node.callspec.id}: registered {len(items)} contexts in {elapsed:.3f} s")

    assert elapsed < 10.0
    assert len(results) == MAX_BULK_CONTEXTS
    assert all(created for _, created in results)
    assert [row.key for row, _ in results] == [key for key, _, _ in items]
    assert len({row.index for row, _ in results}) == MAX_BULK_CONTEXTS
    assert len({row.seed for row, _ in results}) == MAX_BULK_CONTEXTS
    assert count_live_contexts(session=registry_session) == MAX_BULK_CONTEXTS

    # The same batch again is idempotent and returns the same rows.
    started = time.perf_counter()
    again = create_contexts(session=registry_session, kind="complex", items=items)
    elapsed = time.perf_counter() - started
    print(f"{request.node.callspec.id}: re-posted {len(items)} contexts in {elapsed:.3f} s")
    assert elapsed < 10.0
    assert not any(created for _, created in again)
    assert [row.index for row, _ in again] == [row.index for row, _ in results]
    assert count_live_contexts(session=registry_session) == MAX_BULK_CONTEXTS


def test_bulk_create_mixes_new_and_existing_keys(registry_session: Session) -> None:
    existing, _ = create_context(session=registry_session, key="old", kind="binary", seed=5)
    registry_session.commit()

    results = create_contexts(
        session=registry_session,
        kind="binary",
        items=[("new1", 11, None), ("old", None, None), ("new2", None, None), ("new1", 11, None)],
    )
    registry_session.commit()

    assert [(row.key, created) for row, created in results] == [
        ("new1", True),
        ("old", False),
        ("new2", True),
        ("new1", False),
    ]
    assert results[1][0].index == existing.index
    assert results[0][0].index == results[3][0].index
    assert results[0][0].seed == 11
    assert count_live_contexts(session=registry_session) == 3


def test_bulk_conflict_aborts_the_whole_batch(registry_session: Session) -> None:
    create_context(session=registry_session, key="old", kind="binary", seed=5)
    registry_session.commit()

    with pytest.raises(ContextConflict):
        create_contexts(
            session=registry_session,
            kind="binary",
            items=[("new1", None, None), ("old", 6, None), ("new2", None, None)],
        )
    registry_session.commit()
    assert [row.key for row in _all_rows(registry_session)] == ["old"]


def test_batch_that_loses_a_race_leaves_nothing_behind(
    registry_session_factory: sessionmaker[Session],
) -> None:
    def batch() -> str:
        with registry_session_factory() as session:
            try:
                create_contexts(
                    session=session,
                    kind="binary",
                    items=[("x", None, None), ("shared", 2, None), ("y", None, None)],
                )
            except ContextConflict:
                # Committing after the conflict must not persist any part of the batch.
                session.commit()
                return "conflict"
            session.commit()
            return "created"

    with registry_session_factory() as holder:
        create_context(session=holder, key="shared", kind="binary", seed=1)
        with ThreadPoolExecutor(1) as pool:
            outcome = pool.submit(batch)
            # The batch does not see the uncommitted row, inserts, and waits on its lock.
            time.sleep(0.5)
            holder.commit()
            assert outcome.result(timeout=30) == "conflict"

    with registry_session_factory() as session:
        assert [(row.key, row.seed) for row in _all_rows(session)] == [("shared", 1)]


def test_bulk_invalid_item_aborts_the_whole_batch(registry_session: Session) -> None:
    with pytest.raises(InvalidContextParameters):
        create_contexts(
            session=registry_session,
            kind="binary",
            items=[("new1", None, None), ("new2", None, 0.5)],
        )
    with pytest.raises(InvalidContextParameters, match="twice"):
        create_contexts(
            session=registry_session,
            kind="binary",
            items=[("dup", 1, None), ("dup", 2, None)],
        )
    registry_session.commit()
    assert _all_rows(registry_session) == []


def test_bulk_create_refuses_oversized_batches(registry_session: Session) -> None:
    items: list[tuple[str, int | None, float | None]] = [
        (f"k{i}", None, None) for i in range(MAX_BULK_CONTEXTS + 1)
    ]
    with pytest.raises(InvalidContextParameters, match="at most"):
        create_contexts(session=registry_session, kind="binary", items=items)
    assert create_contexts(session=registry_session, kind="binary", items=[]) == []


# ------------------------------------------------------------------------------------------------
# training counters


def test_add_training_counts_adds_to_the_counters(registry_session: Session) -> None:
    a, b, c = (
        create_context(session=registry_session, key=key, kind="complex")[0]
        for key in ("a", "b", "c")
    )
    registry_session.commit()

    add_training_counts(session=registry_session, counts={a.index: (10, 7), b.index: (5, 0)})
    add_training_counts(session=registry_session, counts={a.index: (3, 3), 10**12: (1, 1)})
    add_training_counts(session=registry_session, counts={})
    registry_session.commit()

    # Rows loaded before the update show the new values, not stale ones.
    assert (a.examples_seen, a.prequential_seen, a.prequential_correct) == (13, 13, 10)
    assert (b.examples_seen, b.prequential_seen, b.prequential_correct) == (5, 5, 0)
    assert (c.examples_seen, c.prequential_seen, c.prequential_correct) == (0, 0, 0)
    assert a.prequential_accuracy == pytest.approx(10 / 13)
    assert c.prequential_accuracy is None

    registry_session.expire_all()
    fresh = get_context(session=registry_session, key="a")
    assert fresh is not None
    assert (fresh.examples_seen, fresh.prequential_seen, fresh.prequential_correct) == (13, 13, 10)


def test_add_training_counts_refuses_impossible_counts(registry_session: Session) -> None:
    row, _ = create_context(session=registry_session, key="a", kind="complex")
    with pytest.raises(ValueError, match="correct <= examples"):
        add_training_counts(session=registry_session, counts={row.index: (2, 3)})
    with pytest.raises(ValueError, match="correct <= examples"):
        add_training_counts(session=registry_session, counts={row.index: (-1, 0)})
    registry_session.commit()
    registry_session.expire_all()
    assert registry_session.get(ContextRow, row.index).examples_seen == 0  # type: ignore[union-attr]


def test_concurrent_counter_updates_are_not_lost(
    registry_session_factory: sessionmaker[Session],
) -> None:
    with registry_session_factory() as session:
        row, _ = create_context(session=session, key="a", kind="complex")
        session.commit()
        index = row.index

    def job() -> None:
        for _ in range(10):
            with registry_session_factory() as session:
                add_training_counts(session=session, counts={index: (2, 1)})
                session.commit()

    _run_concurrently(4, job)
    with registry_session_factory() as session:
        fresh = session.get(ContextRow, index)
        assert fresh is not None
        assert (fresh.examples_seen, fresh.prequential_seen, fresh.prequential_correct) == (
            80,
            80,
            40,
        )


# ------------------------------------------------------------------------------------------------
# storage cost


def test_postgresql_row_costs_at_most_200_bytes(postgres_database_url: str) -> None:
    upgrade(postgres_database_url)
    engine = make_engine(postgres_database_url)
    rows = 20_000
    try:
        factory = make_session_factory(engine)
        with factory() as session:
            for start in range(0, rows, MAX_BULK_CONTEXTS):
                create_contexts(
                    session=session,
                    kind="complex",
                    items=[
                        (f"tenant-{i:08d}", None, None)
                        for i in range(start, min(start + MAX_BULK_CONTEXTS, rows))
                    ],
                )
            session.commit()
            assert count_live_contexts(session=session) == rows
            total = session.scalar(select(func.pg_total_relation_size(text("'contexts'"))))
            heap = session.scalar(select(func.pg_relation_size(text("'contexts'"))))
            assert total is not None and heap is not None
    finally:
        engine.dispose()
    per_row = total / rows
    print(
        f"\nPostgreSQL: {per_row:.1f} bytes per row incl. indexes "
        f"({heap / rows:.1f} heap, {(total - heap) / rows:.1f} indexes) for keys of 15 characters"
    )
    assert per_row <= 200


# ------------------------------------------------------------------------------------------------
# seeds and powers name one model each, for the life of the registry


def test_a_seed_of_another_live_context_is_refused_without_naming_it(
    registry_session: Session,
) -> None:
    create_context(session=registry_session, key="tenant-b:x", kind="binary", seed=777)
    registry_session.commit()
    with pytest.raises(ContextParameterTaken, match="seed 777") as caught:
        create_context(session=registry_session, key="tenant-a:y", kind="binary", seed=777)
    assert "tenant-b" not in str(caught.value)
    assert get_context(session=registry_session, key="tenant-a:y") is None


def test_a_deleted_contexts_seed_is_never_issued_again(registry_session: Session) -> None:
    create_context(session=registry_session, key="gone", kind="complex", seed=12)
    registry_session.commit()
    assert retire_context(session=registry_session, key="gone") is True
    registry_session.commit()
    for key in ("gone", "other"):
        with pytest.raises(ContextParameterTaken, match="seed 12"):
            create_context(session=registry_session, key=key, kind="complex", seed=12)


def test_one_seed_for_two_keys_of_a_batch_is_refused(registry_session: Session) -> None:
    with pytest.raises(InvalidContextParameters, match="same seed"):
        create_contexts(
            session=registry_session, kind="binary", items=[("a", 5, None), ("b", 5, None)]
        )
    assert _all_rows(registry_session) == []


def test_server_seeds_are_redrawn_until_unused(
    registry_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_context(session=registry_session, key="first", kind="binary", seed=99)
    registry_session.commit()
    draws = iter([99, 99, 5, 5, 6])  # used, used, new, drawn twice, new
    monkeypatch.setattr("service.registry.queries.secrets.randbits", lambda bits: next(draws))
    results = create_contexts(
        session=registry_session, kind="binary", items=[("a", None, None), ("b", None, None)]
    )
    assert sorted(row.seed for row, _ in results if row.seed is not None) == [5, 6]


def test_powers_closer_than_the_gap_are_refused(registry_session: Session) -> None:
    create_context(session=registry_session, key="one", kind="onepower", power=1.0)
    registry_session.commit()
    with pytest.raises(ContextParameterTaken, match="closer than 1"):
        create_context(session=registry_session, key="near", kind="onepower", power=1.5)
    with pytest.raises(InvalidContextParameters, match="closer than 1"):
        create_contexts(
            session=registry_session,
            kind="onepower",
            items=[("p", None, 4.0), ("q", None, 4.25)],
        )
    row, created = create_context(
        session=registry_session, key="near", kind="onepower", power=1.5, min_power_gap=0.5
    )
    assert created and row.power == 1.5
    far, _ = create_context(session=registry_session, key="auto", kind="onepower")
    assert far.power == 0.0
    nxt, _ = create_context(session=registry_session, key="auto2", kind="onepower")
    assert nxt.power == 3.0  # 2.0 lies within 1 of 1.5
