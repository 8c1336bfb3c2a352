"""How full the shards are, for the metrics: live contexts per shard and the capacity.

The registry counts them, so every serving process reports the same numbers; the alert
`PspShardNearCapacity` reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service import metrics
from service.registry.store import RegistryStore, RegistryUnavailable

log = logging.getLogger(__name__)


async def report_shard_load(
    registry: RegistryStore, every_seconds: float, stop: asyncio.Event
) -> None:
    """Sets the capacity gauges once and the live-context gauges every `every_seconds`, until
    `stop` is set; an unreachable registry only delays the next count."""
    capacity = registry.shards.capacity
    if capacity is not None:
        for shard in range(registry.shards.count):
            metrics.SHARD_CAPACITY.labels(str(shard)).set(capacity)
    while not stop.is_set():
        try:
            loads = await registry.live_per_shard()
        except RegistryUnavailable as err:
            log.warning("cannot count the live contexts of the shards, will retry: %s", err)
        else:
            for shard, live in enumerate(loads):
                metrics.SHARD_LIVE_CONTEXTS.labels(str(shard)).set(live)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)
