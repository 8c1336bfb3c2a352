"""Supervised background tasks: restarted with backoff, counted, and reported while down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import REGISTRY

from service.runtime.supervisor import Supervisor


def _restarts(task: str) -> float:
    value = REGISTRY.get_sample_value("psp_background_restarts_total", {"task": task})
    return value or 0.0


async def _until(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Waits on the event loop, without blocking it, until `condition` holds."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"waited {seconds} s for {what}") from None


async def test_a_crashing_task_is_restarted_after_its_state_is_reset_and_reported_down() -> None:
    supervisor = Supervisor(
        first_backoff_seconds=0.01, max_backoff_seconds=0.05, settle_seconds=0.2
    )
    stop = asyncio.Event()
    runs: list[int] = []
    resets: list[int] = []
    before = _restarts("flaky")

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError("boom")
        await stop.wait()

    async def reset() -> None:
        resets.append(len(runs))

    task = supervisor.spawn("flaky", flaky, stop, before_restart=reset)
    while len(runs) < 3:
        await asyncio.sleep(0.01)
    assert supervisor.down() == ["flaky"]  # restarted, but not yet settled
    await _until(lambda: supervisor.down() == [], what="the task to settle")
    assert resets == [1, 2]
    assert _restarts("flaky") - before == 2
    stop.set()
    await asyncio.wait_for(task, 1)


async def test_a_task_that_crashes_after_stop_is_not_restarted() -> None:
    supervisor = Supervisor(first_backoff_seconds=0.01)
    stop = asyncio.Event()
    runs = 0

    async def crash_on_stop() -> None:
        nonlocal runs
        runs += 1
        stop.set()
        raise RuntimeError("stopping badly")

    await asyncio.wait_for(supervisor.spawn("once", crash_on_stop, stop), 1)
    assert runs == 1
