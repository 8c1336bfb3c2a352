"""Registering, finding and retiring contexts, and keeping the model's bank in step."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from service.contexts.definition import ContextDefinition
from service.model.host import ModelHost
from service.registry.models import ContextRow
from service.registry.parameters import ContextItem
from service.registry.store import RegistryStore, RegistryUnavailable

log = logging.getLogger(__name__)

RETIREMENT_OVERLAP = timedelta(seconds=60)
"""How far back each poll for retirements reaches before the previous one. Another host's
clock may lag ours, and a retirement's time is set before its transaction commits; re-reading
a minute of retirements costs one small index scan and keeps a delete from slipping between
two polls."""


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
    """The registry, plus this process's map of every live key to its bank index, and of
    every index to its shard.

    Predict resolves keys from the map, so its latency does not depend on the number of
    contexts or on a database round trip, and it keeps answering for known contexts while the
    database is unreachable. The map is loaded at start-up and follows this process's own
    registrations and deletes at once. Keys registered through another process are looked up
    on first use. Keys deleted through another process are found by `forget_retired`, which
    the runtime calls every `PSP_REGISTRY_POLL_SECONDS`.

    `hosts[k]` is the model of shard k, for the shards this process holds; each holds only its
    own shard's contexts.
    """

    def __init__(self, registry: RegistryStore, hosts: Mapping[int, ModelHost]) -> None:
        self.registry = registry
        self.hosts = dict(hosts)
        self._live: dict[str, int] = {}
        self._shard_of: dict[int, int] = {}
        self._retirements_checked = datetime.now(UTC)

    async def load_bank(self, *, map_keys: bool) -> None:
        """Puts every registered context into the model's bank (at start-up) and, in a process
        that answers predict (`map_keys`), maps the live keys."""
        self._retirements_checked = datetime.now(UTC)
        # Keys first: a context registered elsewhere in between then still gets its bank row,
        # since the definitions read second include every index the keys name.
        live = dict(await self.registry.live_keys()) if map_keys else {}
        await self._add_to_bank(await self.registry.context_definitions())
        self._live = live

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
        self._live[row.key] = row.index

    async def register(
        self, key: str, seed: int | None, power: float | None
    ) -> tuple[ContextRow, bool]:
        row, created = await self.registry.create(key, seed, power)
        await self._remember(row)
        return row, created

    async def register_many(self, items: Sequence[ContextItem]) -> list[tuple[ContextRow, bool]]:
        results = await self.registry.create_many(items)
        await self._add_to_bank([_definition(row) for row, _ in results])
        self._live.update({row.key: row.index for row, _ in results})
        return results

    async def get(self, key: str) -> ContextRow:
        row = await self.registry.get(key)
        if row is None:
            self._live.pop(key, None)
            raise ContextNotFound(key)
        await self._remember(row)
        return row

    async def page(
        self, limit: int, offset: int, key_prefix: str = ""
    ) -> tuple[list[ContextRow], int]:
        return await self.registry.page(limit, offset, key_prefix)

    async def delete(self, key: str) -> None:
        index = self._live.get(key)
        retired = await self.registry.retire(key)
        self._live.pop(key, None)
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
        index = self._live.get(key)
        if index is not None:
            return index
        return (await self.get(key)).index

    async def forget_retired(self) -> int:
        """Unmaps keys that another process deleted since the last call.

        Returns:
            How many keys stopped answering here.
        """
        started = datetime.now(UTC)
        since = self._retirements_checked - RETIREMENT_OVERLAP
        forgotten = 0
        retired = await self.registry.retired_since(since)
        for key, index in retired:
            # A key deleted and registered again maps to its new index: keep that one.
            if self._live.get(key) == index:
                del self._live[key]
                forgotten += 1
        await self._forget([index for _, index in retired])
        self._retirements_checked = started
        return forgotten

    async def poll_retirements(self, every_seconds: float, stop: asyncio.Event) -> None:
        """Calls `forget_retired` every `every_seconds` until `stop` is set; an unreachable
        database only delays the next look."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_seconds)
            if stop.is_set():
                return
            try:
                await self.forget_retired()
            except RegistryUnavailable as err:
                log.warning("cannot check for deleted contexts, will retry: %s", err)


def _definition(row: ContextRow) -> ContextDefinition:
    return ContextDefinition(row.index, row.seed, row.power, row.shard)
