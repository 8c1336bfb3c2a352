"""Background polls: one coroutine run every N seconds until the process stops.

A failure the poll expects (the registry is unreachable) is logged, counted in
`psp_background_poll_failures_total{task}` and retried at the next tick, while what was read
last stays in force. Any other exception ends the poll; it runs under the runtime's
`Supervisor`, which logs and counts the crash and restarts the poll, and `/readyz` names it
meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service import metrics
from service.registry.store import RegistryUnavailable
from service.runtime.supervisor import Supervisor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Poll:
    """One background poll.

    Attributes:
        name: The task's name in logs, metrics and `/readyz`.
        once: Polls once.
        every_seconds: The wait between the end of one poll and the start of the next.
        doing: What a poll does, for the warning when it fails ("reread the stored API keys").
        at_start: Polls once at start; otherwise the first poll comes after the first wait
            (the caller has just read the same thing itself).
        expected: The failures that only delay the next poll.
    """

    name: str
    once: Callable[[], Awaitable[object]]
    every_seconds: float
    doing: str
    at_start: bool = False
    expected: tuple[type[Exception], ...] = (RegistryUnavailable,)

    async def run(self, stop: asyncio.Event) -> None:
        """Polls every `every_seconds` until `stop` is set."""
        if not self.at_start and await _stopped_within(stop, self.every_seconds):
            return
        while True:
            try:
                await self.once()
            except self.expected as err:
                log.warning("cannot %s, will retry: %s", self.doing, err)
                metrics.BACKGROUND_POLL_FAILURES.labels(task=self.name).inc()
            if await _stopped_within(stop, self.every_seconds):
                return

    def spawn(self, supervisor: Supervisor, stop: asyncio.Event) -> asyncio.Task[None]:
        """Starts the poll under `supervisor`, which restarts it whenever it crashes."""
        return supervisor.spawn(self.name, lambda: self.run(stop), stop)


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Waits up to `seconds` for `stop`; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
