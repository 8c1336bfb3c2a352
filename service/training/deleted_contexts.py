"""Forgetting deleted contexts in the writer: the learner's replay rows, input statistics and
bank rows of a deleted context, and then the same in every kept checkpoint."""

from __future__ import annotations

import asyncio
import logging
import time

from psp_core.checkpoint_scrub import forget_contexts_in
from service.checkpoints.store import CheckpointStore
from service.contexts.retirements import RetirementWatermark
from service.model.host import ModelHost
from service.registry.store import RegistryStore, RegistryUnavailable

log = logging.getLogger(__name__)


class DeletedContexts:
    """Keeps the learner and the kept checkpoints free of the contexts the registry deleted.

    Args:
        host: The model whose learner forgets.
        registry: Says which contexts are live and which were deleted when.
        store: The kept checkpoints to scrub.
        look_every: Seconds between two looks for newly deleted contexts.
    """

    def __init__(
        self, host: ModelHost, registry: RegistryStore, store: CheckpointStore, look_every: float
    ) -> None:
        self._host = host
        self._registry = registry
        self._store = store
        self._look_every = look_every
        self._retirements = RetirementWatermark()
        self._looked_at = time.monotonic()
        self._forgotten: set[int] = set()  # deleted contexts forgotten since start-up
        self._unscrubbed: set[int] = set()  # deleted contexts kept files may still hold

    @property
    def look_due(self) -> bool:
        return time.monotonic() - self._looked_at >= self._look_every

    @property
    def scrub_due(self) -> bool:
        """Whether kept checkpoint files may still hold a deleted context's rows."""
        return bool(self._unscrubbed)

    async def forget_not_live(self) -> None:
        """Forgets every context the learner remembers that is no longer live (after a load or
        a rollback: the registry, not a checkpoint, says which contexts are deleted)."""
        remembered = await asyncio.to_thread(self._host.remembered_contexts)
        if not remembered:
            return
        live = {index for _, index in await self._registry.live_keys()}
        deleted = remembered - live
        if deleted:
            await asyncio.to_thread(self._host.forget_contexts, deleted)
            self._unscrubbed |= deleted

    async def forget_retired(self) -> None:
        """Forgets the contexts deleted since the last look (any process may delete). Indices
        are never reused, so forgetting one twice is harmless. Should forgetting fail, the
        trainer's recovery reloads and `forget_not_live` catches up with every deletion."""
        self._looked_at = time.monotonic()
        try:
            retired = await self._retirements.read_new(self._registry)
        except RegistryUnavailable as err:
            log.warning("cannot check for deleted contexts, will retry: %s", err)
            return
        indices = {index for _, index in retired}
        # Marked before the learner forgets them: the mark has moved past these deletions, so
        # should forgetting fail (a step process that died), the kept files are still scrubbed
        # of them. The look-back overlaps the last one: only new deletions call for a scrub.
        self._unscrubbed |= indices - self._forgotten
        self._forgotten |= indices
        await asyncio.to_thread(self._host.forget_contexts, indices)

    async def scrub_kept_checkpoints(self) -> None:
        """Rewrites every kept checkpoint that still holds rows or input statistics of a
        deleted context, in place (same version, same weights). The learner forgot them
        first, so no later checkpoint holds them either. The caller makes sure no checkpoint
        is written or pruned meanwhile."""
        if not self._unscrubbed:
            return
        deleted = set(self._unscrubbed)
        for info in self._store.list():
            dropped = await asyncio.to_thread(forget_contexts_in, info.path, deleted)
            if dropped:
                log.info("removed %d rows of deleted contexts from %s", dropped, info.path.name)
        # Only once every kept file is scrubbed: a rewrite that failed (a full disk) is tried
        # again at the next checkpoint.
        self._unscrubbed -= deleted
