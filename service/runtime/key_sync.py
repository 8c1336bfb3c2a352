"""Keeps a serving process's API keys in step with the keys stored in the registry.

`psp keys create` and `psp keys revoke` change the registry only; every API process rereads the
valid keys every `PSP_REGISTRY_POLL_SECONDS`, so a revocation takes effect on every replica
within that time, without a restart. The follower runs under the runtime's supervisor: a crash
is restarted, and `/readyz` names it (`key-follower`) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from service.api.auth import Authenticator
from service.registry.store import RegistryStore, RegistryUnavailable

log = logging.getLogger(__name__)


async def load_stored_keys(registry: RegistryStore, authenticator: Authenticator) -> None:
    """Reads the valid stored keys into `authenticator` once; once any key has been stored,
    authentication stays on."""
    stored = await registry.stored_api_keys()
    authenticator.use_stored(stored.valid, ever_created=stored.ever_created)


async def follow_stored_keys(
    registry: RegistryStore, authenticator: Authenticator, every_seconds: float, stop: asyncio.Event
) -> None:
    """Rereads the stored keys every `every_seconds` until `stop` is set; while the database is
    unreachable the keys last read stay in force."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_seconds)
        if stop.is_set():
            return
        try:
            await load_stored_keys(registry, authenticator)
        except RegistryUnavailable as err:
            log.warning("cannot reread the stored API keys, will retry: %s", err)
