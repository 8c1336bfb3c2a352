"""Background polls: every tick until stopped; a registry outage only delays the next poll; any
other failure is the supervisor's to restart."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from service.registry.store import RegistryUnavailable
from service.runtime.poller import Poll
from service.runtime.supervisor import Supervisor


def _count(metric: str, task: str) -> float:
    return REGISTRY.get_sample_value(metric, {"task": task}) or 0.0


class Polls:
    """A poll's body that fails as told, and lets a test wait for the nth call."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.calls = 0
        self.succeeded = 0
        self._failures = list(failures or [])
        self._changed = asyncio.Condition()

    async def once(self) -> None:
        async with self._changed:
            self.calls += 1
            self._changed.notify_all()
        if self._failures:
            raise self._failures.pop(0)
        self.succeeded += 1

    async def wait_for_calls(self, calls: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.calls >= calls), 5)


async def test_a_poll_runs_every_tick_and_returns_once_stopped() -> None:
    polls, stop = Polls(), asyncio.Event()
    task = asyncio.create_task(Poll("ticks", polls.once, 0.01, "tick").run(stop))
    await polls.wait_for_calls(3)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert polls.succeeded == polls.calls >= 3


async def test_the_first_poll_waits_a_tick_unless_asked_to_start_at_once() -> None:
    late, early, stop = Polls(), Polls(), asyncio.Event()
    waits = asyncio.create_task(Poll("late", late.once, 60, "tick").run(stop))
    starts = asyncio.create_task(Poll("early", early.once, 60, "tick", at_start=True).run(stop))
    await early.wait_for_calls(1)
    stop.set()
    await asyncio.wait_for(asyncio.gather(waits, starts), 5)
    assert (late.calls, early.calls) == (0, 1)


async def test_an_unreachable_registry_is_logged_counted_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = [RegistryUnavailable("connection refused")] * 2
    polls, stop = Polls(outage), asyncio.Event()
    before = _count("psp_background_poll_failures_total", "outage")
    task = asyncio.create_task(Poll("outage", polls.once, 0.01, "read the keys").run(stop))
    await polls.wait_for_calls(3)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert polls.succeeded >= 1
    assert _count("psp_background_poll_failures_total", "outage") - before == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings.count("cannot read the keys, will retry: connection refused") == 2


async def test_any_other_failure_crashes_the_poll_for_the_supervisor_to_restart() -> None:
    polls, stop = Polls([RuntimeError("a bug")]), asyncio.Event()
    supervisor = Supervisor(first_backoff_seconds=0.01)
    restarts = _count("psp_background_restarts_total", "buggy")
    failures = _count("psp_background_poll_failures_total", "buggy")
    task = Poll("buggy", polls.once, 0.01, "tick", at_start=True).spawn(supervisor, stop)
    await polls.wait_for_calls(2)
    stop.set()
    await asyncio.wait_for(task, 5)

    assert polls.succeeded >= 1
    assert _count("psp_background_restarts_total", "buggy") - restarts == 1
    assert _count("psp_background_poll_failures_total", "buggy") == failures
