"""The model host: one superposed model on the best device, shared by predict and the trainer.

The host maps registry indices to bank rows, runs forward passes and training steps, and
swaps in checkpointed weights. A lock makes each training step atomic with respect to
predictions: a forward pass never sees a half-applied step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from psp_core.checkpoint import read_weights, restore_checkpoint, save_checkpoint
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, StepResult, TrainingConfig
from psp_core.models import ModelConfig, build_model, parameter_count
from service import metrics


def resolve_device(name: str) -> torch.device:
    """`auto` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class ContextDefinition:
    """What the host needs to know of a registered context."""

    index: int
    seed: int | None
    power: float | None


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


class UnknownContext(KeyError):
    """A registry index the host has no bank row for."""


class ModelHost:
    """Owns the learner; thread-safe for one writer and many readers."""

    def __init__(
        self, model_config: ModelConfig, training: TrainingConfig, device: torch.device
    ) -> None:
        model = build_model(model_config, device)
        self.learner = OnlineLearner(model, training)
        self.config = model_config
        self.device = device
        self._rows: dict[int, int] = {}
        self._max_index = -1
        self._lock = threading.Lock()
        metrics.MODEL_VERSION.set(0)

    @property
    def model_version(self) -> int:
        return self.learner.model_version

    @property
    def parameter_count(self) -> int:
        return parameter_count(self.learner.model)

    @property
    def context_count(self) -> int:
        return len(self._rows)

    def has_context(self, index: int) -> bool:
        return index in self._rows

    @property
    def max_index(self) -> int:
        """The highest registry index in the bank, -1 when empty."""
        return self._max_index

    def add_contexts(self, definitions: Iterable[ContextDefinition]) -> None:
        """Adds the contexts the bank does not hold yet, in the order given."""
        new = [d for d in definitions if d.index not in self._rows]
        if not new:
            return
        specs = [ContextSpec(seed=d.seed, power=d.power) for d in new]
        with self._lock:
            rows = self.learner.model.bank.extend(specs)
            self._rows.update({d.index: row for d, row in zip(new, rows, strict=True)})
            self._max_index = max(self._max_index, *(d.index for d in new))
        metrics.CONTEXTS.set(len(self._rows))

    def bank_rows(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Bank rows for registry indices, as an int64 tensor on the model's device."""
        try:
            rows = [self._rows[int(i)] for i in indices]
        except KeyError as err:
            raise UnknownContext(err.args[0]) from None
        return torch.tensor(rows, dtype=torch.int64, device=self.device)

    def predict(self, inputs: np.ndarray, rows: torch.Tensor) -> tuple[np.ndarray, int]:
        """Class probabilities for a batch that may mix contexts.

        Args:
            inputs: float32 `(n, prod(input_shape))`.
            rows: int64 `(n,)` bank rows from `bank_rows`.

        Returns:
            float32 `(n, num_classes)` probabilities and the version that produced them.
        """
        x = torch.from_numpy(inputs).to(self.device, non_blocking=True)
        with self._lock:
            probabilities = self.learner.predict(x, rows)
            version = self.learner.model_version
        return probabilities.cpu().numpy(), version

    def train_step(self, batch: TrainRows) -> StepResult:
        """One test-then-train step; refused (and counted) when it is not finite."""
        rows = self.bank_rows(batch.indices)
        x = torch.from_numpy(np.ascontiguousarray(batch.inputs)).to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(batch.labels)).to(self.device)
        with self._lock:
            result = self.learner.step(x, rows, y)
        if result.applied:
            metrics.TRAIN_STEPS.inc()
            metrics.TRAINED_EXAMPLES.inc(len(batch.labels))
            metrics.MODEL_VERSION.set(result.model_version)
        else:
            metrics.REFUSED_STEPS.inc()
        return result

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Writes a checkpoint of the current state."""
        with self._lock:
            save_checkpoint(path, self.learner, metadata)

    def swap_weights(self, path: Path) -> int:
        """Serves a checkpoint's weights (read-only processes): reads the file without the
        lock, then copies the tensors in under it, so predictions are never dropped.

        Returns:
            The model version now served.
        """
        weights, header = read_weights(path, self.config)
        with self._lock:
            self.learner.model.load_state_dict(weights, strict=True)
            self.learner.model_version = int(header["model_version"])
        metrics.MODEL_VERSION.set(self.learner.model_version)
        return self.learner.model_version

    def load(self, path: Path) -> dict[str, str]:
        """Replaces weights, optimiser state and version with a checkpoint's.

        The bank is not compared with the checkpoint's: the registry is the source of truth for
        contexts, and processes may have learned of them in different orders.
        """
        with self._lock:
            metadata = restore_checkpoint(path, self.learner, verify_contexts=False)
        metrics.MODEL_VERSION.set(self.learner.model_version)
        return metadata

    def restore_as(self, path: Path, version: int) -> dict[str, str]:
        """`load`s a checkpoint, then names its state `version`: a restored state is a new
        version, so a version always names exactly one set of weights."""
        with self._lock:
            metadata = restore_checkpoint(path, self.learner, verify_contexts=False)
            self.learner.model_version = version
        metrics.MODEL_VERSION.set(version)
        return metadata
