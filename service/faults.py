"""Test-only fault injection, for the fault tests that run real `psp` processes.

Every field of `PSP_FAULTS__*` is 0 by default, which injects nothing; a deployment never sets
them. Each one makes the first N training steps of the process misbehave in one way, so a test
can watch the service recover without restarting it:

- `PSP_FAULTS__NONFINITE_STEPS=N`: the step leaves NaN in the weights;
- `PSP_FAULTS__FAILING_STEPS=N`: the step raises `InjectedFault`;
- `PSP_FAULTS__HUGE_LR_STEPS=N`: the step runs at `PSP_FAULTS__HUGE_LR` (1e30), and the
  configured learning rate is back from step N + 1;
- `PSP_FAULTS__DISK_FULL_WHILE=<path>`: while that file exists, every checkpoint write fails
  as a full disk would (`OSError` ENOSPC), so a test can fill and free the disk at will.
"""

from __future__ import annotations

import errno
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from psp_core.learner import OnlineLearner, StepResult


class FaultSettings(BaseModel):
    """How many of the first training steps misbehave, per kind of fault (tests only)."""

    nonfinite_steps: int = Field(default=0, ge=0)
    failing_steps: int = Field(default=0, ge=0)
    huge_lr_steps: int = Field(default=0, ge=0)
    huge_lr: float = Field(default=1e30, gt=0)
    disk_full_while: Path | None = None

    @property
    def any(self) -> bool:
        return bool(self.nonfinite_steps or self.failing_steps or self.huge_lr_steps)

    def check_checkpoint_write(self) -> None:
        """Raises the error of a full disk while `disk_full_while` exists."""
        if self.disk_full_while is not None and self.disk_full_while.exists():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


class InjectedFault(RuntimeError):
    """The failure `PSP_FAULTS__FAILING_STEPS` injects into a training step."""


class FaultInjector:
    """A `StepWatcher` of the host that breaks the first steps as `FaultSettings` asks."""

    def __init__(self, settings: FaultSettings) -> None:
        self.settings = settings
        self.steps = 0

    def before_step(self, learner: OnlineLearner) -> None:
        self.steps += 1
        if self.steps <= self.settings.failing_steps:
            raise InjectedFault(f"fault injected into training step {self.steps}")
        if self.settings.huge_lr_steps:
            huge = self.steps <= self.settings.huge_lr_steps
            for group in learner.optimizer.param_groups:
                group["lr"] = self.settings.huge_lr if huge else learner.config.lr

    def after_step(self, learner: OnlineLearner, result: StepResult) -> None:
        if self.steps <= self.settings.nonfinite_steps:
            with torch.no_grad():
                next(learner.model.parameters()).fill_(float("nan"))
