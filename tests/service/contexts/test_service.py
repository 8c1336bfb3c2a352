"""ContextService: every live key resolved from memory, and deletes made elsewhere followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from service.app import create_app
from service.contexts.service import ContextNotFound
from service.model.step_client import ChildStepHost
from service.registry.database import make_engine
from service.registry.models import ContextRow
from service.registry.store import RegistryStore, RegistryUnavailable
from service.testing.processes import wait_until
from tests.service.api.helpers import register, rows, sqlite_settings
from tests.service.contexts.serving_process import serving_process

# Lookups and retirements are read from the registry: every test runs on SQLite and PostgreSQL.
pytestmark = pytest.mark.both_databases


class _CountingStore(RegistryStore):
    """A registry store that counts single-key lookups."""

    lookups = 0

    async def get(self, key: str) -> ContextRow | None:
        self.lookups += 1
        return await super().get(key)


async def test_known_keys_resolve_without_the_database(registry_engine: Engine) -> None:
    writer = serving_process(registry_engine)
    await writer.load_bank(map_keys=True)
    rows = await writer.register_many([(f"k{i}", None, None) for i in range(50)])

    reader = serving_process(registry_engine)
    reader.registry = store = _CountingStore(registry_engine, "complex")
    await reader.load_bank(map_keys=True)  # start-up maps every live key

    resolved = [await reader.resolve(f"k{i}") for i in range(50)]
    assert resolved == [row.index for row, _ in rows]
    assert store.lookups == 0
    assert reader.hosts[0].context_count == 50


async def test_a_key_registered_elsewhere_is_looked_up_once(registry_engine: Engine) -> None:
    reader = serving_process(registry_engine)
    reader.registry = store = _CountingStore(registry_engine, "complex")
    await reader.load_bank(map_keys=True)
    writer = serving_process(registry_engine)
    await writer.load_bank(map_keys=True)
    row, _ = await writer.register("late", None, None)

    assert [await reader.resolve("late") for _ in range(3)] == [row.index] * 3
    assert store.lookups == 1
    # The model's bank holds the context's row too, so the key can be predicted at once.
    assert reader.hosts[0].bank_rows([row.index]).tolist() == [0]


async def test_a_delete_elsewhere_takes_effect_at_the_next_poll(registry_engine: Engine) -> None:
    writer, reader = serving_process(registry_engine), serving_process(registry_engine)
    await writer.load_bank(map_keys=True)
    first, _ = await writer.register("tenant", None, None)
    await writer.register("other", None, None)
    await reader.load_bank(map_keys=True)
    assert await reader.resolve("tenant") == first.index

    await writer.delete("tenant")
    assert await reader.resolve("tenant") == first.index  # until the reader polls
    assert await reader.forget_retired() == 1
    with pytest.raises(ContextNotFound):
        await reader.resolve("tenant")
    assert await reader.resolve("other") > first.index

    # Registered again elsewhere, the key answers with its new index; later polls, which
    # re-read the last minute of retirements, do not unmap it.
    again, _ = await writer.register("tenant", None, None)
    assert await reader.resolve("tenant") == again.index != first.index
    assert await reader.forget_retired() == 0
    assert await reader.resolve("tenant") == again.index


async def test_a_local_delete_answers_not_found_at_once(registry_engine: Engine) -> None:
    service = serving_process(registry_engine)
    await service.load_bank(map_keys=True)
    await service.register("gone", None, None)
    await service.delete("gone")
    with pytest.raises(ContextNotFound):
        await service.resolve("gone")
    with pytest.raises(ContextNotFound):
        await service.delete("gone")


async def test_known_keys_answer_while_the_database_is_down(registry_engine: Engine) -> None:
    service = serving_process(registry_engine)
    await service.load_bank(map_keys=True)
    row, _ = await service.register("known", None, None)
    service.registry = RegistryStore(
        make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing"), "complex"
    )
    assert await service.resolve("known") == row.index
    with pytest.raises(RegistryUnavailable):
        await service.resolve("unknown")
    with pytest.raises(RegistryUnavailable):
        await service.forget_retired()
    service.registry.engine.dispose()


async def test_a_worker_loads_the_bank_without_mapping_keys(registry_engine: Engine) -> None:
    writer = serving_process(registry_engine)
    await writer.load_bank(map_keys=True)
    row, _ = await writer.register("tenant", None, None)

    worker = serving_process(registry_engine)
    worker.registry = store = _CountingStore(registry_engine, "complex")
    await worker.load_bank(map_keys=False)
    assert worker.hosts[0].bank_rows([row.index]).tolist() == [0]
    assert await worker.resolve("tenant") == row.index
    assert store.lookups == 1


@pytest.mark.parametrize("steps_in", ["thread", "child_process"])
def test_register_and_delete_cycles_keep_the_bank_within_the_live_contexts(
    tmp_path: Path, steps_in: str
) -> None:
    settings = sqlite_settings(
        tmp_path,
        shards={"count": 1, "capacity": 4},
        training={"steps_in": steps_in},
        registry_poll_seconds=0.2,
    )
    with TestClient(create_app(settings)) as client:
        register(client, "stays")
        for cycle in range(40):
            register(client, f"churn-{cycle}")
            assert client.delete(f"/contexts/churn-{cycle}").status_code == 204
        assert client.get("/model").json()["bank_rows"] <= 4
        # The writer forgets them too, and a new context still learns and answers.
        shard = client.app.state.runtime.shards[0]  # type: ignore[attr-defined]
        wait_until(lambda: _writer_bank_rows(client, shard) <= 4, 10, what="writer's bank")
        register(client, "new")
        applied = client.post(
            "/train/new?wait=true", json={"inputs": rows(4), "labels": [1, 2, 3, 4]}
        )
        assert applied.status_code == 200 and applied.json()["applied"]
        assert client.post("/predict/new", json={"inputs": rows(1)}).status_code == 200
        assert client.post("/predict/churn-3", json={"inputs": rows(1)}).status_code == 404


def _writer_bank_rows(client: TestClient, shard: Any) -> int:
    """The rows of the bank of the model that trains: the child's, or the one host's."""
    host = shard.host
    if isinstance(host, ChildStepHost):
        return int(host.child_bank_rows())
    return len(host.learner.model.bank)
