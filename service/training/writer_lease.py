"""The lease a shard's writer holds while it runs, renewed in the background.

A writer claims its shard before it loads a checkpoint (`claim`, waiting for a lapsed holder
up to `PSP_WRITER__WAIT_SECONDS`), renews the claim every third of `PSP_WRITER__LEASE_SECONDS`
(`keep`), and checks it before every checkpoint (`check`):

- a renewal the registry refuses means a newer writer claimed the shard: this one is fenced,
  stops training for good and makes its process exit with status 2 (`lost_lease_message`);
- while the registry cannot be reached the lease runs on its last renewal; once that lapses,
  checkpoints wait (`LeaseLapsed`, a store outage to the trainer) until a renewal succeeds.

The registry's token (`service.registry.writers`) fences the writes themselves, so even a
writer that has not yet noticed it was replaced changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service.registry.store import RegistryStore, RegistryUnavailable
from service.registry.writers import WriterTaken, this_process
from service.settings import WriterSettings
from service.training.fencing import WriterFenced

log = logging.getLogger(__name__)

_lost: list[str] = []  # why this process lost a lease, once it has
_stop_process: list[Callable[[], None]] = []


def stop_process_when_fenced(stop: Callable[[], None]) -> None:
    """Makes a lost lease call `stop`, which ends this whole process (the `psp` commands stop
    their server; an app run inside another program, such as a test, only stops writing)."""
    _stop_process.append(stop)


def lost_lease_message() -> str | None:
    """Why this process stopped writing, if a newer writer fenced it out."""
    return _lost[0] if _lost else None


class LeaseLapsed(Exception):
    """The lease could not be renewed in time (the registry is unreachable): no checkpoint
    until it is."""


class WriterLease:
    """Shard `shard`'s writer lease, for this process."""

    def __init__(self, registry: RegistryStore, shard: int, settings: WriterSettings) -> None:
        self.registry = registry
        self.shard = shard
        self.settings = settings
        self.owner = this_process()
        self.token = 0
        self.fenced: str | None = None
        self._valid_until = 0.0  # monotonic

    async def claim(self) -> int:
        """Claims the shard, waiting up to `wait_seconds` for another holder's lease to lapse.

        Raises:
            WriterTaken: Another live process still holds it.
        """
        deadline = time.monotonic() + self.settings.wait_seconds
        while True:
            started = time.monotonic()
            try:
                self.token = await self.registry.claim_writer(
                    self.shard, self.owner, self.settings.lease_seconds
                )
            except WriterTaken as taken:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s; waiting for its lease to lapse", taken)
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                continue
            self._valid_until = started + self.settings.lease_seconds
            log.info("shard %d: writer lease claimed with token %d", self.shard, self.token)
            return self.token

    def raise_if_fenced(self) -> None:
        """Raises `WriterFenced` once a newer writer holds the shard."""
        if self.fenced is not None:
            raise WriterFenced(self.fenced)

    def check(self) -> None:
        """Raises unless this writer may write now.

        Raises:
            WriterFenced: A newer writer holds the shard.
            LeaseLapsed: The lease could not be renewed in time.
        """
        self.raise_if_fenced()
        if time.monotonic() >= self._valid_until:
            raise LeaseLapsed(
                f"shard {self.shard}'s writer lease lapsed: the registry did not answer its "
                "renewals; checkpoints wait until it does"
            )

    async def keep(self, stop: asyncio.Event) -> None:
        """Renews the lease every third of its length until `stop`, or until fenced."""
        every = self.settings.lease_seconds / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                await self.registry.renew_writer(
                    self.shard, self.token, self.settings.lease_seconds
                )
            except RegistryUnavailable as err:
                log.warning(
                    "shard %d: cannot renew the writer lease, retrying: %s", self.shard, err
                )
                continue
            except WriterFenced as err:
                self.lose(str(err))
                return
            self._valid_until = started + self.settings.lease_seconds

    def lose(self, why: str) -> None:
        """Stops this writer for good: nothing more is written, and the process exits with
        status 2 (the command reads `lost_lease_message`)."""
        if self.fenced is not None:
            return
        self.fenced = why
        message = f"shard {self.shard}: this writer was replaced and stops writing: {why}"
        log.error(message)
        _lost.append(message)
        for stop in _stop_process:
            stop()  # the server shuts down; the command then exits 2

    async def release(self) -> None:
        """Lets the next writer in at once (a clean stop)."""
        if self.fenced is not None:
            return
        with contextlib.suppress(RegistryUnavailable):
            await self.registry.release_writer(self.shard, self.token)
