"""This process's map of every live key to its bank index: the cache predict resolves keys from.

Predict's latency then does not depend on the number of contexts or on a database round trip,
and known contexts keep answering while the database is unreachable. The map is loaded at
start-up and follows this process's own registrations and deletes at once; the keys that other
processes retire are unmapped as the registry is polled for them
(`service.contexts.service.ContextService.forget_retired`).
"""

from __future__ import annotations

from collections.abc import Iterable


class LiveKeys:
    """Key -> bank index of the live contexts this process knows of."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}

    def replace(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Maps exactly these `(key, index)` pairs, forgetting every other key."""
        self._index = dict(pairs)

    def get(self, key: str) -> int | None:
        return self._index.get(key)

    def add(self, pairs: Iterable[tuple[str, int]]) -> None:
        self._index.update(pairs)

    def discard(self, key: str) -> None:
        self._index.pop(key, None)

    def unmap_retired(self, retired: Iterable[tuple[str, int]]) -> int:
        """Unmaps each retired `(key, index)`; returns how many keys stopped answering.

        A key deleted and registered again maps to its new index, which is kept."""
        unmapped = 0
        for key, index in retired:
            if self._index.get(key) == index:
                del self._index[key]
                unmapped += 1
        return unmapped
