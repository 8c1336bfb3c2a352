"""What a serving process follows in the registry: deletes made elsewhere, and the shards' load."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine

from service.contexts.service import ContextNotFound, ContextService
from service.registry.shards import ShardPlan
from service.registry.store import RegistryStore
from service.runtime.registry_polls import (
    report_shard_capacity,
    retired_contexts_poll,
    shard_load_poll,
)
from tests.service.contexts.serving_process import serving_process

# Retirements and live counts are read from the registry: every test runs on SQLite and PostgreSQL.
pytestmark = pytest.mark.both_databases


async def _answers(contexts: ContextService, key: str) -> bool:
    try:
        await contexts.resolve(key)
    except ContextNotFound:
        return False
    return True


async def test_a_key_deleted_elsewhere_stops_answering_within_a_poll(
    registry_engine: Engine,
) -> None:
    writer, reader = serving_process(registry_engine), serving_process(registry_engine)
    await writer.load_bank(map_keys=True)
    await writer.register("tenant", None, None)
    await reader.load_bank(map_keys=True)
    stop = asyncio.Event()
    polling = asyncio.create_task(retired_contexts_poll(reader, 0.02).run(stop))
    await writer.delete("tenant")

    async def unmapped() -> None:
        while await _answers(reader, "tenant"):
            await asyncio.sleep(0.01)  # the poll runs every 0.02 s; look again

    await asyncio.wait_for(unmapped(), 5)
    stop.set()
    await asyncio.wait_for(polling, 5)
    assert not await _answers(reader, "tenant")


@pytest.mark.parametrize("capacity", [None, 5])
async def test_the_shard_gauges_follow_the_registry(
    registry_engine: Engine, capacity: int | None
) -> None:
    registry = RegistryStore(registry_engine, "complex", shards=ShardPlan(2, capacity))
    contexts = ContextService(registry, {})
    await contexts.register_many([(f"k{i}", None, None) for i in range(3)])
    stop = asyncio.Event()
    report_shard_capacity(registry)
    polling = asyncio.create_task(shard_load_poll(registry, 60).run(stop))

    def gauge(name: str, shard: int) -> float | None:
        return REGISTRY.get_sample_value(name, {"shard": str(shard)})

    async def counted() -> None:
        while gauge("psp_shard_live_contexts", 1) != 1.0:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(counted(), 5)
    stop.set()
    await asyncio.wait_for(polling, 5)
    assert (gauge("psp_shard_live_contexts", 0), gauge("psp_shard_live_contexts", 1)) == (2, 1)
    if capacity is not None:
        assert gauge("psp_shard_capacity", 1) == capacity
