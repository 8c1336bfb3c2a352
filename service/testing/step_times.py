"""Test-only step watchers that note when each training step ran, installed through the
service's training hooks (`service.model.training_hooks`); nothing in the service imports it.

They live in the installed package because a training child builds its own watchers from the
factories pickled to it, and a child imports only installed modules, never the tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from psp_core.learner import OnlineLearner, StepResult


@dataclass(frozen=True)
class StepTimes:
    """A step watcher factory whose watchers append each step's start and end (monotonic
    nanoseconds, the same clock in every process of the machine) to `path`, one line a step."""

    path: Path

    def __call__(self) -> StepTimer:
        return StepTimer(self.path)

    def intervals(self) -> list[tuple[int, int]]:
        """The steps noted so far, as (start, end), in the order they started."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return sorted((int(start), int(end)) for start, end in map(str.split, lines))


class StepTimer:
    """Notes one host's steps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = 0

    def before_step(self, learner: OnlineLearner) -> None:
        self.started = time.monotonic_ns()

    def after_step(self, learner: OnlineLearner, result: StepResult) -> None:
        # One short write a step, appended: the lines of different threads never mix.
        line = f"{self.started} {time.monotonic_ns()}\n".encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)
