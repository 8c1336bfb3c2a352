"""The training child: the process that runs role `all`'s training steps on the CPU, apart from
the API process (`service.model.step_client` is its other end). One child serves every shard
of its API process (`service.model.step_process`).

For each shard (a seat) the child builds a host of its own over that shard's weights in shared
memory and answers commands on the seat's two pipes: one for everything that changes the model
(steps, the divergence guard, checkpoint saves and restores), one for new and deleted contexts.
Each pipe is answered by a thread of its own. The commands of the first kind run one at a time
across the shards, so torch's threads work on one step at a time instead of fighting for the
cores; a registration never waits for the training steps in flight. Children fork from a
server that has imported torch and this module once.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import multiprocessing.forkserver
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Seat:
    """One shard the child serves: its pipes, and what its host is built over.

    Attributes:
        steps: Everything that changes the model, one command at a time.
        contexts: New and deleted contexts, answered beside the steps.
        parameters: The shard's weights in shared memory, by name.
        step_watchers: Each builds one watcher for the shard's host.
    """

    steps: Connection
    contexts: Connection
    settings: Settings
    parameters: dict[str, torch.Tensor]
    state: SharedModelState
    step_watchers: Sequence[StepWatcherFactory] = ()


def serve(seats: Sequence[Seat]) -> None:
    """The child's loop: builds a host per seat over the shard's shared weights (with a
    watcher from each of its `step_watchers`) and answers each seat's pipes on threads of
    their own, until every seat's steps pipe is told to stop or the API process is gone."""
    # Ctrl-C and a signal to the process group are the API process's to handle: it drains
    # the queues into final checkpoints through this child, then stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = seats[0].settings  # the process-wide settings are those of every shard
    torch.set_num_threads(settings.resolved_torch_threads)
    if settings.training.deterministic:
        torch.use_deterministic_algorithms(True)
    served = []
    for seat in seats:
        host = _child_host(seat.settings, seat.parameters, seat.state)
        host.step_watchers.extend(make() for make in seat.step_watchers)
        served.append((seat, StepCommands(host)))
    gc.freeze()  # what lives as long as the child stays out of every collection (service.app)
    # One step, save or restore at a time, whichever the shard: each uses every torch thread.
    one_at_a_time = threading.Lock()
    beside_the_steps = contextlib.nullcontext()  # contexts never wait for a step
    steps_threads = []
    for seat, commands in served:
        threading.Thread(
            target=_answer, args=(seat.contexts, commands, beside_the_steps), daemon=True
        ).start()
        steps_threads.append(
            threading.Thread(
                target=_answer, args=(seat.steps, commands, one_at_a_time), daemon=True
            )
        )
    for thread in steps_threads:
        thread.start()
    for thread in steps_threads:
        thread.join()


def _answer(
    connection: Connection, commands: StepCommands, turn: contextlib.AbstractContextManager[Any]
) -> None:
    """Answers the commands that arrive on `connection`, each while holding `turn`, until
    "stop" or the end of the pipe."""
    while True:
        try:
            command, args = connection.recv()
        except EOFError:
            return
        if command == "stop":
            return
        try:
            with turn:
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
