"""The writer lease: one writer per shard, each newer writer fencing out the older ones."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from service.registry import database
from service.registry.store import RegistryStore
from service.registry.writers import WriterTaken, this_process
from service.training.fencing import WriterFenced

# The registry is the subject here: every test runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_databases


async def test_a_second_owner_is_refused_while_the_lease_runs(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    first = await store.claim_writer(0, "host-a:1", lease_seconds=30)
    with pytest.raises(WriterTaken) as taken:
        await store.claim_writer(0, "host-b:2", lease_seconds=30)
    assert taken.value.holder.owner == "host-a:1"
    assert "shard 0 already has a writer: host-a:1 holds it until" in str(taken.value)
    assert "psp worker --shard N" in str(taken.value)
    assert await store.claim_writer(1, "host-b:2", lease_seconds=30) == 1  # its own shard
    assert await store.claim_writer(0, "host-a:1", lease_seconds=30) == first + 1  # itself again


async def test_a_lapsed_lease_passes_on_and_fences_the_old_writer(registry_engine: Engine) -> None:
    store = RegistryStore(registry_engine, "complex")
    context, _ = await store.create("a", None, None)
    old = await store.claim_writer(0, "host-a:1", lease_seconds=0.2)
    await asyncio.sleep(0.3)
    new = await store.claim_writer(0, "host-b:2", lease_seconds=30)
    assert new == old + 1
    counts = {context.index: (5, 2)}
    with pytest.raises(WriterFenced, match=f"token {old} is stale, host-b:2 holds token {new}"):
        await store.commit_training(shard=0, last_entry_id="9-0", counts=counts, writer_token=old)
    with pytest.raises(WriterFenced):
        await store.renew_writer(0, old, lease_seconds=30)
    assert await store.commit_training(
        shard=0, last_entry_id="9-0", counts=counts, writer_token=new
    )
    row = await store.get("a")
    assert row is not None and row.examples_seen == 5  # the stale writer's counts never landed


async def test_a_released_lease_or_a_dead_local_holder_lets_the_next_writer_in_at_once(
    registry_engine: Engine,
) -> None:
    store = RegistryStore(registry_engine, "complex")
    token = await store.claim_writer(0, "host-a:1", lease_seconds=30)
    await store.release_writer(0, token)
    assert await store.claim_writer(0, "host-b:2", lease_seconds=30) == token + 1
    # A process of this host that no longer runs holds shard 1.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    host = this_process().rpartition(":")[0]
    await store.claim_writer(1, f"{host}:{gone}", lease_seconds=30)
    assert await store.claim_writer(1, this_process(), lease_seconds=30) == 2


async def test_a_writer_frozen_inside_a_transaction_does_not_block_its_successor(
    migrated_postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stopped (SIGSTOP, a frozen VM) in the middle of a renewal keeps its row lock;
    PostgreSQL ends a session idle inside a transaction, so the successor's claim goes on."""

    monkeypatch.setattr(database, "POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S", 1)
    frozen_engine = database.make_engine(migrated_postgres_database_url)
    successor_engine = database.make_engine(migrated_postgres_database_url)
    try:
        store = RegistryStore(frozen_engine, "complex")
        await store.claim_writer(0, "host-a:1", lease_seconds=0.2)
        frozen = frozen_engine.connect()
        frozen.begin()
        frozen.execute(text("SELECT * FROM trainer_state WHERE shard = 0 FOR UPDATE"))
        await asyncio.sleep(0.3)  # the frozen writer's lease lapses
        successor = RegistryStore(successor_engine, "complex")
        token = await asyncio.wait_for(
            successor.claim_writer(0, "host-b:2", lease_seconds=30), timeout=10
        )
        assert token == 2
        # The server ended the frozen writer's session: it learns so at its next statement.
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
            frozen.execute(text("SELECT 1"))
        frozen.close()
    finally:
        frozen_engine.dispose()
        successor_engine.dispose()
