"""Training steps in a child process of their own, for role `all` on the CPU.

In one process the HTTP work and the training steps take turns on one interpreter lock: while
clients posted, the trainer applied a third of what the bare loop learns. With
`PSP_TRAINING__STEPS_IN=child_process` (the default) the API process keeps the trainer's
bookkeeping (the queue, checkpoint metadata, the registry, applied notices) and a child process
does the torch work: the steps with their rehearsal, divergence guard and fault injection, the
optimiser state and the replay buffer, and checkpoint saves and restores. The weights live in
shared memory, so a prediction in the API process reads what the last step wrote, under the
same cross-process lock (`service.model.state`); the version and the health flag are shared too.
New contexts reach the child over a second pipe, answered by a thread of its own, so that a
registration never waits for the training steps in flight.

A child that dies is started again at the next call, knowing the same contexts, and the call
that found it dead raises `StepProcessDied`: the weights it was writing are marked unhealthy,
and the trainer's supervisor restores the newest checkpoint into the new child, as after any
crashed step. A model lock the child held is free as soon as it is dead.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing  # registers how tensors are shared between processes

from psp_core.learner import StepResult
from psp_core.scaling import ScalerRows
from service.contexts.definition import ContextDefinition
from service.faults import FaultInjector
from service.model.divergence import DivergenceGuard
from service.model.host import ModelHost, TrainRows, resolve_device
from service.model.state import SharedModelState
from service.settings import GuardSettings, Settings

log = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 30.0


class StepProcessDied(RuntimeError):
    """The training child exited; the weights it was writing are not trusted until a
    checkpoint is restored."""


@functools.cache
def process_context() -> BaseContext:
    """Children fork from a server that has imported torch once, so each starts in a fraction
    of a second, and none inherits the API process's threads or event loop. torch imports
    `torch._dynamo` (a second) lazily on the first model built; the server imports it too."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "torch._dynamo"])
    return context


def steps_run_in_child(settings: Settings) -> bool:
    """Only role `all` serves HTTP and trains in one process; on a GPU the steps are mostly
    kernels that run while the interpreter goes on."""
    return (
        settings.role == "all"
        and settings.training.steps_in == "child_process"
        and resolve_device(settings.device).type == "cpu"
    )


def start_fork_server() -> None:
    """Starts the fork server now, so that its imports (torch, this package: seconds) run on
    another core while this process imports the app and migrates the registry; the first
    child then forks from a server that is ready, or nearly. Without this call the first child
    starts it."""
    process_context()
    multiprocessing.forkserver.ensure_running()


@dataclass(frozen=True)
class _Child:
    """A running child and the two pipes to it."""

    process: BaseProcess
    steps: Connection  # everything that changes the model, one command at a time
    contexts: Connection  # new contexts, answered by a thread of their own in the child


class ChildStepHost(ModelHost):
    """The model host of the API process when the steps run in a child.

    Predictions run here, on the shared weights; every call that changes the weights, the
    optimiser or the replay buffer is forwarded to the child. New contexts go over a pipe of
    their own, so that a registration does not wait for the training steps in flight.
    """

    def __init__(self, settings: Settings) -> None:
        context = process_context()
        super().__init__(
            settings.model.to_config(),
            settings.training.to_config(settings.replay),
            torch.device("cpu"),
            replay_rows=0,  # the buffer lives in the child
            shard=settings.queue.shard,
            state=SharedModelState(context),
        )
        self.shared_state: SharedModelState = self.state  # type: ignore[assignment]
        for parameter in self.learner.model.parameters():
            parameter.share_memory_()
        self._settings = settings
        self._context = context
        self._definitions: list[ContextDefinition] = []
        self._guard: GuardSettings | None = None
        # One request and its answer on each pipe at a time; `_lifecycle` starts and buries.
        self._step_calls = threading.Lock()
        self._context_calls = threading.Lock()
        self._lifecycle = threading.RLock()  # a child that dies while started is buried
        self._child: _Child | None = None

    # Forwarded to the child -----------------------------------------------------------------

    def add_contexts(self, definitions: Iterable[ContextDefinition]) -> None:
        """Adds the contexts to the child's bank, then to this one: a context this host
        knows, the child can train."""
        new = [d for d in definitions if not self.has_context(d.index)]
        if not new:
            return
        with self._context_calls:
            with self._lifecycle:  # a child started from now on is given them as it starts
                self._definitions.extend(new)
            try:
                self._call_on("contexts", "add_contexts", new)
            except StepProcessDied:  # the child it went to died; its successor knows them
                self._call_on("contexts", "add_contexts", new)
        super().add_contexts(new)

    def train_steps(self, batches: Sequence[TrainRows]) -> list[StepResult]:
        answers, scaling = self._call("train_steps", list(batches))
        self._mirror_scaling(scaling)
        results = []
        for batch, (applied, loss, correct, version, replay_rows, bounded) in zip(
            batches, answers, strict=True
        ):
            result = StepResult(applied, loss, torch.from_numpy(correct), version, bounded)
            self.count_step(result, len(batch.labels), replay_rows)
            results.append(result)
        return results

    def _mirror_scaling(self, scaling: ScalerRows | None, *, whole: bool = False) -> None:
        """Copies the child's input statistics of the contexts it just trained (or all of
        them), which predictions here scale their rows by."""
        scaler = self.learner.scaler
        if scaler is None or scaling is None:
            return
        with self._lock:
            if whole:
                scaler.load_state_tensors({})
            scaler.apply(scaling)

    def train_step(self, batch: TrainRows) -> StepResult:
        return self.train_steps([batch])[0]

    def watch_divergence(self, settings: GuardSettings) -> None:
        self._guard = settings  # before the call: a child started by it gets the guard too
        self._call("watch_divergence", settings)

    @property
    def replays(self) -> bool:
        return self._settings.replay.rows > 0

    def remembered_contexts(self) -> set[int]:
        contexts: set[int] = self._call("remembered_contexts")
        return contexts

    def forget_contexts(self, indices: Iterable[int]) -> int:
        """Forgets deleted contexts in the child (over the contexts pipe: a delete does not
        wait for the steps in flight), then here."""
        forgotten = set(indices)
        with self._context_calls:
            dropped, replay_rows = self._call_on("contexts", "forget_contexts", forgotten)
            with self._lifecycle:
                self._definitions = [d for d in self._definitions if d.index not in forgotten]
        self._metrics.replay_rows.set(replay_rows)
        super().forget_contexts(forgotten)  # this process's statistics and bank rows
        return int(dropped)

    def child_bank_rows(self) -> int:
        """The rows of the child's bank (for tests and diagnostics)."""
        with self._context_calls:
            rows: int = self._call_on("contexts", "bank_rows")
        return rows

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        self._call("save", path, metadata)

    def load(self, path: Path) -> dict[str, str]:
        metadata, scaling = self._call("load", path)
        self._mirror_scaling(scaling, whole=True)
        self._metrics.version.set(self.state.version)
        self.restore_needed = None
        return dict(metadata)

    def restore_as(self, path: Path, version: int) -> dict[str, str]:
        metadata, scaling = self._call("restore_as", path, version)
        self._mirror_scaling(scaling, whole=True)
        self._metrics.version.set(self.state.version)
        return dict(metadata)

    def close(self) -> None:
        """Stops the child, after the calls in flight."""
        with self._step_calls, self._context_calls, self._lifecycle:
            child, self._child = self._child, None
            if child is not None:
                self._stop(child)
        self.shared_state.lock.close()

    def _stop(self, child: _Child) -> None:
        with contextlib.suppress(OSError):
            child.steps.send(("stop", ()))
        child.process.join(_STOP_WAIT_SECONDS)
        if child.process.is_alive():
            log.warning("shard %d: the training child did not stop; killing it", self.number)
            child.process.kill()
            child.process.join()
        child.steps.close()
        child.contexts.close()

    @property
    def number(self) -> int:
        return self._settings.queue.shard

    @property
    def child_pid(self) -> int | None:
        """The running child's process id, None before the first call or after `close`."""
        child = self._child
        return None if child is None else child.process.pid

    # The pipes ------------------------------------------------------------------------------

    def _call(self, command: str, *args: Any) -> Any:
        with self._step_calls:
            return self._call_on("steps", command, *args)

    def _call_on(self, pipe: str, command: str, *args: Any) -> Any:
        """`command` over the pipe `pipe` ("steps" or "contexts"), whose lock the caller
        holds."""
        child = self._running()
        return self._exchange(child, getattr(child, pipe), command, args)

    def _exchange(
        self, child: _Child, connection: Connection, command: str, args: tuple[Any, ...]
    ) -> Any:
        try:
            connection.send((command, args))
            outcome, value = connection.recv()
        except (EOFError, OSError) as err:
            self._bury(child)
            raise StepProcessDied(
                f"shard {self.number}: the training child died during {command!r}"
            ) from err
        if outcome == "error":
            raise value
        return value

    def _running(self) -> _Child:
        """A live child, started (with every known context and the guard) if need be."""
        with self._lifecycle:
            if self._child is not None:
                return self._child
            child = self._start()
            if self._definitions:
                self._exchange(child, child.contexts, "add_contexts", (self._definitions,))
            if self._guard is not None:
                self._exchange(child, child.steps, "watch_divergence", (self._guard,))
            self._child = child
            return child

    def _start(self) -> _Child:
        steps, child_steps = self._context.Pipe()
        contexts, child_contexts = self._context.Pipe()
        parameters = dict(self.learner.model.named_parameters())
        process = self._context.Process(  # type: ignore[attr-defined]
            target=serve,
            args=(child_steps, child_contexts, self._settings, parameters, self.shared_state),
            name=f"psp-steps-{self.number}",
            daemon=True,
        )
        process.start()
        child_steps.close()
        child_contexts.close()
        # A child ends when its pipes close. multiprocessing joins its children at exit, and
        # this child ignores SIGTERM, so the pipes must close before that join: a host that was
        # never `close`d (a start-up that failed) would otherwise hang the exit.
        for end in (steps, contexts):
            multiprocessing.util.Finalize(end, end.close, exitpriority=10)
        log.info("shard %d: training steps run in child process %d", self.number, process.pid)
        return _Child(process, steps, contexts)

    def _bury(self, child: _Child) -> None:
        """Forgets a dead child (once, whichever pipe found it dead), gives back the model lock
        if it died holding it, and marks the weights unhealthy: it may have died half-way
        through writing them."""
        with self._lifecycle:
            if self._child is child:
                self._child = None
            child.steps.close()
            child.contexts.close()
            child.process.join(_STOP_WAIT_SECONDS)
            # A lock it held went with it: the kernel let go of its `flock`.
            log.error(
                "shard %d: the training child %s exited with %s",
                self.number,
                child.process.pid,
                child.process.exitcode,
            )
            self.healthy = False
            # Whichever pipe found it dead, the trainer must restore a checkpoint into its
            # successor, which starts with a fresh optimiser and an empty rehearsal buffer.
            self.restore_needed = (
                f"shard {self.number}: the training child {child.process.pid} died"
            )


# The child ----------------------------------------------------------------------------------


def serve(
    steps: Connection,
    contexts: Connection,
    settings: Settings,
    parameters: dict[str, torch.Tensor],
    state: SharedModelState,
) -> None:
    """The child's loop: builds its own host over the shared weights and answers the commands
    of `steps` until told to stop or until the API process is gone; a thread answers
    `contexts` meanwhile (the host adds contexts safely beside a step)."""
    # Ctrl-C and a signal to the process group are the API process's to handle: it drains
    # the queue into a final checkpoint through this child, then stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(settings.resolved_torch_threads)
    if settings.training.deterministic:
        torch.use_deterministic_algorithms(True)
    commands = _Commands(_child_host(settings, parameters, state))
    gc.freeze()  # what lives as long as the child stays out of every collection (service.app)
    threading.Thread(target=_answer, args=(contexts, commands), daemon=True).start()
    _answer(steps, commands)


def _answer(connection: Connection, commands: _Commands) -> None:
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
    if settings.faults.any:
        host.step_watchers.append(FaultInjector(settings.faults))
    return host


class _Commands:
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
        watchers.append(DivergenceGuard(settings, self.host))

    def remembered_contexts(self) -> set[int]:
        return self.host.remembered_contexts()

    def forget_contexts(self, indices: set[int]) -> tuple[int, int]:
        return self.host.forget_contexts(indices), self.host.replay_size

    def bank_rows(self) -> int:
        return self.host.bank_size

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        self.host.save(path, metadata)

    def load(self, path: Path) -> tuple[dict[str, str], ScalerRows | None]:
        return self.host.load(path), self._scaling(None)

    def restore_as(self, path: Path, version: int) -> tuple[dict[str, str], ScalerRows | None]:
        return self.host.restore_as(path, version), self._scaling(None)
