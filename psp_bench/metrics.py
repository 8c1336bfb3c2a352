"""Continual-learning metrics computed from the accuracy matrix; pure functions.

`R[i][j]` is the test accuracy on task `j` after the segment that trains task `i` (of the last
cycle), for `T` tasks. Entries that were not measured (a task not trained yet) are NaN.

- average accuracy (Lopez-Paz & Ranzato, 2017): `ACC = (1/T) Σ_j R[T-1][j]`, the macro mean of
  the final accuracies.
- forgetting (Chaudhry et al., 2018): `f_j = max_{i < T-1} R[i][j] - R[T-1][j]`, the drop from
  the best earlier accuracy on task `j` to the final one, averaged over `j < T-1` (the last task
  has no earlier accuracy after its training).
- backward transfer (Lopez-Paz & Ranzato, 2017): `BWT = (1/(T-1)) Σ_{j<T-1} (R[T-1][j] - R[j][j])`,
  how training later tasks changed the accuracy on earlier ones (negative means forgetting).
- prequential accuracy (Dawid, 1984): the share of training examples predicted right by the
  model just before it learns from them (test-then-train), over the whole stream.

With a single task, forgetting and BWT have no earlier task to measure and are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def _square(matrix: Matrix) -> np.ndarray:
    r = np.asarray(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square and non-empty, not {r.shape}")
    return r


def average_accuracy(matrix: Matrix) -> float:
    """The macro mean of the final row, `(1/T) Σ_j R[T-1][j]`."""
    return float(np.mean(_square(matrix)[-1]))


def forgetting(matrix: Matrix) -> float:
    """Mean over `j < T-1` of `max_{i < T-1} R[i][j] - R[T-1][j]` (NaN entries skipped)."""
    r = _square(matrix)
    tasks = r.shape[0]
    if tasks == 1:
        return 0.0
    best_before = np.nanmax(r[:-1, :-1], axis=0)  # rows i < T-1, columns j < T-1
    return float(np.mean(best_before - r[-1, :-1]))


def backward_transfer(matrix: Matrix) -> float:
    """`(1/(T-1)) Σ_{j<T-1} (R[T-1][j] - R[j][j])`."""
    r = _square(matrix)
    tasks = r.shape[0]
    if tasks == 1:
        return 0.0
    return float(np.mean(r[-1, :-1] - np.diagonal(r)[:-1]))


def prequential_accuracy(correct: int, seen: int) -> float:
    """Examples predicted right before being learned, over examples seen."""
    if seen <= 0:
        raise ValueError("prequential accuracy needs at least one example")
    return correct / seen


def window_summary(values: Sequence[float]) -> dict[str, float]:
    """The minimum and the mean of a stretch of an accuracy curve."""
    if not values:
        raise ValueError("the window holds no measurement")
    array = np.asarray(values, dtype=np.float64)
    return {"min": float(array.min()), "mean": float(array.mean())}
