"""RegistryStore: the async facade, and the exactly-once watermark of training counts."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import Engine

from service.registry.database import make_engine
from service.registry.errors import ContextParameterTaken
from service.registry.store import RegistryStore, RegistryUnavailable

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


async def test_commit_training_is_idempotent_per_watermark(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    b, _ = await store.create("b", None, None)
    counts = {a.index: (32, 10), b.index: (8, 8)}
    assert await store.commit_training(shard=0, last_entry_id="100-0", counts=counts) is True
    # The same checkpoint again (a restart after a crash) adds nothing.
    assert await store.commit_training(shard=0, last_entry_id="100-0", counts=counts) is False
    assert await store.commit_training(shard=0, last_entry_id="99-5", counts=counts) is False
    assert (
        await store.commit_training(shard=0, last_entry_id="100-1", counts={a.index: (1, 1)})
        is True
    )
    # Another shard has its own watermark.
    assert (
        await store.commit_training(shard=1, last_entry_id="50-0", counts={b.index: (2, 0)}) is True
    )
    row_a, row_b = await store.get("a"), await store.get("b")
    assert row_a is not None and row_b is not None
    assert (row_a.examples_seen, row_a.prequential_correct) == (33, 11)
    assert (row_b.examples_seen, row_b.prequential_correct) == (10, 8)
    assert row_a.prequential_accuracy == pytest.approx(11 / 33)


async def test_context_definitions_are_the_live_rows_in_index_order(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "binary")
    made = [("x", 5), ("y", 6), ("z", 7)]
    rows = [(await store.create(key, seed, None))[0] for key, seed in made]
    assert await store.retire("y") is True  # the models let a deleted context go
    definitions = await store.context_definitions()
    assert [(d.index, d.seed) for d in definitions] == [(rows[0].index, 5), (rows[2].index, 7)]
    assert await store.context_definitions(after_index=rows[0].index) == definitions[1:]
    assert await store.count_live() == 2


async def test_unreachable_database_raises_registry_unavailable(tmp_path) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    store = RegistryStore(engine, "complex")
    with pytest.raises(RegistryUnavailable):
        await store.get("a")
    assert await store.ping() is False
    engine.dispose()


async def test_refused_examples_are_counted_apart_from_examples_seen(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "complex")
    a, _ = await store.create("a", None, None)
    await store.commit_training(shard=0, last_entry_id="1-0", counts={a.index: (4, 2, 3)})
    row = await store.get("a")
    assert row is not None
    assert (row.examples_seen, row.prequential_seen, row.refused) == (4, 4, 3)


async def test_concurrent_registrations_racing_for_one_seed_have_one_winner(
    registry_engine: Engine,
) -> None:
    """Every request passes the seed check before any commits; the unique index decides."""
    store = RegistryStore(registry_engine, "binary")
    outcomes = await asyncio.gather(
        *(store.create(f"tenant-{i}", 4242, None) for i in range(8)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, tuple)]
    losers = [o for o in outcomes if isinstance(o, ContextParameterTaken)]
    assert len(winners) == 1 and len(losers) == 7
    assert winners[0][0].seed == 4242
    assert all("tenant-" not in str(loser) for loser in losers)
    assert await store.count_live() == 1


async def test_concurrent_identical_registrations_all_get_the_one_context(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "binary")
    outcomes = await asyncio.gather(*(store.create("same", 77, None) for _ in range(8)))
    assert sum(created for _, created in outcomes) == 1
    assert {row.index for row, _ in outcomes} == {outcomes[0][0].index}


async def test_concurrent_one_power_registrations_keep_the_gap(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "onepower", min_power_gap=1.0)
    outcomes = await asyncio.gather(
        *(store.create(f"p-{i}", None, 3.0 + i / 10) for i in range(6)), return_exceptions=True
    )
    assert sum(isinstance(o, tuple) for o in outcomes) == 1
    assert sum(isinstance(o, ContextParameterTaken) for o in outcomes) == 5


def test_the_store_loads_neither_the_model_nor_the_queue() -> None:
    """The registry sits below the model host and the queue, and beside psp_core, whose list of
    kinds it checks against: it loads neither the model host, the queue nor redis."""
    probe = (
        "import sys, service.registry.store; "
        "print(sorted(m for m in ('redis', 'service.model.host', 'service.queue') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "[]"
