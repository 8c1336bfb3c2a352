"""The online learner: test-then-train steps over mixed-context minibatches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from psp_core.models import SuperposedModel


@dataclass(frozen=True)
class TrainingConfig:
    """How the learner updates the shared weights."""

    optimizer: str = "sgd"  # sgd, adam or rmsprop
    lr: float = 0.05  # step size of every optimiser
    momentum: float = 0.9  # sgd and rmsprop momentum; adam uses its default betas

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam", "rmsprop"):
            raise ValueError(f"optimizer must be sgd, adam or rmsprop, not {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build(self, params: Any) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.RMSprop(params, lr=self.lr, momentum=self.momentum)


@dataclass(frozen=True)
class StepResult:
    """What one `OnlineLearner.step` did.

    Attributes:
        applied: False when the step was refused because the loss or a gradient was non-finite.
        loss: The mean cross-entropy of the minibatch before the update.
        correct: `(B,)` bool on the CPU: the model's prediction before the update was right
            (the prequential, test-then-train score of each example).
        model_version: The version after this step.
    """

    applied: bool
    loss: float
    correct: torch.Tensor
    model_version: int

    @property
    def accuracy(self) -> float:
        """The prequential accuracy of this minibatch."""
        return float(self.correct.float().mean()) if self.correct.numel() else 0.0


class OnlineLearner:
    """Owns a superposed model, its optimiser and the version counter.

    The version counts applied steps. The model and the optimiser state live on the model's
    device. The learner is not thread-safe: a service gives it a single writer.
    """

    def __init__(
        self, model: SuperposedModel, config: TrainingConfig, *, model_version: int = 0
    ) -> None:
        self.model = model
        self.config = config
        self.optimizer = config.build(model.parameters())
        self.model_version = model_version
        self.refused_steps = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    def step(self, x: torch.Tensor, context_index: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Scores the minibatch with the current weights, then learns from it.

        A non-finite loss or gradient refuses the step: the weights, the optimiser state and the
        version stay exactly as they were.

        Args:
            x: `(B, *input_shape)` or `(B, prod(input_shape))` float inputs.
            context_index: `(B,)` int64 bank rows.
            y: `(B,)` int64 class labels.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x, context_index)
        correct = (logits.detach().argmax(dim=1) == y).cpu()
        loss = F.cross_entropy(logits, y)
        loss_value = float(loss.detach())
        if torch.isfinite(loss.detach()):
            loss.backward()
            if _all_finite([p.grad for p in self.model.parameters() if p.grad is not None]):
                self.optimizer.step()
                self.model_version += 1
                return StepResult(True, loss_value, correct, self.model_version)
        self.optimizer.zero_grad(set_to_none=True)
        self.refused_steps += 1
        return StepResult(False, loss_value, correct, self.model_version)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, context_index: torch.Tensor) -> torch.Tensor:
        """Class probabilities.

        Args:
            x: `(B, *input_shape)` or `(B, prod(input_shape))` float inputs.
            context_index: `(B,)` int64 bank rows; rows may differ.

        Returns:
            `(B, num_classes)` float32 probabilities on the model's device.
        """
        self.model.eval()
        return torch.softmax(self.model(x, context_index), dim=1)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one host sync.

    The largest magnitude of a tensor is NaN or inf exactly when one of its elements is, and
    `abs().amax()` is several times cheaper than materialising `isfinite()` masks.
    """
    if not tensors:
        return True
    return bool(torch.stack([t.abs().amax() for t in tensors]).isfinite().all())
