"""Code a process may add around its training: watchers of every step, and checks that run
before every checkpoint write.

A deployment installs nothing. The hooks are how code outside the service (a test's entry
point, a diagnostic) reaches the steps without the service knowing of it: the shard builds its
host's watchers from the installed hooks, and the trainer runs the checks before it writes.
Steps may run in a child process (`service.model.step_client`), so the hooks hold factories
that are pickled to the child, which builds its own watchers from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from psp_core.learner import OnlineLearner, StepResult


class StepWatcher(Protocol):
    """Code that runs around every training step: `before_step` before its passes, and
    `after_step` under the model lock with the update, so that no forward pass sees weights
    between the update and the watcher's verdict."""

    def before_step(self, learner: OnlineLearner) -> None: ...

    def after_step(self, learner: OnlineLearner, result: StepResult) -> None: ...


StepWatcherFactory = Callable[[], StepWatcher]
"""Builds one watcher for one host; picklable, since a training child builds its own."""


@dataclass(frozen=True)
class TrainingHooks:
    """What runs around training besides the service's own code.

    Attributes:
        step_watchers: Each builds one watcher for each host that steps.
        checkpoint_write_checks: Each runs before a checkpoint is written, and may raise to
            fail the write as the disk would.
    """

    step_watchers: tuple[StepWatcherFactory, ...] = ()
    checkpoint_write_checks: tuple[Callable[[], None], ...] = ()

    def new_step_watchers(self) -> list[StepWatcher]:
        return [make() for make in self.step_watchers]

    def check_checkpoint_write(self) -> None:
        for check in self.checkpoint_write_checks:
            check()


_installed = TrainingHooks()


def install_training_hooks(hooks: TrainingHooks) -> TrainingHooks:
    """Makes `hooks` those of this process from now on (for the shards built after this call
    and every checkpoint write); returns the hooks they replace."""
    global _installed
    previous, _installed = _installed, hooks
    return previous


def installed_training_hooks() -> TrainingHooks:
    """The hooks of this process: none unless something installed them."""
    return _installed
