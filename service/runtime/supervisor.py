"""Supervision of background tasks: a task that crashes is logged, counted and restarted.

Each supervised task is a coroutine function that runs until the process stops. When it raises,
the traceback is logged, `psp_background_restarts_total{task}` is incremented, and the task is
started again after a backoff that doubles up to a ceiling (and starts over once a run has
lasted longer than the ceiling). From the crash until the restarted task has run for
`settle_seconds`, the task counts as down, and `/readyz` names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from service import metrics

log = logging.getLogger(__name__)


class Supervisor:
    """Starts named background tasks and restarts them with backoff when they crash."""

    def __init__(
        self,
        *,
        first_backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        settle_seconds: float = 1.0,
    ) -> None:
        self.first_backoff = first_backoff_seconds
        self.max_backoff = max_backoff_seconds
        self.settle = settle_seconds
        # task name -> when it was last (re)started after a crash, or None while it waits
        self._recovering: dict[str, float | None] = {}

    def down(self) -> list[str]:
        """Names of tasks that crashed and have not yet run `settle_seconds` since."""
        now = time.monotonic()
        return sorted(
            name
            for name, restarted in self._recovering.items()
            if restarted is None or now - restarted < self.settle
        )

    def spawn(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        *,
        before_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[None]:
        """Starts `run` as a supervised task.

        Args:
            name: The task's name in logs, metrics and `/readyz`.
            run: Runs the task; returning means it is done for good.
            stop: Once set, a crashed task is not restarted.
            before_restart: Brings the task's state back to a known point before each restart
                (the trainer rewinds to its newest checkpoint); if it raises, that counts as
                another crash.
        """
        return asyncio.create_task(self._supervise(name, run, stop, before_restart), name=name)

    async def _supervise(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        before_restart: Callable[[], Awaitable[None]] | None,
    ) -> None:
        backoff = self.first_backoff
        restarting = False
        while True:
            started = time.monotonic()
            try:
                if restarting:
                    if before_restart is not None:
                        await before_restart()
                    self._recovering[name] = time.monotonic()
                await run()
                return
            except Exception:
                if time.monotonic() - started > self.max_backoff:
                    backoff = self.first_backoff
                log.exception("background task %s crashed; restarting in %.1f s", name, backoff)
                metrics.BACKGROUND_RESTARTS.labels(task=name).inc()
                self._recovering[name] = None
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            if stop.is_set():
                return
            backoff = min(backoff * 2, self.max_backoff)
            restarting = True
