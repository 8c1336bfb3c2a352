"""Per-context input standardisation: no context's inputs weigh more than its share.

Contexts share every weight, so a context whose inputs are a million times larger than the
others' would own every gradient: global gradient clipping would scale everyone else's share of
a step down to nothing, and the optimiser's running moments would follow it alone. A model that
standardises its inputs per context gives every context the same scale:

- each context keeps the running count, mean and variance of all the values it has sent (one
  mean and one variance over every feature, so the relative scale of its features is kept and
  its model stays an affine function of what it sent); its rows are shifted by the mean and
  divided by the standard deviation;
- each standardised row's root mean square is then bounded by `row_bound`, so that even a row far
  from its context's usual values moves the weights no more than a few ordinary rows would.

The statistics are kept in float64, so any float32 input (up to 3.4e38) standardises to a finite
row. They follow the most recent `memory_rows` rows of each context, so a context whose inputs
change scale is standardised by its new scale soon. A context's rows are standardised with
statistics that already include them (`fold`), so its very first rows are on the common scale
too.

Contexts are named by the caller's stable ids (a model's bank rows, or a registry's indices), as
in the replay buffer; the scaler never interprets them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_ROW_BOUND = 4.0
"""The largest root mean square of a standardised row: four times a typical row's."""

DEFAULT_MEMORY_ROWS = 10_000
"""The rows of a context whose values its statistics follow; older rows fade out."""


@dataclass(frozen=True)
class ScalerRows:
    """The statistics of some contexts: ids, and the count, mean and sum of squared deviations
    of the values each has sent (float64)."""

    ids: np.ndarray
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls) -> ScalerRows:
        none = np.zeros(0, dtype=np.float64)
        return cls(np.zeros(0, dtype=np.int64), none, none.copy(), none.copy())


@dataclass(frozen=True)
class Scaled:
    """Standardised rows.

    Attributes:
        inputs: float32 `(n, width)` on the inputs' device.
        bounded: bool `(n,)` on the CPU: rows whose root mean square `row_bound` brought down.
    """

    inputs: torch.Tensor
    bounded: np.ndarray


class ContextScaler:
    """The running statistics of every context's inputs, and the transform they define.

    Args:
        width: Values per row.
        row_bound: The largest root mean square of a standardised row.
        memory_rows: The rows of a context whose values its statistics follow.
    """

    def __init__(
        self,
        width: int,
        *,
        row_bound: float = DEFAULT_ROW_BOUND,
        memory_rows: int = DEFAULT_MEMORY_ROWS,
    ) -> None:
        if not row_bound > 0 or memory_rows < 1:
            raise ValueError("row_bound must be positive and memory_rows at least 1")
        self.width = width
        self.row_bound = row_bound
        self.memory_values = float(memory_rows) * width
        self._stats = ScalerRows.empty()  # sorted by id

    def __len__(self) -> int:
        return len(self._stats.ids)

    # Reading ----------------------------------------------------------------------------------

    def rows(self, ids: np.ndarray | None = None) -> ScalerRows:
        """The statistics of `ids` that the scaler knows (all of them when None)."""
        stats = self._stats
        if ids is None:
            return stats
        slots, found = self._find(np.unique(np.asarray(ids, dtype=np.int64)))
        slots = slots[found]
        return ScalerRows(stats.ids[slots], stats.count[slots], stats.mean[slots], stats.m2[slots])

    def transform(
        self, ids: np.ndarray, inputs: torch.Tensor, pending: ScalerRows | None = None
    ) -> Scaled:
        """Standardises `inputs` `(n, width)` by the statistics of each row's context.

        Args:
            ids: int64 `(n,)` context ids.
            inputs: The rows, on any device.
            pending: Statistics that override the stored ones (a `fold` not yet `apply`d).
                A context known to neither is only bounded, not shifted or scaled.
        """
        shift, scale = self._shift_and_scale(np.asarray(ids, dtype=np.int64), pending)
        device = inputs.device
        z = inputs.reshape(len(ids), -1).to(torch.float64)
        z = (z - torch.from_numpy(shift).to(device)[:, None]) / torch.from_numpy(scale).to(device)[
            :, None
        ]
        rms = z.square().mean(dim=1).sqrt()
        over = rms > self.row_bound
        z = z * torch.where(over, self.row_bound / rms, torch.ones_like(rms))[:, None]
        return Scaled(z.to(torch.float32), over.cpu().numpy())

    def _shift_and_scale(
        self, ids: np.ndarray, pending: ScalerRows | None
    ) -> tuple[np.ndarray, np.ndarray]:
        shift = np.zeros(len(ids), dtype=np.float64)
        scale = np.ones(len(ids), dtype=np.float64)
        for stats in (self._stats, pending):
            if stats is None or not len(stats.ids):
                continue
            slots = np.minimum(np.searchsorted(stats.ids, ids), len(stats.ids) - 1)
            known = stats.ids[slots] == ids
            counts = stats.count[slots[known]]
            shift[known] = stats.mean[slots[known]]
            std = np.sqrt(stats.m2[slots[known]] / counts)
            # A context whose values never varied is only shifted; the row bound still holds.
            scale[known] = np.where(std > 0, std, 1.0)
        return shift, scale

    # Learning ---------------------------------------------------------------------------------

    def fold(self, ids: np.ndarray, inputs: torch.Tensor) -> ScalerRows:
        """The statistics of the contexts of `ids` once `inputs` are added; nothing is stored
        until `apply` (a refused training step leaves the scaler as it was)."""
        ids = np.asarray(ids, dtype=np.int64)
        values = inputs.reshape(len(ids), -1).to(torch.float64)
        row_sums = values.sum(dim=1).cpu().numpy()
        row_squares = values.square().sum(dim=1).cpu().numpy()
        contexts, where = np.unique(ids, return_inverse=True)
        k = np.bincount(where, minlength=len(contexts)).astype(np.float64) * values.shape[1]
        batch_mean = np.bincount(where, weights=row_sums, minlength=len(contexts)) / k
        squares = np.bincount(where, weights=row_squares, minlength=len(contexts))
        batch_m2 = np.maximum(squares - k * batch_mean**2, 0.0)
        old = self._aligned(contexts)
        # Older values fade once a context has sent more than `memory_rows` rows.
        kept = np.minimum(old.count, self.memory_values)
        old_m2 = np.where(old.count > 0, old.m2 * kept / np.maximum(old.count, 1.0), 0.0)
        total = kept + k
        delta = batch_mean - old.mean
        mean = old.mean + delta * k / total
        m2 = old_m2 + batch_m2 + delta**2 * kept * k / total
        return ScalerRows(contexts, total, mean, m2)

    def apply(self, update: ScalerRows) -> None:
        """Stores statistics (a `fold`, or rows copied from another scaler)."""
        if not len(update.ids):
            return
        stats = self._stats
        slots, found = self._find(update.ids)
        count, mean, m2 = stats.count.copy(), stats.mean.copy(), stats.m2.copy()
        count[slots[found]] = update.count[found]
        mean[slots[found]] = update.mean[found]
        m2[slots[found]] = update.m2[found]
        new = ~found
        ids = np.concatenate([stats.ids, update.ids[new]])
        order = np.argsort(ids, kind="stable")
        self._stats = ScalerRows(
            ids[order],
            np.concatenate([count, update.count[new]])[order],
            np.concatenate([mean, update.mean[new]])[order],
            np.concatenate([m2, update.m2[new]])[order],
        )

    def forget(self, ids: set[int] | list[int]) -> None:
        """Drops the statistics of these contexts (deleted ones)."""
        keep = ~np.isin(self._stats.ids, np.asarray(sorted(ids), dtype=np.int64))
        stats = self._stats
        self._stats = ScalerRows(
            stats.ids[keep], stats.count[keep], stats.mean[keep], stats.m2[keep]
        )

    def _find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's slot among the stored ids, and whether it is stored there."""
        stored = self._stats.ids
        if not len(stored):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        slots = np.minimum(np.searchsorted(stored, ids), len(stored) - 1)
        return slots, stored[slots] == ids

    def _aligned(self, ids: np.ndarray) -> ScalerRows:
        """The stored statistics of `ids`, zeros for the ones not stored, in the order given."""
        slots, found = self._find(ids)
        stats = self._stats
        zeros = np.zeros(len(ids), dtype=np.float64)
        count, mean, m2 = zeros.copy(), zeros.copy(), zeros.copy()
        count[found] = stats.count[slots[found]]
        mean[found] = stats.mean[slots[found]]
        m2[found] = stats.m2[slots[found]]
        return ScalerRows(ids, count, mean, m2)

    # Checkpoints ------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The statistics as CPU tensors."""
        stats = self._stats
        return {
            "ids": torch.from_numpy(stats.ids.copy()),
            "count": torch.from_numpy(stats.count.copy()),
            "mean": torch.from_numpy(stats.mean.copy()),
            "m2": torch.from_numpy(stats.m2.copy()),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replaces the statistics with saved ones (empty when `tensors` is)."""
        if not tensors:
            self._stats = ScalerRows.empty()
            return
        ids = tensors["ids"].numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        self._stats = ScalerRows(
            ids[order],
            tensors["count"].numpy().astype(np.float64)[order],
            tensors["mean"].numpy().astype(np.float64)[order],
            tensors["m2"].numpy().astype(np.float64)[order],
        )
