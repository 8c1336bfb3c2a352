"""The background work of one process: supervised tasks, the event that stops them, and what
to close once they have stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from service.runtime.poller import Poll
from service.runtime.supervisor import Supervisor


@dataclass
class Background:
    """Starts supervised tasks and polls, and stops them all, in order, at shutdown."""

    supervisor: Supervisor = field(default_factory=Supervisor)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def supervise(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        before_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Runs `run` as the supervised task `name` (see `Supervisor.spawn`)."""
        self._tasks.append(
            self.supervisor.spawn(name, run, self.stop, before_restart=before_restart)
        )

    def poll(self, poll: Poll) -> None:
        self._tasks.append(poll.spawn(self.supervisor, self.stop))

    def close_at_stop(self, *closers: Callable[[], Awaitable[None]]) -> None:
        """Calls `closers`, in order, once every task has stopped."""
        self._closers.extend(closers)

    async def stop_all(self) -> None:
        """Sets `stop`, waits for every task to return (a trainer drains its queue into a final
        checkpoint first), then closes."""
        self.stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for close in self._closers:
            await close()
