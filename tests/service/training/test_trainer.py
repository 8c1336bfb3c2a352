"""The trainer on its own: what one tenant's entries can and cannot do to another's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from psp_bench.tenants import TenantsStream
from service.contexts.service import ContextService
from service.queue.base import TrainEntry
from service.registry.database import make_engine
from service.registry.migrate import upgrade
from service.registry.store import RegistryStore, RegistryUnavailable
from service.runtime.shard import ShardParts
from service.settings import Settings
from service.testing.faults import FaultSettings, injected_faults
from service.training.trainer import Trainer
from tests.service.api.helpers import sqlite_settings

WIDTH = 64


@dataclass
class Bench:
    """A trainer over one shard, on a SQLite registry, with the steps in a thread."""

    settings: Settings
    shard: ShardParts
    trainer: Trainer
    contexts: ContextService
    registry: RegistryStore

    async def index_of(self, key: str) -> int:
        row, _ = await self.contexts.register(key, None, None)
        return row.index

    async def enqueue(self, index: int, inputs: np.ndarray, labels: np.ndarray) -> str:
        entry = TrainEntry(index, inputs.astype(np.float32), labels.astype(np.int64), 0.0)
        return (await self.shard.queue.enqueue(entry)).entry_id


@pytest.fixture
def first_step_nonfinite() -> Iterator[None]:
    """The first training step of the test leaves NaN in the weights."""
    with injected_faults(FaultSettings(nonfinite_steps=1)):
        yield


@pytest.fixture
def disk_full_flag(tmp_path: Path) -> Iterator[Path]:
    """While this file exists, every checkpoint write of the test fails as on a full disk."""
    flag = tmp_path / "disk-full"
    with injected_faults(FaultSettings(disk_full_while=flag)):
        yield flag


async def _bench(
    tmp_path: Path, registry_type: type[RegistryStore] = RegistryStore, **overrides: Any
) -> Bench:
    tmp_path.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"training": {"steps_in": "thread"}, **overrides}
    settings = sqlite_settings(tmp_path, **values)
    upgrade(settings.resolved_database_url)
    registry = registry_type(make_engine(settings.resolved_database_url), settings.model.kind)
    shard = ShardParts.build(settings.for_shard(0))
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


def _rows(n: int, value: float = 0.5) -> np.ndarray:
    return np.random.default_rng(n).random((n, WIDTH)) * value


UNSCALED = {"kind": "complex", "input_shape": [WIDTH], "hidden": [32], "input_scaling": "none"}


async def test_a_poisoned_row_refuses_only_its_own_entry_in_a_shared_step(
    tmp_path: Path,
) -> None:
    # Without input scaling, a row of 3e38 makes its step's loss non-finite.
    bench = await _bench(tmp_path, model=UNSCALED)
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
    counts = bench.trainer.ledger.progress.counts
    assert counts[victim][0] == 64 and counts[victim][2] == 0  # seen, none refused
    assert counts[poisoner][0] == 0 and counts[poisoner][2] == 1
    await bench.shard.close()
    bench.registry.engine.dispose()


@pytest.mark.usefixtures("first_step_nonfinite")
async def test_a_waiting_producer_hears_at_once_that_its_entry_was_set_aside(
    tmp_path: Path,
) -> None:
    bench = await _bench(tmp_path)
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


async def _victims_accuracy(bench: Bench, *, attacker_scale: float | None) -> list[float]:
    """Six tenants learn label-permuted digits from interleaved blocks of 50 rows, read eight
    entries at a time as the trainer's loop reads them; with `attacker_scale`, a seventh tenant
    sends as many rows as all of them together, multiplied by that much, with random labels."""
    stream = TenantsStream(tenants=7, rows_per_tenant=600, block_rows=50, seed=3)
    indices = [await bench.index_of(f"tenant-{t}") for t in range(7)]
    rng = np.random.default_rng(0)
    blocks = []
    for position in range(len(stream)):
        tenant, x, y = stream.block(position)
        if tenant < 6:
            blocks.append((indices[tenant], x.numpy(), y.numpy()))
            if attacker_scale is not None:  # one attacker block for every victim block
                noise = stream.block(position)[1].numpy()[::-1] * attacker_scale
                blocks.append((indices[6], noise, rng.integers(0, 10, len(noise))))
    for start in range(0, len(blocks), 8):
        for index, x, y in blocks[start : start + 8]:
            await bench.enqueue(index, x, y)
        await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
    accuracies = []
    for tenant in range(6):
        x, y = stream.test_set(tenant)
        chosen = np.full(len(y), indices[tenant], dtype=np.int64)
        probabilities, _ = bench.shard.host.predict(x.numpy(), chosen)
        accuracies.append(float((probabilities.argmax(1) == y.numpy()).mean()))
    return accuracies


async def test_a_tenant_with_inputs_a_million_times_larger_costs_the_others_nothing(
    tmp_path: Path,
) -> None:
    model = {"kind": "complex", "input_shape": [WIDTH], "hidden": [64]}
    training = {"steps_in": "thread", "lr": 0.002}
    clean = await _bench(tmp_path / "clean", model=model, training=training)
    attacked = await _bench(tmp_path / "attacked", model=model, training=training)
    try:
        alone = await _victims_accuracy(clean, attacker_scale=None)
        beside = await _victims_accuracy(attacked, attacker_scale=1e6)
    finally:
        for bench in (clean, attacked):
            await bench.shard.close()
            bench.registry.engine.dispose()
    assert np.mean(alone) > 0.8
    assert np.mean(beside) >= np.mean(alone) - 0.03
    assert min(beside) >= min(alone) - 0.05


async def test_rows_far_from_their_context_are_bounded_counted_and_their_context_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bench = await _bench(tmp_path)
    try:
        index = await bench.index_of("acme-1")
        await bench.enqueue(index, _rows(64), np.arange(64) % 10)
        await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
        before = REGISTRY.get_sample_value("psp_trainer_bounded_rows_total", {"shard": "0"}) or 0
        far = np.full((4, WIDTH), 1000.0) * np.arange(1, WIDTH + 1) / WIDTH
        await bench.enqueue(index, far, np.array([1, 2, 3, 4]))
        await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
        after = REGISTRY.get_sample_value("psp_trainer_bounded_rows_total", {"shard": "0"}) or 0
        bench.trainer.noisy.every_seconds = 0
        with caplog.at_level(logging.WARNING, logger="service.training.noisy_contexts"):
            await bench.trainer.noisy.report_if_due()
    finally:
        await bench.shard.close()
        bench.registry.engine.dispose()
    assert after - before == 4
    assert "'acme-1' (4 bounded, 0 refused)" in caplog.text


async def test_a_checkpoint_that_fails_to_write_acknowledges_and_counts_nothing(
    tmp_path: Path,
) -> None:
    bench = await _bench(tmp_path)
    try:
        index = await bench.index_of("a")
        entry_id = await bench.enqueue(index, _rows(8), np.arange(8) % 10)
        await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
        real_save = bench.shard.host.save

        def disk_full(path: Path, metadata: dict[str, str]) -> None:
            raise OSError(28, "No space left on device")

        bench.shard.host.save = disk_full  # type: ignore[method-assign]
        for _ in range(2):  # the writer tries again later, and fails again: nothing settles
            with pytest.raises(OSError):
                await bench.trainer.checkpoint()
        assert [p.entry_id for p in await bench.shard.queue.pending()] == [entry_id]
        assert (await bench.registry.get("a")).examples_seen == 0  # type: ignore[union-attr]
        bench.shard.host.save = real_save  # type: ignore[method-assign]
        await bench.trainer.checkpoint()
        assert await bench.shard.queue.pending() == []
        assert (await bench.registry.get("a")).examples_seen == 8  # type: ignore[union-attr]
    finally:
        await bench.shard.close()
        bench.registry.engine.dispose()


class _LostAnswers(RegistryStore):
    """A registry whose first `commit_training` commits, then fails as a lost answer would."""

    lose_next = True

    async def commit_training(self, **arguments: Any) -> bool:
        added = await super().commit_training(**arguments)
        if self.lose_next:
            self.lose_next = False
            raise RegistryUnavailable("the connection dropped before the answer came")
        return added


async def test_counts_whose_commit_answer_was_lost_are_never_added_twice(tmp_path: Path) -> None:
    bench = await _bench(tmp_path, registry_type=_LostAnswers)
    try:
        index = await bench.index_of("a")
        for size in (8, 5):
            await bench.enqueue(index, _rows(size), np.arange(size) % 10)
            await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
            await bench.trainer.checkpoint()  # the first commit's answer is lost
        row = await bench.registry.get("a")
        assert row is not None and row.examples_seen == 13
    finally:
        await bench.shard.close()
        bench.registry.engine.dispose()


@pytest.mark.usefixtures("first_step_nonfinite")
async def test_a_divergence_while_draining_at_shutdown_loses_no_accepted_entry(
    tmp_path: Path,
) -> None:
    bench = await _bench(tmp_path)
    try:
        index = await bench.index_of("a")
        for _ in range(2):
            await bench.enqueue(index, _rows(4), np.array([1, 2, 3, 4]))
        stop = asyncio.Event()
        stop.set()  # stopping already: the queue is only drained, into a final checkpoint
        await bench.trainer.run(stop)
        row = await bench.registry.get("a")
        assert row is not None and row.examples_seen == 8
        assert await bench.shard.queue.pending() == []
    finally:
        await bench.shard.close()
        bench.registry.engine.dispose()


async def test_an_injected_full_disk_fails_checkpoints_while_its_file_exists(
    tmp_path: Path, disk_full_flag: Path
) -> None:
    flag = disk_full_flag
    bench = await _bench(tmp_path)
    try:
        index = await bench.index_of("a")
        await bench.enqueue(index, _rows(4), np.array([1, 2, 3, 4]))
        await bench.trainer.apply(await bench.shard.queue.read(max_entries=64, block_ms=0))
        flag.touch()
        with pytest.raises(OSError, match="No space left on device"):
            await bench.trainer.checkpoint()
        flag.unlink()
        await bench.trainer.checkpoint()
        assert (await bench.registry.get("a")).examples_seen == 4  # type: ignore[union-attr]
    finally:
        await bench.shard.close()
        bench.registry.engine.dispose()
