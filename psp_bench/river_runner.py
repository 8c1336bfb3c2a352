"""A per-tenant online model from river, the online-learning library a team would otherwise
deploy for per-tenant learning: one model per key, each row predicted, then learned, once.

`river` is standardised inputs into a softmax regression; `river-forest` is an adaptive random
forest (`forest.ARFClassifier`), far slower per row. Neither rehearses: river learns a row when
it arrives, as its users run it.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from river import forest, linear_model, optim, preprocessing
except ImportError as missing:  # pragma: no cover - the bench extra installs it
    raise ImportError(
        "the river baselines need river: pip install 'psp-service[bench]'"
    ) from missing

from psp_core import ContextSpec


def _softmax_regression() -> Any:
    return preprocessing.StandardScaler() | linear_model.SoftmaxRegression(
        optimizer=optim.SGD(0.05)
    )


def _adaptive_forest() -> Any:
    return forest.ARFClassifier(n_models=10, seed=0)


class RiverRunner:
    """One river classifier per key.

    Args:
        forest: An adaptive random forest per key, not a softmax regression.
    """

    def __init__(self, *, forest: bool = False) -> None:
        self.build = _adaptive_forest if forest else _softmax_regression
        self.models: dict[str, Any] = {}

    def register(self, key: str, spec: ContextSpec) -> None:
        if key not in self.models:
            self.models[key] = self.build()

    def _predict_one(self, model: Any, features: dict[int, float]) -> int:
        guess = model.predict_one(features)
        return -1 if guess is None else int(guess)  # None before the model has seen a class

    def train(self, key: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = self.models[key]
        correct = []
        for row, label in zip(x.reshape(len(x), -1).tolist(), y.tolist(), strict=True):
            features = dict(enumerate(row))
            correct.append(self._predict_one(model, features) == label)
            model.learn_one(features, label)
        return torch.tensor(correct, dtype=torch.bool)

    def send(
        self, key: str, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, wait: bool
    ) -> torch.Tensor:
        """Learns the block row by row: river has no minibatches."""
        return self.train(key, x, y)

    def predict(self, key: str, x: torch.Tensor) -> torch.Tensor:
        model = self.models[key]
        rows = x.reshape(len(x), -1).tolist()
        return torch.tensor([self._predict_one(model, dict(enumerate(r))) for r in rows])

    @property
    def refused_steps(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release."""
