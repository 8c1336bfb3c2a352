"""The model host: one superposed model on the best device, shared by predict and the trainer.

The host maps registry indices to bank rows, runs forward passes and training steps, and
swaps in checkpointed weights. Two locks keep predictions apart from training:

- the model lock, held by every forward pass of a prediction, and by a writer only while it
  changes what a prediction reads (a step's update and its watchers' verdict, a restored
  checkpoint's weights, new contexts) or takes a checkpoint in memory. A forward pass never sees
  a half-applied step, and it never waits for a step's own forward and backward passes, which
  only read the weights, nor for a checkpoint's write to or read from disk.
- the writing lock, held for the whole of every change to the learner (a step, a checkpoint
  save or restore, purging the replay buffer), so that nothing comes between a step's backward
  pass and its update. Within one process there is one writer; the host only keeps its calls
  apart.

Predictions may run beside a step's forward pass, in train mode, in another thread. The models
built from `ModelConfig` have no layer that behaves differently in training (no dropout, no batch
normalisation), so the mode one pass sets does not change the other's answer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from psp_core.checkpoint import (
    checkpoint_bytes,
    read_checkpoint,
    read_weights,
    restore_checkpoint,
    write_checkpoint,
)
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, StepResult, TrainingConfig
from psp_core.models import ModelConfig, build_model, parameter_count
from psp_core.replay import ReplayBuffer
from service.contexts.definition import ContextDefinition
from service.model.answers import ModelUnhealthy, check_answer
from service.model.bank_rows import BankRows
from service.model.divergence import DivergenceGuard
from service.model.host_metrics import HostMetrics
from service.model.state import LocalModelState, ModelState
from service.model.training_hooks import StepWatcher
from service.settings import GuardSettings


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class TrainRows:
    """Rows to learn from, each with its registry index.

    Attributes:
        indices: int64 `(n,)` registry indices.
        inputs: float32 `(n, prod(input_shape))`.
        labels: int64 `(n,)`.
        entry_positions: int64 `(n,)`: the position of each row's queue entry among the
            entries being applied, so a refused step can be traced to its entries; None for
            rows that come from no entry.
    """

    indices: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    entry_positions: np.ndarray | None = None


class RestoreNeeded(RuntimeError):
    """The state that trains may be torn; the trainer restores the newest checkpoint."""


class ModelHost:
    """Owns the learner; thread-safe for one writer and many readers."""

    def __init__(
        self,
        model_config: ModelConfig,
        training: TrainingConfig,
        device: torch.device,
        *,
        replay_rows: int = 0,
        shard: int = 0,
        state: ModelState | None = None,
    ) -> None:
        model = build_model(model_config, device)
        replay = (
            ReplayBuffer(replay_rows, model_config.input_size, seed=model_config.seed)
            if replay_rows
            else None
        )
        # The buffer keeps registry indices, which mean the same in every process and restart;
        # bank rows depend on the order in which a process learned of its contexts.
        self.learner = OnlineLearner(model, training, replay=replay, rows_of=self.bank_rows)
        self.config = model_config
        self.device = device
        self._rows = BankRows()
        # The lock, the version served and the health flag; shared with a training child when
        # the steps run in one (`service.model.step_client`).
        self.state = state or LocalModelState()
        self._lock = self.state.lock
        self._writing = threading.Lock()  # see the module's docstring
        # Serialises context generation, which runs without `_lock` so predictions go on.
        self._adding = threading.Lock()
        self.step_watchers: list[StepWatcher] = []
        # Set by a read replica's follower while its shard has announced trained weights that
        # this process could not load yet: why its own weights must not answer.
        self.weights_missing: str | None = None
        # Set when the state that trains may be torn (a training child died): why the trainer
        # must restore the newest checkpoint before it steps again; a load clears it.
        self.restore_needed: str | None = None
        self._metrics = HostMetrics.of_shard(shard)
        self._metrics.version.set(0)

    @property
    def model_version(self) -> int:
        return self.state.version

    @property
    def healthy(self) -> bool:
        """False from a failed health check of the weights until a checkpoint is restored."""
        return self.state.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self.state.healthy = value

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.learner.model)

    @property
    def context_count(self) -> int:
        """The contexts this host serves (deleted ones are let go)."""
        return len(self._rows)

    @property
    def bank_size(self) -> int:
        """The rows of the in-memory bank: the contexts served, plus rows that deleted
        contexts left for the next new ones."""
        return len(self.learner.model.bank)

    def has_context(self, index: int) -> bool:
        return index in self._rows

    @property
    def max_index(self) -> int:
        """The highest registry index in the bank, -1 when empty."""
        return self._rows.max_index

    def add_contexts(self, definitions: Iterable[ContextDefinition]) -> None:
        """Adds the contexts the bank does not hold yet, in the order given.

        The rows are generated without the model lock (10,000 complex contexts take about
        2 s), so callers on the event loop run this in a thread and predictions go on.
        """
        with self._adding:
            new = [d for d in definitions if d.index not in self._rows]
            if not new:
                return
            bank = self.learner.model.bank
            prepared = bank.prepare([ContextSpec(seed=d.seed, power=d.power) for d in new])
            bank.reserve(len(new))  # a doubling copies every row: not under the lock
            with self._lock:
                self._rows.place([d.index for d in new], bank, prepared)
        self._metrics.contexts.set(len(self._rows))

    def bank_rows(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Bank rows for registry indices, as an int64 tensor on the model's device.

        Raises:
            UnknownContext: An index has no bank row here.
        """
        return torch.tensor(self._rows.of(indices), dtype=torch.int64, device=self.device)

    def predict(self, inputs: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """Class probabilities for a batch that may mix contexts, all of one caller.

        Args:
            inputs: float32 `(n, prod(input_shape))`.
            indices: int64 `(n,)` registry indices of the rows' contexts.

        Returns:
            float32 `(n, num_classes)` probabilities and the version that produced them.

        Raises:
            ModelUnhealthy: The weights are being restored or are not loaded yet (a read
                replica).
            InputsOverflow: A row gave a non-finite probability.
            UnknownContext: An index has no bank row here.
        """
        probabilities, version = self.forward(inputs, indices)
        self.check_answer(probabilities, inputs, version)
        return probabilities, version

    def forward(self, inputs: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """`predict` for a batch of several callers: the probabilities are not checked, so
        that each caller can be told about its own rows only (`check_answer`).

        Raises:
            ModelUnhealthy: As for `predict`.
        """
        x = torch.from_numpy(inputs).to(self.device, non_blocking=True)
        with self._lock:  # a deleted context's row is let go under it too
            probabilities, version = self._forward(x, indices)
        return probabilities.cpu().numpy(), version

    def predict_if_free(
        self, inputs: np.ndarray, indices: np.ndarray
    ) -> tuple[np.ndarray, int] | None:
        """`predict`, but only if no training step or weight swap holds the model right now;
        None if one does (the caller then waits its turn off the event loop).

        For callers on the event loop with a few rows on the CPU: the forward pass is shorter
        than a hop to a worker thread and back.
        """
        x = torch.from_numpy(inputs).to(self.device)
        if not self._lock.acquire(False):
            return None
        try:
            probabilities, version = self._forward(x, indices)
        finally:
            self._lock.release()
        answer = probabilities.cpu().numpy()
        self.check_answer(answer, inputs, version)
        return answer, version

    def check_answer(self, probabilities: np.ndarray, inputs: np.ndarray, version: int) -> None:
        """Refuses probabilities that are not all finite (`service.model.answers`)."""
        check_answer(probabilities, inputs, version, self.learner)

    def _forward(self, x: torch.Tensor, indices: np.ndarray) -> tuple[torch.Tensor, int]:
        """The forward pass; the caller holds the model lock (the input statistics change
        under it too)."""
        if not self.healthy:
            raise ModelUnhealthy(
                "the model's weights went bad and the last healthy checkpoint is being "
                "restored; nothing was predicted, retry in a moment"
            )
        if self.weights_missing is not None:
            raise ModelUnhealthy(
                f"this replica has not loaded its shard's weights yet: {self.weights_missing}; "
                "nothing was predicted, retry in a moment"
            )
        rows = self.bank_rows(indices)
        return self.learner.predict(x, rows, context_ids=indices), self.state.version

    def train_step(self, batch: TrainRows) -> StepResult:
        """One test-then-train step; refused (and counted) when it is not finite.

        The step watchers' verdict comes under the model lock with the update; one may raise
        to reject the new weights.
        """
        result, replay_rows = self._locked_step(batch)
        self._metrics.record_step(result, len(batch.labels), replay_rows)
        return result

    def train_steps(self, batches: Sequence[TrainRows]) -> list[StepResult]:
        """`train_step` on each batch in order; stops at the first that raises."""
        return [self.train_step(batch) for batch in batches]

    def _locked_step(self, batch: TrainRows) -> tuple[StepResult, int]:
        """The step (its passes under the writing lock, its update under the model lock too),
        and how many rows the replay buffer then holds."""
        rows = self.bank_rows(batch.indices)
        x = torch.from_numpy(np.ascontiguousarray(batch.inputs)).to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(batch.labels)).to(self.device)
        with self._writing:
            for watcher in self.step_watchers:
                watcher.before_step(self.learner)
            prepared = self.learner.prepare_step(x, rows, y, context_ids=batch.indices)
            with self._lock:
                result = self.learner.commit_step(prepared)
                self.state.version = self.learner.model_version
                for watcher in self.step_watchers:
                    watcher.after_step(self.learner, result)
                replay_rows = self.replay_size
        return result, replay_rows

    def watch_divergence(self, settings: GuardSettings) -> None:
        """Checks the weights after every step from now on (`service.model.divergence`)."""
        self.step_watchers.append(DivergenceGuard(settings, self.state))

    @property
    def replays(self) -> bool:
        """Whether this host keeps a replay buffer (the writer, with replay on)."""
        return self.learner.replay is not None

    @property
    def replay_size(self) -> int:
        """How many rows the replay buffer holds."""
        return len(self.learner.replay) if self.learner.replay is not None else 0

    def remembered_contexts(self) -> set[int]:
        """Registry indices whose rows the replay buffer holds or whose input statistics the
        scaler holds: what a deleted context may leave behind."""
        replay, scaler = self.learner.replay, self.learner.scaler
        held = replay.contexts() if replay is not None else set()
        if scaler is not None:
            held |= {int(i) for i in scaler.rows().ids.tolist()}
        return held

    def forget_contexts(self, indices: Iterable[int]) -> int:
        """Forgets deleted contexts: drops their replay rows (and refuses their rows from now
        on) and their input statistics, then lets their bank rows go for new contexts.

        Returns:
            How many replay rows were dropped.
        """
        forgotten = set(indices)
        dropped = 0
        with self._writing:  # no step is under way, so none samples their replay rows
            replay = self.learner.replay
            if replay is not None:
                dropped = replay.purge(forgotten)
                self._metrics.replay_rows.set(len(replay))
            with self._lock:
                if self.learner.scaler is not None:
                    self.learner.scaler.forget(forgotten)
                # Under the model lock: no forward pass is between looking a row up and using it.
                self._rows.release(forgotten)
        self._metrics.contexts.set(len(self._rows))
        return dropped

    def close(self) -> None:
        """Releases what the host holds besides memory (nothing, in this process)."""

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Writes a checkpoint of the current state."""
        with self._writing:
            with self._lock:  # the bank too: no context is half-added
                checkpoint = checkpoint_bytes(self.learner, metadata)
            # The disk write and its fsyncs (tens of milliseconds, more with a full replay
            # buffer) hold back no prediction.
            write_checkpoint(path, checkpoint)

    def swap_weights(self, path: Path) -> int:
        """Serves a checkpoint's weights (read-only processes): reads the file without the
        lock, then copies the tensors in under it, so predictions are never dropped.

        Returns:
            The model version now served.
        """
        serving = read_weights(path, self.config)
        with self._lock:
            self.learner.model.load_state_dict(serving.weights, strict=True)
            if self.learner.scaler is not None:
                self.learner.scaler.load_state_tensors(serving.scaler)
            self.learner.model_version = int(serving.header["model_version"])
            self.state.version = self.learner.model_version
            self.healthy = True
        self._metrics.version.set(self.learner.model_version)
        return self.learner.model_version

    def load(self, path: Path, version: int | None = None) -> dict[str, str]:
        """Replaces weights, optimiser state and version with a checkpoint's; the state is
        named `version` instead of the checkpoint's when one is given.

        The bank is not compared with the checkpoint's: the registry is the source of truth for
        contexts, and processes may have learned of them in different orders.
        """
        checkpoint = read_checkpoint(path)  # the disk read holds back no prediction
        with self._writing, self._lock:
            metadata = restore_checkpoint(checkpoint, self.learner, verify_contexts=False)
            if version is not None:
                self.learner.model_version = version
            self.state.version = self.learner.model_version
            self.healthy = True
            self.restore_needed = None
        self._metrics.version.set(self.state.version)
        return metadata

    def restore_as(self, path: Path, version: int) -> dict[str, str]:
        """`load`s a checkpoint, then names its state `version`: a restored state is a new
        version, so a version always names exactly one set of weights."""
        checkpoint = read_checkpoint(path)
        with self._writing, self._lock:
            metadata = restore_checkpoint(checkpoint, self.learner, verify_contexts=False)
            self.learner.model_version = version
            self.state.version = version
        self._metrics.version.set(version)
        return metadata
