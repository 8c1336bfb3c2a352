"""Training steps in a child process of their own, for role `all` on the CPU: the API process's
end.

In one process the HTTP work and the training steps take turns on one interpreter lock: while
clients posted, the trainer applied a third of what the bare loop learns. With
`PSP_TRAINING__STEPS_IN=child_process` (the default) the API process keeps the trainer's
bookkeeping (the queue, checkpoint metadata, the registry, applied notices) and a child process
(`service.model.step_child`) does the torch work: the steps with their rehearsal, divergence
guard and step watchers, the optimiser state and the replay buffer, and checkpoint saves and
restores. The weights live in shared memory, so a prediction in the API process reads what the
last step wrote, under the same cross-process lock (`service.model.state`); the version and the
health flag are shared too.

A child that dies is started again at the next call, knowing the same contexts, and the call
that found it dead raises `StepProcessDied`: the weights it was writing are marked unhealthy,
and the trainer's supervisor restores the newest checkpoint into the new child, as after any
crashed step. A model lock the child held is free as soon as it is dead.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from psp_core.learner import StepResult
from psp_core.scaling import ScalerRows
from service.contexts.definition import ContextDefinition
from service.model.host import ModelHost, TrainRows, resolve_device
from service.model.state import SharedModelState
from service.model.step_child import process_context, serve
from service.model.training_hooks import StepWatcherFactory
from service.settings import GuardSettings, Settings

log = logging.getLogger(__name__)

_STOP_WAIT_SECONDS = 30.0


class StepProcessDied(RuntimeError):
    """The training child exited; the weights it was writing are not trusted until a
    checkpoint is restored."""


def steps_run_in_child(settings: Settings) -> bool:
    """Only role `all` serves HTTP and trains in one process; on a GPU the steps are mostly
    kernels that run while the interpreter goes on."""
    return (
        settings.role == "all"
        and settings.training.steps_in == "child_process"
        and resolve_device(settings.device).type == "cpu"
    )


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

    Its own learner only predicts: it never steps, and its `learner.replay` is None (the
    buffer is the child's); `replays` and `remembered_contexts` answer for the child.
    """

    def __init__(
        self, settings: Settings, step_watchers: Sequence[StepWatcherFactory] = ()
    ) -> None:
        """`step_watchers` are pickled to each child, which builds its own watchers from them
        (`service.model.training_hooks`)."""
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
        self._step_watchers = tuple(step_watchers)
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
            self._metrics.record_step(result, len(batch.labels), replay_rows)
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

    def load(self, path: Path, version: int | None = None) -> dict[str, str]:
        metadata, scaling = self._call("load", path, version)
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
            args=(
                child_steps,
                child_contexts,
                self._settings,
                parameters,
                self.shared_state,
                self._step_watchers,
            ),
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
