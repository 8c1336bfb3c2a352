"""What a serving process follows in the registry, every `PSP_REGISTRY_POLL_SECONDS`.

- Retired contexts: keys that other processes delete stop answering here
  (`ContextService.forget_retired`).
- Stored API keys: `psp keys create` and `psp keys revoke` change the registry only, so a
  revocation takes effect on every replica within one poll, without a restart.
- Shard load: live contexts per shard, for the gauges behind the alert
  `PspShardNearCapacity`; the registry counts them, so every process reports the same numbers.
"""

from __future__ import annotations

from service import metrics
from service.api.auth import Authenticator
from service.contexts.service import ContextService
from service.registry.store import RegistryStore
from service.runtime.poller import Poll


def retired_contexts_poll(contexts: ContextService, every_seconds: float) -> Poll:
    return Poll(
        "registry-poller", contexts.forget_retired, every_seconds, "check for deleted contexts"
    )


async def load_stored_keys(registry: RegistryStore, authenticator: Authenticator) -> None:
    """Reads the valid stored keys into `authenticator`; once any key has been stored,
    authentication stays on."""
    stored = await registry.stored_api_keys()
    authenticator.use_stored(stored.valid, ever_created=stored.ever_created)


def stored_keys_poll(
    registry: RegistryStore, authenticator: Authenticator, every_seconds: float
) -> Poll:
    """Rereads the stored keys after each wait (the runtime reads them once at start-up); while
    the database is unreachable the keys last read stay in force."""
    return Poll(
        "key-follower",
        lambda: load_stored_keys(registry, authenticator),
        every_seconds,
        "reread the stored API keys",
    )


def report_shard_capacity(registry: RegistryStore) -> None:
    """Sets the capacity gauge of every shard, when the shards have a capacity."""
    capacity = registry.shards.capacity
    if capacity is not None:
        for shard in range(registry.shards.count):
            metrics.SHARD_CAPACITY.labels(str(shard)).set(capacity)


async def report_shard_load(registry: RegistryStore) -> None:
    """Sets the live-context gauge of every shard."""
    for shard, live in enumerate(await registry.live_per_shard()):
        metrics.SHARD_LIVE_CONTEXTS.labels(str(shard)).set(live)


def shard_load_poll(registry: RegistryStore, every_seconds: float) -> Poll:
    return Poll(
        "shard-load",
        lambda: report_shard_load(registry),
        every_seconds,
        "count the live contexts of the shards",
        at_start=True,
    )
