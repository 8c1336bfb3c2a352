"""The runner interface the benchmark loop drives, and its in-process implementations.

A runner hides where the learning happens: the loop only registers contexts, trains minibatches
(test-then-train) and asks for predictions, so the same loop measures an in-process model and a
running service (`http_runner.HttpRunner`) with the same numbers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import torch

from psp_bench.baselines import EWCConfig, OnlineEWC, SeparateModels
from psp_bench.methods import LEARNED_CONTEXTS, Method
from psp_bench.tenant_models import TENANT_MODELS
from psp_core import ContextSpec, ModelConfig, OnlineLearner, TrainingConfig, build_model
from psp_core.replay import ReplayBuffer

# Rows per forward pass when predicting: a rotation context materialises an M x M matrix per
# row, so large test sets are predicted in slices to bound memory.
PREDICT_CHUNK = 64


class Runner(Protocol):
    """Register a context, train a batch, predict: all the benchmark loop needs."""

    def register(self, key: str, spec: ContextSpec) -> None:
        """Makes context `key` (defined by `spec`) known; registering it again does nothing."""

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores the batch with the current model, then learns it under context `key`.

        Args:
            key: A registered context.
            x: `(B, D)` float32 inputs.
            y: `(B,)` int64 labels.

        Returns:
            `(B,)` bool: the prediction made before learning was right (prequential score).
        """
        ...

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """`(B,)` int64 predicted classes for `(B, D)` inputs under context `key`."""
        ...

    def send(
        self, key: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, wait: bool
    ) -> torch.Tensor | None:
        """Learns a block of rows the way a client's request is learned.

        Args:
            key: A registered context.
            x: `(b, D)` float32 inputs.
            y: `(b,)` int64 labels.
            batch_size: Rows per minibatch where the runner forms them itself.
            wait: Return only once the block is learned.

        Returns:
            `(b,)` bool prequential scores, or None where the runner cannot tell them.
        """
        ...

    @property
    def refused_steps(self) -> int:
        """Training steps refused because their loss or gradient was not finite."""
        ...

    def close(self) -> None:
        """Releases what the runner holds (connections)."""


class InProcessRunner(ABC):
    """What the in-process runners share: a block is learned as consecutive minibatches."""

    @abstractmethod
    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """See `Runner.train`."""

    def send(
        self, key: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, wait: bool
    ) -> torch.Tensor:
        """Cuts the block into minibatches in order, as a trainer that keeps up with its
        clients does; in-process learning is always finished on return."""
        parts = [
            self.train(key, x[start : start + batch_size], y[start : start + batch_size])
            for start in range(0, len(y), batch_size)
        ]
        return torch.cat(parts)


def _rows(row: int, batch: int) -> torch.Tensor:
    return torch.full((batch,), row, dtype=torch.long)


def _predict_in_chunks(
    predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Classes `(B,)` from a function returning probabilities `(b, C)` for slices of `x`."""
    parts = [predict(x[start : start + PREDICT_CHUNK]) for start in range(0, len(x), PREDICT_CHUNK)]
    return torch.cat([part.argmax(dim=1) for part in parts]).cpu()


class PSPRunner(InProcessRunner):
    """One superposed network (or the plain one, kind `none`) with a context per key; or a
    plain network with learned per-key parameters (`tenant_models`), which learns the same way.

    Args:
        config: The architecture and kind.
        training: The optimiser, clipping and rows replayed per step.
        replay_rows: Capacity of the replay buffer; 0 trains without one.
        balanced: Share the buffer equally among contexts (else one plain reservoir).
        model: The network, when not `build_model(config)`.
    """

    def __init__(
        self,
        config: ModelConfig,
        training: TrainingConfig,
        replay_rows: int = 0,
        *,
        balanced: bool = True,
        model: torch.nn.Module | None = None,
    ) -> None:
        replay = (
            ReplayBuffer(replay_rows, config.input_size, seed=config.seed, balanced=balanced)
            if replay_rows
            else None
        )
        network = model if model is not None else build_model(config)
        self.learner = OnlineLearner(network, training, replay=replay)  # type: ignore[arg-type]
        self.rows: dict[str, int] = {}

    def register(self, key: str, spec: ContextSpec) -> None:
        if key not in self.rows:
            self.rows[key] = self.learner.model.add_context(spec)
            self._optimise_new_parameters()

    def _optimise_new_parameters(self) -> None:
        """Hands the optimiser the parameters a new key added (a block of learned per-key
        rows), leaving the state of the others as it is."""
        optimizer = self.learner.optimizer
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        fresh = [p for p in self.learner.model.parameters() if id(p) not in known]
        if fresh:
            optimizer.add_param_group({"params": fresh})

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.learner.step(x, _rows(self.rows[key], len(x)), y).correct

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        row = self.rows[key]
        return _predict_in_chunks(lambda part: self.learner.predict(part, _rows(row, len(part))), x)

    @property
    def refused_steps(self) -> int:
        return self.learner.refused_steps

    def close(self) -> None:
        """Nothing to release."""


class SeparateRunner(InProcessRunner):
    """An independent plain network per key (`baselines.SeparateModels`)."""

    def __init__(self, config: ModelConfig, training: TrainingConfig) -> None:
        self.models = SeparateModels(config, training)

    def register(self, key: str, spec: ContextSpec) -> None:
        self.models.learner(key)

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.models.learner(key).step(x, _rows(0, len(x)), y).correct

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        learner = self.models.learner(key)
        return _predict_in_chunks(lambda part: learner.predict(part, _rows(0, len(part))), x)

    @property
    def refused_steps(self) -> int:
        return sum(learner.refused_steps for learner in self.models.learners.values())

    def close(self) -> None:
        """Nothing to release."""


class EWCRunner(InProcessRunner):
    """One plain network with online EWC; a task ends when training moves to another key.

    The runner keeps the most recent `EWCConfig.samples` training inputs of the current key, and
    consolidates on them when the next key starts, so EWC sees only data the stream has shown.
    """

    def __init__(self, config: ModelConfig, training: TrainingConfig, ewc: EWCConfig) -> None:
        self.ewc = OnlineEWC(build_model(replace(config, kind="none")), training, ewc)
        self.current: str | None = None
        self.recent: deque[torch.Tensor] = deque()
        self.recent_rows = 0
        self.consolidations = 0

    def register(self, key: str, spec: ContextSpec) -> None:
        """A plain network has no contexts to register."""

    def _remember(self, x: torch.Tensor) -> None:
        self.recent.append(x)
        self.recent_rows += len(x)
        while self.recent_rows - len(self.recent[0]) >= self.ewc.config.samples:
            self.recent_rows -= len(self.recent.popleft())

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.current is not None and key != self.current and self.recent:
            self.ewc.consolidate(torch.cat(list(self.recent))[-self.ewc.config.samples :])
            self.consolidations += 1
            self.recent.clear()
            self.recent_rows = 0
        self.current = key
        correct = self.ewc.step(x, y).correct
        self._remember(x)
        return correct

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return _predict_in_chunks(self.ewc.predict, x)

    @property
    def refused_steps(self) -> int:
        return self.ewc.refused_steps

    def close(self) -> None:
        """Nothing to release."""


def in_process_runner(
    method: Method,
    config: ModelConfig,
    training: TrainingConfig,
    ewc: EWCConfig,
    replay_rows: int = 0,
) -> Runner:
    """The in-process runner of `method` on the architecture `config` (its kind is replaced);
    a `-replay` method gets a buffer of `replay_rows` rows."""
    if method.family == "separate":
        return SeparateRunner(config, training)
    if method.family == "ewc":
        return EWCRunner(config, training, ewc)
    if method.family == "river":
        from psp_bench.river_runner import RiverRunner  # river is needed by this method only

        return RiverRunner(forest=method.forest)
    architecture = method.architecture(config)
    if method.family in LEARNED_CONTEXTS:
        return PSPRunner(
            architecture,
            training,
            replay_rows if method.replay else 0,
            balanced=not method.plain_reservoir,
            model=TENANT_MODELS[method.family](architecture),
        )
    return PSPRunner(
        architecture,
        training,
        replay_rows if method.replay else 0,
        balanced=not method.plain_reservoir,
    )
