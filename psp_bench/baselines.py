"""Continual-learning baselines: one network per task, and online EWC.

Online EWC (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting in neural networks";
online variant of Schwarz et al., 2018, "Progress & Compress") keeps one running diagonal Fisher
`F` and one anchor `θ*`. At the end of task `t`:

    F ← γ F + F_t,    θ* ← θ,

where `F_t` is the diagonal Fisher information of task `t` at the current weights,
`F_t = E_x Σ_c p(c|x) (∂ log p(c|x) / ∂θ)²`, taken exactly over the classes and averaged over a
sample of the task's inputs. While later tasks train, the loss is

    L = CE + (λ / 2) Σ_i F_i (θ_i - θ*_i)².

The state is two copies of the parameters, whatever the number of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

from psp_core import ModelConfig, OnlineLearner, StepResult, TrainingConfig, build_model
from psp_core.models import SuperposedModel

# Jacobian entries held at once while estimating the Fisher (16 MiB of float32): bounds the memory
# of the per-example, per-class gradients, and chunks that fit the CPU cache measured fastest.
_FISHER_CHUNK_FLOATS = 2**22


@dataclass(frozen=True)
class EWCConfig:
    """Online EWC's hyperparameters."""

    lam: float = 10.0  # λ; larger values make SGD at lr 0.05 diverge after some tasks
    gamma: float = 1.0  # γ, how much of the earlier Fisher is kept at each consolidation
    samples: int = 256  # inputs of the finished task used to estimate its Fisher

    def __post_init__(self) -> None:
        if self.lam < 0 or not 0 <= self.gamma <= 1 or self.samples < 1:
            raise ValueError("EWC needs λ >= 0, 0 <= γ <= 1 and at least one Fisher sample")


class SeparateModels:
    """One independent plain network and optimiser per key, created when the key first appears.

    Network `n` (in order of creation) is initialised from seed `config.seed + n`.
    """

    def __init__(self, config: ModelConfig, training: TrainingConfig) -> None:
        self.config = replace(config, kind="none", local_mix=False)
        self.training = training
        self.learners: dict[str, OnlineLearner] = {}

    def learner(self, key: str) -> OnlineLearner:
        """The network of `key`, built on first use."""
        if key not in self.learners:
            model = build_model(replace(self.config, seed=self.config.seed + len(self.learners)))
            self.learners[key] = OnlineLearner(model, self.training)
        return self.learners[key]


class OnlineEWC:
    """A plain network trained with the online EWC penalty (see the module docstring).

    Attributes:
        model: The network; `kind` must be `none`.
        fisher: The running diagonal Fisher per parameter, or None before the first task ends.
        anchor: The weights at the last consolidation, or None before it.
    """

    def __init__(self, model: SuperposedModel, training: TrainingConfig, config: EWCConfig) -> None:
        if model.config.kind != "none":
            raise ValueError("online EWC runs on a plain network (kind 'none')")
        self.model = model
        self.config = config
        self.optimizer = training.build(model.parameters())
        self.fisher: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None
        self.model_version = 0
        self.refused_steps = 0

    def _rows(self, batch: int) -> torch.Tensor:
        # A plain network ignores the context; the forward pass still takes one row per example.
        return torch.zeros(batch, dtype=torch.long, device=self.model.device)

    def penalty(self) -> torch.Tensor:
        """`(λ / 2) Σ_i F_i (θ_i - θ*_i)²`, a scalar; zero before the first consolidation."""
        if self.fisher is None or self.anchor is None:
            return torch.zeros((), device=self.model.device)
        total = sum(
            (f * (p - a).pow(2)).sum()
            for f, p, a in zip(self.fisher, self.model.parameters(), self.anchor, strict=True)
        )
        assert isinstance(total, torch.Tensor)
        return 0.5 * self.config.lam * total

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """Scores the minibatch, then takes one step on cross-entropy plus the penalty.

        A non-finite loss or gradient refuses the step, as `OnlineLearner.step` does.

        Args:
            x: `(B, D)` float inputs.
            y: `(B,)` int64 labels.
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x, self._rows(len(x)))
        correct = (logits.detach().argmax(dim=1) == y).cpu()
        loss = F.cross_entropy(logits, y) + self.penalty()
        loss_value = float(loss.detach())
        if torch.isfinite(loss.detach()):
            loss.backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if all(bool(g.isfinite().all()) for g in grads):
                self.optimizer.step()
                self.model_version += 1
                return StepResult(True, loss_value, correct, self.model_version)
        self.optimizer.zero_grad(set_to_none=True)
        self.refused_steps += 1
        return StepResult(False, loss_value, correct, self.model_version)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, num_classes)` class probabilities for `(B, D)` inputs."""
        self.model.eval()
        return torch.softmax(self.model(x, self._rows(len(x))), dim=1)

    def task_fisher(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The diagonal Fisher `E_x Σ_c p(c|x) (∂ log p(c|x) / ∂θ)²` at the current weights.

        Args:
            x: `(N, D)` inputs of the task.

        Returns:
            One tensor per parameter, shaped like it.
        """
        self.model.eval()
        names = [name for name, _ in self.model.named_parameters()]
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        row = self._rows(1)

        def log_probs(weights: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.model, weights, (example.unsqueeze(0), row))
            return torch.log_softmax(logits, dim=1).squeeze(0)  # (C,)

        per_example = vmap(jacrev(log_probs), in_dims=(None, 0))
        classes = self.model.config.num_classes
        size = sum(p.numel() for p in params.values())
        chunk = max(1, _FISHER_CHUNK_FLOATS // (classes * size))
        fisher = {name: torch.zeros_like(p) for name, p in params.items()}
        for start in range(0, len(x), chunk):
            part = x[start : start + chunk]
            jacobians = per_example(params, part)  # name -> (b, C, *shape)
            with torch.no_grad():
                probs = torch.softmax(self.model(part, self._rows(len(part))), dim=1)  # (b, C)
            for name in names:
                jac = jacobians[name]
                weight = probs.reshape(*probs.shape, *([1] * (jac.dim() - 2)))
                fisher[name] += (weight * jac.pow(2)).sum(dim=(0, 1))
        return [fisher[name] / len(x) for name in names]

    def consolidate(self, x: torch.Tensor) -> None:
        """Ends a task: `F ← γ F + F_t` from inputs `x` `(N, D)` of that task, and `θ* ← θ`."""
        task = self.task_fisher(x)
        if self.fisher is None:
            self.fisher = task
        else:
            self.fisher = [
                self.config.gamma * old + new for old, new in zip(self.fisher, task, strict=True)
            ]
        self.anchor = [p.detach().clone() for p in self.model.parameters()]
