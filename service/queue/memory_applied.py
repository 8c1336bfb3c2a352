"""In-process applied notices, for the embedded queue: producers and the trainer share a process."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from service.entry_ids import entry_id_key
from service.queue.applied import REFUSALS_KEPT_SECONDS, AppliedNotices


class InProcessAppliedNotices(AppliedNotices):
    """The newest applied id with its version, and the recent refusals, kept in memory."""

    def __init__(self) -> None:
        self._applied: tuple[tuple[int, int], int] = ((0, 0), 0)
        self._changed = asyncio.Condition()
        # Refused entry id -> (reason, when).
        self._refusals: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def publish(
        self,
        entry_ids: Sequence[str],
        model_version: int,
        refused: Mapping[str, str] | None = None,
    ) -> None:
        if not entry_ids:
            return
        now = time.monotonic()
        self._refusals.update(
            (entry_id, (reason, now)) for entry_id, reason in (refused or {}).items()
        )
        while (
            self._refusals and next(iter(self._refusals.values()))[1] < now - REFUSALS_KEPT_SECONDS
        ):
            self._refusals.popitem(last=False)
        newest = max(entry_id_key(i) for i in entry_ids)
        async with self._changed:
            if newest > self._applied[0]:  # the version goes with the newest applied id
                self._applied = (newest, model_version)
            self._changed.notify_all()

    async def refusal(self, entry_id: str) -> str | None:
        known = self._refusals.get(entry_id)
        return known[0] if known else None

    async def wait(self, entry_id: str, timeout: float) -> int:
        wanted = entry_id_key(entry_id)
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self._applied[0] >= wanted), timeout
            )
            return self._applied[1]

    async def close(self) -> None:
        return None
