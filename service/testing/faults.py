"""Test-only fault injection, installed through the service's training hooks
(`service.model.training_hooks`); nothing in the service imports it.

Every field of `FaultSettings` is 0 by default, which injects nothing. Each one makes the first
N training steps of the process misbehave in one way, so a test can watch the service recover
without restarting it:

- `nonfinite_steps=N`: the step leaves NaN in the weights;
- `failing_steps=N`: the step raises `InjectedFault`;
- `huge_lr_steps=N`: the step runs at `huge_lr` (1e30), and the configured learning rate is
  back from step N + 1;
- `disk_full_while=<path>`: while that file exists, every checkpoint write fails as a full disk
  would (`OSError` ENOSPC), so a test can fill and free the disk at will.

In-process tests install them with `injected_faults`; real processes read them from
`PSP_FAULTS__*` in `service.testing.faulty_psp`, the `psp` command with faults.
"""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from psp_core.learner import OnlineLearner, StepResult
from service.model.training_hooks import TrainingHooks, install_training_hooks


class FaultSettings(BaseSettings):
    """How many of the first training steps misbehave, per kind of fault."""

    model_config = SettingsConfigDict(env_prefix="PSP_FAULTS__", extra="ignore")

    nonfinite_steps: int = Field(default=0, ge=0)
    failing_steps: int = Field(default=0, ge=0)
    huge_lr_steps: int = Field(default=0, ge=0)
    huge_lr: float = Field(default=1e30, gt=0)
    disk_full_while: Path | None = None

    @property
    def any_step_fault(self) -> bool:
        return bool(self.nonfinite_steps or self.failing_steps or self.huge_lr_steps)

    def check_checkpoint_write(self) -> None:
        """Raises the error of a full disk while `disk_full_while` exists."""
        if self.disk_full_while is not None and self.disk_full_while.exists():
            raise OSError(errno.ENOSPC, "No space left on device (injected)")


class InjectedFault(RuntimeError):
    """The failure `failing_steps` injects into a training step."""


class FaultInjector:
    """A step watcher that breaks the first steps as `FaultSettings` asks."""

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


def fault_hooks(settings: FaultSettings) -> TrainingHooks:
    """The training hooks that inject `settings`: each host that steps (a training child too)
    counts its own steps from its first, as a restarted process would."""
    watchers = (functools.partial(FaultInjector, settings),) if settings.any_step_fault else ()
    checks = (settings.check_checkpoint_write,) if settings.disk_full_while else ()
    return TrainingHooks(step_watchers=watchers, checkpoint_write_checks=checks)


@contextlib.contextmanager
def injected_faults(settings: FaultSettings) -> Iterator[None]:
    """Injects `settings` into the shards built and the checkpoints written in this process
    while the block runs."""
    previous = install_training_hooks(fault_hooks(settings))
    try:
        yield
    finally:
        install_training_hooks(previous)
