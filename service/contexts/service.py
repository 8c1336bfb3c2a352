"""Registering, finding and retiring contexts, and keeping the models' banks in step."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from service.contexts.definition import ContextDefinition
from service.contexts.live_keys import LiveKeys
from service.contexts.retirements import RetirementWatermark
from service.model.host import ModelHost
from service.registry.models import ContextRow
from service.registry.parameters import ContextItem
from service.registry.store import RegistryStore


class ContextNotFound(LookupError):
    """No live context has this key."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"no context has the key {key!r}; register it first with POST /contexts "
            f'{{"key": "{key}"}}'
        )


class ShardNotServed(LookupError):
    """The context belongs to a shard this process does not hold: another process was started
    with a higher `PSP_SHARDS__COUNT`."""

    def __init__(self, shard: int, held: int) -> None:
        super().__init__(
            f"the context belongs to shard {shard}, but this process serves shards 0 to "
            f"{held - 1}; start every process with PSP_SHARDS__COUNT={shard + 1} or more"
        )


class ContextService:
    """The registry, plus this process's map of every live key to its bank index
    (`LiveKeys`), and of every index to its shard.

    Keys registered through another process are looked up on first use. Keys deleted through
    another process are found by `forget_retired`, which the runtime polls every
    `PSP_REGISTRY_POLL_SECONDS`.

    `hosts[k]` is the model of shard k, for the shards this process holds; each holds only its
    own shard's contexts.
    """

    def __init__(self, registry: RegistryStore, hosts: Mapping[int, ModelHost]) -> None:
        self.registry = registry
        self.hosts = dict(hosts)
        self.live = LiveKeys()
        self._shard_of: dict[int, int] = {}
        self._retirements = RetirementWatermark()

    async def load_bank(self, *, map_keys: bool) -> None:
        """Puts every registered context into the model's bank (at start-up) and, in a process
        that answers predict (`map_keys`), maps the live keys."""
        self._retirements.restart()
        # Keys first: a context registered elsewhere in between then still gets its bank row,
        # since the definitions read second include every index the keys name.
        live = await self.registry.live_keys() if map_keys else []
        await self._add_to_bank(await self.registry.context_definitions())
        self.live.replace(live)

    async def _add_to_bank(self, definitions: Sequence[ContextDefinition]) -> None:
        """Adds each context to its shard's model, generating the vectors off the event loop
        so that predictions go on. Contexts of shards this process does not hold are left out."""
        by_shard: dict[int, list[ContextDefinition]] = {}
        for definition in definitions:
            self._shard_of[definition.index] = definition.shard
            if definition.shard in self.hosts:
                by_shard.setdefault(definition.shard, []).append(definition)
        for shard, held in by_shard.items():
            host = self.hosts[shard]
            if any(not host.has_context(d.index) for d in held):
                await asyncio.to_thread(host.add_contexts, held)

    def shard_of(self, index: int) -> int:
        """The shard of a context that `resolve` has answered.

        Raises:
            ShardNotServed: This process does not hold that shard.
        """
        shard = self._shard_of[index]
        if shard not in self.hosts:
            raise ShardNotServed(shard, len(self.hosts))
        return shard

    async def _remember(self, row: ContextRow) -> None:
        await self._add_to_bank([_definition(row)])
        self.live.add([(row.key, row.index)])

    async def register(
        self, key: str, seed: int | None, power: float | None
    ) -> tuple[ContextRow, bool]:
        row, created = await self.registry.create(key, seed, power)
        await self._remember(row)
        return row, created

    async def register_many(self, items: Sequence[ContextItem]) -> list[tuple[ContextRow, bool]]:
        results = await self.registry.create_many(items)
        await self._add_to_bank([_definition(row) for row, _ in results])
        self.live.add((row.key, row.index) for row, _ in results)
        return results

    async def get(self, key: str) -> ContextRow:
        row = await self.registry.get(key)
        if row is None:
            self.live.discard(key)
            raise ContextNotFound(key)
        await self._remember(row)
        return row

    async def page(
        self, limit: int, offset: int, key_prefix: str = ""
    ) -> tuple[list[ContextRow], int]:
        return await self.registry.page(limit, offset, key_prefix)

    async def delete(self, key: str) -> None:
        index = self.live.get(key)
        retired = await self.registry.retire(key)
        self.live.discard(key)
        if not retired:
            raise ContextNotFound(key)
        if index is not None:
            await self._forget([index])

    async def _forget(self, indices: Sequence[int]) -> None:
        """Lets the models of this process forget deleted contexts: their bank rows (and, in
        a writer, their replay rows and input statistics) go."""
        by_shard: dict[int, list[int]] = {}
        for index in indices:
            shard = self._shard_of.get(index)
            if shard in self.hosts:
                by_shard.setdefault(shard, []).append(index)
        for shard, mine in by_shard.items():
            await asyncio.to_thread(self.hosts[shard].forget_contexts, mine)

    async def resolve(self, key: str) -> int:
        """The bank index of a live key.

        Raises:
            ContextNotFound: No live context has the key.
            RegistryUnavailable: The key is not mapped here and the database is down.
        """
        index = self.live.get(key)
        if index is not None:
            return index
        return (await self.get(key)).index

    async def forget_retired(self) -> int:
        """Unmaps keys that another process deleted since the last call, and lets the models
        forget those contexts.

        Returns:
            How many keys stopped answering here.

        Raises:
            RegistryUnavailable: The database cannot be reached; the next call looks again.
        """
        retired = await self._retirements.read_new(self.registry)
        forgotten = self.live.unmap_retired(retired)
        await self._forget([index for _, index in retired])
        return forgotten


def _definition(row: ContextRow) -> ContextDefinition:
    return ContextDefinition(row.index, row.seed, row.power, row.shard)
