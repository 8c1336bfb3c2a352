"""Registering, finding and retiring contexts, and keeping the model's bank in step."""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.model_host import ContextDefinition, ModelHost
from service.registry.models import ContextRow
from service.registry.queries import ContextItem
from service.registry.store import RegistryStore, RegistryUnavailable


class ContextNotFound(LookupError):
    """No live context has this key."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"no context has the key {key!r}; register it first with POST /contexts "
            f'{{"key": "{key}"}}'
        )


class ContextService:
    """The registry plus a short-lived key -> index cache that predict can fall back on.

    The cache is what lets predict keep answering for known contexts while the database is
    unreachable; entries are re-checked after `cache_seconds` so that a delete made by another
    process takes effect.
    """

    def __init__(self, registry: RegistryStore, host: ModelHost, cache_seconds: float) -> None:
        self.registry = registry
        self.host = host
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[int, float]] = {}

    async def load_bank(self) -> None:
        """Puts every registered context into the model's bank (at start-up)."""
        self.host.add_contexts(await self.registry.context_definitions())

    def _remember(self, row: ContextRow) -> None:
        self.host.add_contexts([ContextDefinition(row.index, row.seed, row.power)])
        self._cache[row.key] = (row.index, time.monotonic())

    async def register(
        self, key: str, seed: int | None, power: float | None
    ) -> tuple[ContextRow, bool]:
        row, created = await self.registry.create(key, seed, power)
        self._remember(row)
        return row, created

    async def register_many(self, items: Sequence[ContextItem]) -> list[tuple[ContextRow, bool]]:
        results = await self.registry.create_many(items)
        self.host.add_contexts(
            ContextDefinition(row.index, row.seed, row.power) for row, _ in results
        )
        now = time.monotonic()
        self._cache.update({row.key: (row.index, now) for row, _ in results})
        return results

    async def get(self, key: str) -> ContextRow:
        row = await self.registry.get(key)
        if row is None:
            self._cache.pop(key, None)
            raise ContextNotFound(key)
        self._remember(row)
        return row

    async def page(
        self, limit: int, offset: int, key_prefix: str = ""
    ) -> tuple[list[ContextRow], int]:
        return await self.registry.page(limit, offset, key_prefix)

    async def delete(self, key: str) -> None:
        if not await self.registry.retire(key):
            raise ContextNotFound(key)
        self._cache.pop(key, None)

    async def resolve(self, key: str) -> int:
        """The registry index of a live key, from the cache while it is fresh.

        Raises:
            ContextNotFound: No live context has the key.
            RegistryUnavailable: The database is down and the key is not cached.
        """
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            return (await self.get(key)).index
        except RegistryUnavailable:
            if cached:
                return cached[0]
            raise
