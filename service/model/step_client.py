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

All the shards of the API process share one child (`service.model.step_process`): each host
takes a seat in it as it is built, with pipes of its own, and the child runs one shard's step at
a time, so that eight shards do not put eight step processes on the same cores.

A child that dies is started again at the next call of any shard's host, and each host finds
it dead on its own next call, which raises `StepProcessDied`: that shard's weights are marked
unhealthy, and its trainer's supervisor restores its newest checkpoint into the new child, as
after any crashed step. A host that meets a child it has not served yet (the first, or a
successor) first gives it the shard's contexts and divergence guard. A model lock the child
held is free as soon as it is dead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from psp_core.learner import StepResult
from psp_core.scaling import ScalerRows
from service.contexts.definition import ContextDefinition
from service.model.host import ModelHost, TrainRows, resolve_device
from service.model.state import SharedModelState
from service.model.step_process import SeatPipes, StepChild, StepProcess
from service.model.training_hooks import StepWatcherFactory
from service.settings import GuardSettings, Settings

log = logging.getLogger(__name__)


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


class ChildStepHost(ModelHost):
    """The model host of the API process when the steps run in a child.

    Predictions run here, on the shared weights; every call that changes the weights, the
    optimiser or the replay buffer is forwarded to the child. New contexts go over a pipe of
    their own, so that a registration does not wait for the training steps in flight.

    Its own learner only predicts: it never steps, and its `learner.replay` is None (the
    buffer is the child's); `replays` and `remembered_contexts` answer for the child.
    """

    def __init__(
        self,
        settings: Settings,
        step_watchers: Sequence[StepWatcherFactory] = (),
        step_process: StepProcess | None = None,
    ) -> None:
        """Takes a seat in `step_process`, the child of every shard of this process (one of
        its own when None), before that child starts. `step_watchers` are pickled to each
        child, which builds its own watchers from them (`service.model.training_hooks`)."""
        self._process = step_process or StepProcess()
        super().__init__(
            settings.model.to_config(),
            settings.training.to_config(settings.replay),
            torch.device("cpu"),
            replay_rows=0,  # the buffer lives in the child
            shard=settings.queue.shard,
            state=SharedModelState(self._process.context),
        )
        self.shared_state: SharedModelState = self.state  # type: ignore[assignment]
        for parameter in self.learner.model.parameters():
            parameter.share_memory_()
        self._settings = settings
        self._definitions: list[ContextDefinition] = []
        self._guard: GuardSettings | None = None
        try:
            self._seat = self._process.take_seat(
                settings, self.learner.model, self.shared_state, step_watchers
            )
        except RuntimeError:
            self.shared_state.lock.close()  # its file, which no child will open
            raise
        # One request and its answer on each pipe at a time; `_lifecycle` starts and buries.
        self._step_calls = threading.Lock()
        self._context_calls = threading.Lock()
        self._lifecycle = threading.RLock()  # a child that dies while started is buried
        self._child: StepChild | None = None  # the child this host has given its contexts

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
        """Leaves the child, after this host's calls in flight; the last host to leave stops
        it."""
        with self._step_calls, self._context_calls, self._lifecycle:
            child, self._child = self._child, None
            self._process.leave(self._seat)
            if child is not None:  # a child found dead by another host since, or the same
                child.pipes[self._seat].close()
        self.shared_state.lock.close()

    @property
    def number(self) -> int:
        return self._settings.queue.shard

    @property
    def child_pid(self) -> int | None:
        """The process id of the child this host calls (the one of every shard of this
        process), None before its first call, after its child was found dead, or after
        `close`."""
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
        return self._exchange(child, getattr(self._pipes(child), pipe), command, args)

    def _pipes(self, child: StepChild) -> SeatPipes:
        return child.pipes[self._seat]

    def _exchange(
        self, child: StepChild, connection: Connection, command: str, args: tuple[Any, ...]
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

    def _running(self) -> StepChild:
        """The child, started if none runs, and given this shard's contexts and guard if this
        host has not called it yet. A child found dead by another host since this host's last
        call is found dead here too, on its pipes, so that each host is buried."""
        with self._lifecycle:
            if self._child is not None:
                return self._child
            child = self._process.running(self._seat)
            pipes = self._pipes(child)
            if self._definitions:
                self._exchange(child, pipes.contexts, "add_contexts", (self._definitions,))
            if self._guard is not None:
                self._exchange(child, pipes.steps, "watch_divergence", (self._guard,))
            self._child = child
            return child

    def _bury(self, child: StepChild) -> None:
        """Forgets a dead child (once, whichever pipe found it dead; the step process starts
        another at the next call of any host), gives back the model lock if it died holding
        it, and marks this shard's weights unhealthy: it may have died half-way through
        writing them."""
        with self._lifecycle:
            if self._child is child:
                self._child = None
            self._pipes(child).close()
            self._process.lost(child)
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
