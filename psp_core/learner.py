"""The online learner: test-then-train steps over mixed-context minibatches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from psp_core.models import SuperposedModel
from psp_core.replay import ReplayBuffer
from psp_core.scaling import ContextScaler, ScalerRows

# Devices where Adam steps every tensor in one fused kernel. For the service's small models the
# per-tensor Adam, a dozen operations per tensor, was a fifth of a training step on the CPU.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainingConfig:
    """How the learner updates the shared weights."""

    # The defaults were chosen by the sweep in docs/benchmarks.md ("Learning from real traffic").
    optimizer: str = "adam"  # sgd, adam or rmsprop
    lr: float = 3e-4  # step size of every optimiser
    momentum: float = 0.9  # sgd and rmsprop momentum; adam uses its default betas
    clip_norm: float | None = 1.0  # gradients are scaled down to this global norm; None: off
    replay_per_step: int = 64  # past rows mixed into each step, when the learner has a buffer

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam", "rmsprop"):
            raise ValueError(f"optimizer must be sgd, adam or rmsprop, not {self.optimizer!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError("clip_norm must be a positive number, or None to turn clipping off")
        if self.replay_per_step < 0:
            raise ValueError("replay_per_step must be zero or more")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        if self.optimizer == "adam":
            params = list(params)
            if all(p.device.type in FUSED_ADAM_DEVICES for p in params):
                try:
                    return torch.optim.Adam(params, lr=self.lr, fused=True)
                except RuntimeError:  # torch < 2.4 has no fused Adam for the CPU
                    pass
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.RMSprop(params, lr=self.lr, momentum=self.momentum)


@dataclass(frozen=True)
class StepResult:
    """What one `OnlineLearner.step` did.

    Attributes:
        applied: False when the step was refused because the loss or a gradient was non-finite.
        loss: The mean cross-entropy of the minibatch (replayed rows included) before the update.
        correct: `(B,)` bool on the CPU: the model's prediction before the update was right
            (the prequential, test-then-train score of each new example; replayed rows are
            never scored).
        model_version: The version after this step.
        bounded: `(B,)` bool: the new rows whose size the input scaling bounded (see
            `psp_core.scaling`); empty when the model does not scale its inputs.
    """

    applied: bool
    loss: float
    correct: torch.Tensor
    model_version: int
    bounded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True)
class _Replayed:
    """Rows drawn from the replay buffer for one step: inputs as sent, their context ids, the
    bank rows of those ids, and labels."""

    inputs: torch.Tensor
    ids: np.ndarray
    rows: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True, eq=False)
class PreparedStep:
    """A step whose gradients are computed and whose update is pending (`prepare_step`).

    Attributes:
        x, context_index, y: The new rows, as given to `prepare_step`.
        context_ids: The ids the new rows are kept and scaled under.
        loss: The minibatch's mean cross-entropy before the update.
        correct: The new rows' test-then-train scores (see `StepResult`).
        finite: Whether the loss and every gradient were finite; a step that is not is refused.
        scaling: The contexts' input statistics with the new rows in, stored when the step is
            committed; None when the model does not scale its inputs.
        bounded: The new rows whose size the input scaling bounded.
    """

    x: torch.Tensor
    context_index: torch.Tensor
    y: torch.Tensor
    context_ids: np.ndarray
    loss: float
    correct: torch.Tensor
    finite: bool
    scaling: ScalerRows | None
    bounded: np.ndarray


ContextRows = Callable[[np.ndarray], torch.Tensor]
"""Maps the context ids kept in a replay buffer to bank rows on the model's device."""


class OnlineLearner:
    """Owns a superposed model, its optimiser, an optional replay buffer and the version.

    The version counts applied steps. The model and the optimiser state live on the model's
    device, the replay buffer in host memory. The learner is not thread-safe: a service gives
    it a single writer.

    Args:
        model: The superposed model.
        config: The optimiser, clipping and replay settings.
        model_version: The version to start from.
        replay: Past rows to rehearse; every step mixes `config.replay_per_step` of them in.
        rows_of: Turns the buffer's context ids into bank rows. By default the ids are the bank
            rows; a caller whose bank rows can change between processes stores stable ids.
    """

    def __init__(
        self,
        model: SuperposedModel,
        config: TrainingConfig,
        *,
        model_version: int = 0,
        replay: ReplayBuffer | None = None,
        rows_of: ContextRows | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self._optimizer: torch.optim.Optimizer | None = None
        self.model_version = model_version
        self.refused_steps = 0
        self.replay = replay
        self.rows_of = rows_of or self._bank_rows
        self._prepared: PreparedStep | None = None
        # Keyed by the same context ids as the replay buffer; part of what a checkpoint holds.
        self.scaler = (
            ContextScaler(model.config.input_size)
            if model.config.input_scaling == "context"
            else None
        )

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser, built at its first use: a learner that only ever predicts (a read
        replica) builds none. Building the first optimiser of a process imports
        `torch._dynamo`, about a second."""
        if self._optimizer is None:
            self._optimizer = self.config.build(self.model.parameters())
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _bank_rows(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(ids).to(self.device)

    def step(
        self,
        x: torch.Tensor,
        context_index: torch.Tensor,
        y: torch.Tensor,
        *,
        context_ids: np.ndarray | None = None,
    ) -> StepResult:
        """Scores the minibatch with the current weights, then learns from it and from rows
        replayed from the buffer, which then keeps some of the new rows.

        A non-finite loss or gradient refuses the step: the weights, the optimiser state, the
        buffer's rows and the version stay as they were; the buffer's random generator has
        drawn the replayed rows, so a retry may replay other rows.

        Args:
            x: `(B, *input_shape)` or `(B, prod(input_shape))` float inputs.
            context_index: `(B,)` int64 bank rows.
            y: `(B,)` int64 class labels.
            context_ids: `(B,)` int64 ids the buffer keeps the rows under and the input
                scaling follows; the bank rows when None.
        """
        return self.commit_step(self.prepare_step(x, context_index, y, context_ids=context_ids))

    def prepare_step(
        self,
        x: torch.Tensor,
        context_index: torch.Tensor,
        y: torch.Tensor,
        *,
        context_ids: np.ndarray | None = None,
    ) -> PreparedStep:
        """The first half of `step` (same arguments): the forward and backward passes, which
        leave the gradients on the parameters and change no weight. Readers of the weights
        need not wait for it; `commit_step` then updates them, and must come before the next
        `prepare_step`.
        """
        fresh = len(y)
        x = x.reshape(fresh, -1)
        ids = context_ids if context_ids is not None else context_index.cpu().numpy()
        scaling, bounded = None, np.zeros(fresh, dtype=bool)
        all_x, all_index, all_y = x, context_index, y
        replayed = self._replayed_rows()
        if replayed is not None:
            all_x = torch.cat([x, replayed.inputs])
            all_index = torch.cat([context_index, replayed.rows])
            all_y = torch.cat([y, replayed.labels])
        if self.scaler is not None:
            # The rows are scaled as a prediction made now would scale them, so `correct` is
            # exactly the test-then-train score; their statistics join on commit. The buffer
            # keeps rows as they were sent, so replayed rows are scaled in the same call.
            all_ids = ids if replayed is None else np.concatenate([ids, replayed.ids])
            scaled, scaling = self.scaler.transform_and_fold(all_ids, all_x, fresh)
            all_x, bounded = scaled.inputs, scaled.bounded[:fresh]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(all_x, all_index)
        correct = (logits[:fresh].detach().argmax(dim=1) == y).cpu()
        loss = F.cross_entropy(logits, all_y)
        loss_value = float(loss.detach())
        finite = bool(torch.isfinite(loss.detach()))
        if finite:
            loss.backward()
            finite = self._finite_gradients_clipped()
        prepared = PreparedStep(
            x, context_index, y, ids, loss_value, correct, finite, scaling, bounded
        )
        self._prepared = prepared
        return prepared

    def commit_step(self, prepared: PreparedStep) -> StepResult:
        """The second half of `step`: the optimiser's update, the new version and the rows the
        buffer keeps, or, for a non-finite step, the refusal.

        Raises:
            RuntimeError: `prepared` is not the latest `prepare_step`'s, or was committed.
        """
        if prepared is not self._prepared:
            raise RuntimeError("commit_step takes the latest prepare_step's result, once")
        self._prepared = None
        if prepared.finite:
            self.optimizer.step()
            self.model_version += 1
            if self.scaler is not None and prepared.scaling is not None:
                self.scaler.apply(prepared.scaling)
            self._remember(prepared.x, prepared.y, prepared.context_ids)
            return StepResult(
                True, prepared.loss, prepared.correct, self.model_version, prepared.bounded
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.refused_steps += 1
        return StepResult(
            False, prepared.loss, prepared.correct, self.model_version, prepared.bounded
        )

    def discard_prepared_step(self) -> None:
        """Forgets a prepared step and its gradients: one prepared on weights that have since
        been replaced (a checkpoint restored) must never be committed."""
        self._prepared = None
        self.optimizer.zero_grad(set_to_none=True)

    def _replayed_rows(self) -> _Replayed | None:
        """`config.replay_per_step` rows drawn from the buffer, on the model's device, as they
        were sent."""
        if self.replay is None or not len(self.replay) or not self.config.replay_per_step:
            return None
        inputs, ids, labels = self.replay.sample(self.config.replay_per_step)
        device = self.device
        return _Replayed(
            torch.from_numpy(inputs).to(device),
            ids,
            self.rows_of(ids),
            torch.from_numpy(labels).to(device),
        )

    def _finite_gradients_clipped(self) -> bool:
        """Whether every gradient is finite, after clipping them to `config.clip_norm`."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.config.clip_norm is None:
            return _all_finite(grads)
        # The global norm is non-finite exactly when a gradient element is, so it is the check.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        return bool(torch.isfinite(norm))

    def _remember(self, x: torch.Tensor, y: torch.Tensor, context_ids: np.ndarray) -> None:
        if self.replay is None:
            return
        self.replay.add(x.detach().cpu().numpy(), context_ids, y.cpu().numpy())

    @torch.inference_mode()
    def predict(
        self,
        x: torch.Tensor,
        context_index: torch.Tensor,
        *,
        context_ids: np.ndarray | None = None,
    ) -> torch.Tensor:
        """Class probabilities.

        Args:
            x: `(B, *input_shape)` or `(B, prod(input_shape))` float inputs.
            context_index: `(B,)` int64 bank rows; rows may differ.
            context_ids: `(B,)` int64 ids the inputs are scaled under, as in `step`; the bank
                rows when None.

        Returns:
            `(B, num_classes)` float32 probabilities on the model's device.
        """
        if self.model.training:  # `eval()` walks every module: not on every prediction
            self.model.eval()
        if self.scaler is not None:
            ids = context_ids if context_ids is not None else context_index.cpu().numpy()
            x = self.scaler.transform(ids, x.reshape(len(x), -1)).inputs
        return torch.softmax(self.model(x, context_index), dim=1)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one host sync.

    The largest magnitude of a tensor is NaN or inf exactly when one of its elements is, and
    `abs().amax()` is several times cheaper than materialising `isfinite()` masks.
    """
    if not tensors:
        return True
    return bool(torch.stack([t.abs().amax() for t in tensors]).isfinite().all())
