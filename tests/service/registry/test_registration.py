"""Registering contexts: new rows, the live row of a key again, conflicts and races, batches."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from psp_core.kinds import CONTEXT_KINDS, kind_class
from service.registry.errors import ContextConflict, InvalidContextParameters
from service.registry.parameters import MAX_BULK_CONTEXTS
from service.registry.queries import count_live_contexts, get_context
from service.registry.registration import create_context, create_contexts
from tests.service.registry.helpers import all_rows, run_concurrently

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


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


def test_concurrent_creates_of_one_key_make_one_row(
    registry_session_factory: sessionmaker[Session],
) -> None:
    def job() -> tuple[int, bool, int | None]:
        with registry_session_factory() as session:
            row, created = create_context(session=session, key="shared", kind="complex")
            session.commit()
            return row.index, created, row.seed

    results = run_concurrently(8, job)
    assert sum(created for _, created, _ in results) == 1
    assert len({index for index, _, _ in results}) == 1
    assert len({seed for _, _, seed in results}) == 1
    with registry_session_factory() as session:
        assert count_live_contexts(session=session) == 1
        assert len(all_rows(session)) == 1


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

    results = run_concurrently(8, job)
    winners = [result for result in results if result != "conflict"]
    assert len(winners) == 1
    with registry_session_factory() as session:
        row = get_context(session=session, key="shared")
        assert row is not None and row.seed == winners[0]
        assert len(all_rows(session)) == 1


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
    assert [row.key for row in all_rows(registry_session)] == ["old"]


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
        assert [(row.key, row.seed) for row in all_rows(session)] == [("shared", 1)]


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
    assert all_rows(registry_session) == []
