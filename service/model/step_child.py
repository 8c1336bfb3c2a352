"""The training child: the process that runs role `all`'s training steps on the CPU, apart from
the API process (`service.model.step_client` is its other end).

The child builds a host of its own over the weights in shared memory and answers commands on
two pipes: one for everything that changes the model (steps, the divergence guard, checkpoint
saves and restores), one for new and deleted contexts, answered by a thread of its own so that a
registration never waits for the training steps in flight. Children fork from a server that
has imported torch and this module once.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing  # registers how tensors are shared between processes

from psp_core.scaling import ScalerRows
from service.contexts.definition import ContextDefinition
from service.model.divergence import DivergenceGuard
from service.model.host import ModelHost, TrainRows
from service.model.state import SharedModelState
from service.model.training_hooks import StepWatcherFactory
from service.settings import GuardSettings, Settings


@functools.cache
def process_context() -> BaseContext:
    """Children fork from a server that has imported torch once, so each starts in a fraction
    of a second, and none inherits the API process's threads or event loop. torch imports
    `torch._dynamo` (a second) lazily on the first model built; the server imports it too."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "torch._dynamo"])
    return context


def start_fork_server() -> None:
    """Starts the fork server now, so that its imports (torch, this package: seconds) run on
    another core while this process imports the app and migrates the registry; the first
    child then forks from a server that is ready, or nearly. Without this call the first child
    starts it."""
    process_context()
    multiprocessing.forkserver.ensure_running()


def serve(
    steps: Connection,
    contexts: Connection,
    settings: Settings,
    parameters: dict[str, torch.Tensor],
    state: SharedModelState,
    step_watchers: Sequence[StepWatcherFactory] = (),
) -> None:
    """The child's loop: builds its own host over the shared weights (with a watcher from each
    of `step_watchers`) and answers the commands of `steps` until told to stop or until the
    API process is gone; a thread answers `contexts` meanwhile (the host adds contexts safely
    beside a step)."""
    # Ctrl-C and a signal to the process group are the API process's to handle: it drains
    # the queue into a final checkpoint through this child, then stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(settings.resolved_torch_threads)
    if settings.training.deterministic:
        torch.use_deterministic_algorithms(True)
    host = _child_host(settings, parameters, state)
    host.step_watchers.extend(make() for make in step_watchers)
    commands = StepCommands(host)
    gc.freeze()  # what lives as long as the child stays out of every collection (service.app)
    threading.Thread(target=_answer, args=(contexts, commands), daemon=True).start()
    _answer(steps, commands)


def _answer(connection: Connection, commands: StepCommands) -> None:
    """Answers the commands that arrive on `connection` until "stop" or the end of the pipe."""
    while True:
        try:
            command, args = connection.recv()
        except EOFError:
            return
        if command == "stop":
            return
        try:
            answer: tuple[str, Any] = ("ok", getattr(commands, command)(*args))
        except Exception as err:  # every failure goes back to the caller, which decides
            answer = ("error", err)
        try:
            connection.send(answer)
        except Exception as err:  # an exception that cannot be pickled still gets through
            connection.send(("error", RuntimeError(f"{type(err).__name__}: {answer[1]}")))


def _child_host(
    settings: Settings, parameters: dict[str, torch.Tensor], state: SharedModelState
) -> ModelHost:
    host = ModelHost(
        settings.model.to_config(),
        settings.training.to_config(settings.replay),
        torch.device("cpu"),
        replay_rows=settings.replay.rows,
        shard=settings.queue.shard,
        state=state,
    )
    with torch.no_grad():
        for name, parameter in host.learner.model.named_parameters():
            parameter.data = parameters[name]
    host.learner.model_version = state.version
    return host


class StepCommands:
    """What the API process may ask of the child; each answer is plain data."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def add_contexts(self, definitions: list[ContextDefinition]) -> None:
        self.host.add_contexts(definitions)

    def train_steps(
        self, batches: list[TrainRows]
    ) -> tuple[list[tuple[bool, float, np.ndarray, int, int, np.ndarray]], ScalerRows | None]:
        """Each step's result, and the input statistics of the contexts trained."""
        answers = []
        for batch in batches:
            result = self.host.train_step(batch)
            answers.append(
                (
                    result.applied,
                    result.loss,
                    result.correct.numpy(),
                    result.model_version,
                    self.host.replay_size,
                    result.bounded,
                )
            )
        trained = np.concatenate([batch.indices for batch in batches]) if batches else None
        return answers, self._scaling(trained)

    def _scaling(self, indices: np.ndarray | None) -> ScalerRows | None:
        """The input statistics of these contexts (all of them when None)."""
        scaler = self.host.learner.scaler
        return None if scaler is None else scaler.rows(indices)

    def watch_divergence(self, settings: GuardSettings) -> None:
        """Sets the guard; asked twice (a child started by this very call gets the guard as it
        starts, then the call itself arrives), the child still keeps one."""
        watchers = self.host.step_watchers
        watchers[:] = [w for w in watchers if not isinstance(w, DivergenceGuard)]
        watchers.append(DivergenceGuard(settings, self.host.state))

    def remembered_contexts(self) -> set[int]:
        return self.host.remembered_contexts()

    def forget_contexts(self, indices: set[int]) -> tuple[int, int]:
        return self.host.forget_contexts(indices), self.host.replay_size

    def bank_rows(self) -> int:
        return self.host.bank_size

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        self.host.save(path, metadata)

    def load(
        self, path: Path, version: int | None = None
    ) -> tuple[dict[str, str], ScalerRows | None]:
        return self.host.load(path, version), self._scaling(None)

    def restore_as(self, path: Path, version: int) -> tuple[dict[str, str], ScalerRows | None]:
        return self.host.restore_as(path, version), self._scaling(None)
