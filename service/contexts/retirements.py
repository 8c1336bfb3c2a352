"""Following the contexts that any process retires, by polling the registry.

Retirements carry the time they were made; each look reads those since the previous look, less an
overlap, so that none slips between two looks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.registry.store import RegistryStore

RETIREMENT_OVERLAP = timedelta(seconds=60)
"""How far back each poll for retirements reaches before the previous one. Another host's
clock may lag ours, and a retirement's time is set before its transaction commits; re-reading
a minute of retirements costs one small index scan and keeps a delete from slipping between
two polls."""


class RetirementWatermark:
    """How far the retirements have been read: each `read_new` reads those since the last one
    (less `RETIREMENT_OVERLAP`, so a retirement may be read twice, never missed)."""

    def __init__(self) -> None:
        self._checked = datetime.now(UTC)

    def restart(self) -> None:
        """Starts from now: what came before is known otherwise (a load of every live context)."""
        self._checked = datetime.now(UTC)

    async def read_new(self, registry: RegistryStore) -> list[tuple[str, int]]:
        """The `(key, index)` of every context retired since the last read; the mark moves
        only when `registry` answered.

        Raises:
            RegistryUnavailable: The database cannot be reached.
        """
        started = datetime.now(UTC)
        retired = await registry.retired_since(self._checked - RETIREMENT_OVERLAP)
        self._checked = started
        return retired
