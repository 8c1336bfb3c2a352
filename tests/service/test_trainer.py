"""The trainer on its own: what one tenant's entries can and cannot do to another's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.contexts import ContextService
from service.queue.base import TrainEntry
from service.registry.database import make_engine
from service.registry.migrate import upgrade
from service.registry.store import RegistryStore
from service.settings import Settings
from service.shard import Shard
from service.trainer import Trainer
from tests.service.api.helpers import sqlite_settings

WIDTH = 64


@dataclass
class Bench:
    """A trainer over one shard, on a SQLite registry, with the steps in a thread."""

    settings: Settings
    shard: Shard
    trainer: Trainer
    contexts: ContextService
    registry: RegistryStore

    async def index_of(self, key: str) -> int:
        row, _ = await self.contexts.register(key, None, None)
        return row.index

    async def enqueue(self, index: int, inputs: np.ndarray, labels: np.ndarray) -> str:
        entry = TrainEntry(index, inputs.astype(np.float32), labels.astype(np.int64), 0.0)
        return (await self.shard.queue.enqueue(entry)).entry_id


async def _bench(tmp_path: Path, **overrides: Any) -> Bench:
    settings = sqlite_settings(tmp_path, training={"steps_in": "thread"}, **overrides)
    upgrade(settings.resolved_database_url)
    registry = RegistryStore(make_engine(settings.resolved_database_url), settings.model.kind)
    shard = Shard.build(settings.for_shard(0))
    contexts = ContextService(registry, {0: shard.host})
    trainer = Trainer(
        host=shard.host,
        queue=shard.queue,
        applied=shard.applied,
        store=shard.store,
        registry=registry,
        settings=settings,
    )
    await trainer.recover()
    return Bench(settings, shard, trainer, contexts, registry)


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    built = await _bench(tmp_path)
    yield built
    await built.shard.close()
    built.registry.engine.dispose()


def _rows(n: int, value: float = 0.5) -> np.ndarray:
    return np.random.default_rng(n).random((n, WIDTH)) * value


async def test_a_poisoned_row_refuses_only_its_own_entry_in_a_shared_step(bench: Bench) -> None:
    victim, poisoner = await bench.index_of("b"), await bench.index_of("a")
    normal = await bench.enqueue(victim, _rows(64), np.arange(64) % 10)
    poison = await bench.enqueue(poisoner, np.full((1, WIDTH), 3e38), np.array([1]))
    entries = await bench.shard.queue.read(max_entries=64, block_ms=0)
    assert [e.entry_id for e in entries] == [normal, poison]  # read together: coalesced
    before = bench.shard.host.model_version

    await bench.trainer.apply(entries)

    assert await bench.shard.applied.refusal(normal) is None
    assert "not finite" in (await bench.shard.applied.refusal(poison) or "")
    assert bench.shard.host.model_version - before >= 2  # the 64 rows took their steps
    counts = bench.trainer._progress.counts
    assert counts[victim][0] == 64 and counts[victim][2] == 0  # seen, none refused
    assert counts[poisoner][0] == 0 and counts[poisoner][2] == 1


async def test_a_waiting_producer_hears_at_once_that_its_entry_was_set_aside(
    tmp_path: Path,
) -> None:
    bench = await _bench(tmp_path, faults={"nonfinite_steps": 1})  # the first step breaks
    stop = asyncio.Event()
    loop = asyncio.create_task(bench.trainer.run(stop))
    try:
        index = await bench.index_of("a")
        entry_id = await bench.enqueue(index, _rows(4), np.array([1, 2, 3, 4]))
        started = time.monotonic()
        await bench.shard.applied.wait(entry_id, timeout=10)
        waited = time.monotonic() - started
        reason = await bench.shard.applied.refusal(entry_id)
    finally:
        stop.set()
        await loop
        await bench.shard.close()
        bench.registry.engine.dispose()
    assert waited < 1.0
    assert reason is not None and "set this batch aside" in reason and "non-finite" in reason
