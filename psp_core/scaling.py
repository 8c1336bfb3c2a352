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
change scale is standardised by its new scale soon. A training step standardises its rows
with the statistics from before them, as a prediction made at that moment would (so the step's
test-then-train score is honest), and folds them in once it is applied. A context's very first
rows, with no statistics yet, are only bounded.

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

    The statistics live in arrays with one slot per context, plus each context's shift and
    inverse scale ready for the transform, so that a step or a prediction costs a few array
    operations whatever the number of contexts. Slot 0 belongs to no context: every id the
    scaler does not know reads it, and it holds no values (count 0), a shift of 0 and a scale
    of 1, so unknown contexts need no masks on the hot path.

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
        self._table: np.ndarray  # context id -> its slot in the arrays, 0 for none
        self._size: int  # slots in use, slot 0 included
        self._ids: np.ndarray
        self._count: np.ndarray
        self._mean: np.ndarray
        self._m2: np.ndarray
        self._shift: np.ndarray
        self._inverse_scale: np.ndarray
        self._clear()

    def __len__(self) -> int:
        return self._size - 1

    def _slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Each id's slot, 0 where the scaler keeps none."""
        if not len(ids) or int(ids.max()) < len(self._table):
            return self._table[ids]
        inside = ids < len(self._table)
        slots = np.zeros(len(ids), dtype=np.int64)
        slots[inside] = self._table[ids[inside]]
        return slots

    # Reading ----------------------------------------------------------------------------------

    def rows(self, ids: np.ndarray | None = None) -> ScalerRows:
        """The statistics of `ids` that the scaler knows (all of them when None)."""
        if ids is None:
            slots = np.arange(1, self._size)
        else:
            found = self._slots_of(np.unique(np.asarray(ids, dtype=np.int64)))
            slots = found[found > 0]
        return ScalerRows(
            self._ids[slots].copy(),
            self._count[slots].copy(),
            self._mean[slots].copy(),
            self._m2[slots].copy(),
        )

    def transform(self, ids: np.ndarray, inputs: torch.Tensor) -> Scaled:
        """Standardises `inputs` `(n, width)`, on any device, by the statistics of each row's
        context `ids` `(n,)`; a context the scaler does not know is only bounded."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = inputs.reshape(len(ids), -1)
        slots = self._slots_of(ids)
        if rows.device.type != "cpu":
            return self._transform_on(rows, slots)
        return self._standardised(_float64_rows(rows, len(ids)), slots)

    def transform_and_fold(
        self, ids: np.ndarray, inputs: torch.Tensor, fresh: int
    ) -> tuple[Scaled, ScalerRows]:
        """A training step's scaling in one pass: `transform(ids, inputs)`, and the `fold` of
        the first `fresh` rows (the new ones; the rest are replayed and already counted)."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = inputs.reshape(len(ids), -1)
        if rows.device.type != "cpu":
            return self.transform(ids, rows), self.fold(ids[:fresh], rows[:fresh])
        values = _float64_rows(rows, len(ids))
        update = self._folded(ids[:fresh], values[:fresh])  # before `values` change in place
        return self._standardised(values, self._slots_of(ids)), update

    def _standardised(self, values: np.ndarray, slots: np.ndarray) -> Scaled:
        """Standardises float64 host rows in place, each by its slot's statistics, and bounds
        their size."""
        values -= self._shift[slots][:, None]
        values *= self._inverse_scale[slots][:, None]
        mean_square = np.einsum("ij,ij->i", values, values) / max(values.shape[1], 1)
        over = mean_square > self.row_bound**2
        if over.any():
            values[over] *= (self.row_bound / np.sqrt(mean_square[over]))[:, None]
        return Scaled(torch.from_numpy(values.astype(np.float32)), over)

    def _transform_on(self, rows: torch.Tensor, slots: np.ndarray) -> Scaled:
        """`transform` on an accelerator, where the rows already are."""
        device = rows.device
        shift = torch.from_numpy(self._shift[slots]).to(device)[:, None]
        inverse_scale = torch.from_numpy(self._inverse_scale[slots]).to(device)[:, None]
        z = (rows.to(torch.float64) - shift) * inverse_scale
        rms = z.square().mean(dim=1).sqrt()
        over = rms > self.row_bound
        z = z * torch.where(over, self.row_bound / rms, torch.ones_like(rms))[:, None]
        return Scaled(z.to(torch.float32), over.cpu().numpy())

    # Learning ---------------------------------------------------------------------------------

    def fold(self, ids: np.ndarray, inputs: torch.Tensor) -> ScalerRows:
        """The statistics of the contexts of `ids` once `inputs` are added; nothing is stored
        until `apply` (a refused training step leaves the scaler as it was)."""
        ids = np.asarray(ids, dtype=np.int64)
        return self._folded(ids, _float64_rows(inputs, len(ids)))

    def _folded(self, ids: np.ndarray, values: np.ndarray) -> ScalerRows:
        """`fold` of float64 host rows; the contexts come out sorted."""
        contexts, which = np.unique(ids, return_inverse=True)
        width = values.shape[1]
        k = np.bincount(which).astype(np.float64) * width
        batch_mean = np.bincount(which, weights=values.sum(axis=1)) / k
        squares = np.bincount(which, weights=np.einsum("ij,ij->i", values, values))
        batch_m2 = np.maximum(squares - k * batch_mean**2, 0.0)
        slots = self._slots_of(contexts)
        old_count, old_mean = self._count[slots], self._mean[slots]
        # Older values fade once a context has sent more than `memory_rows` rows.
        kept = np.minimum(old_count, self.memory_values)
        old_m2 = self._m2[slots] * kept / np.maximum(old_count, 1.0)
        total = kept + k
        delta = batch_mean - old_mean
        mean = old_mean + delta * k / total
        m2 = old_m2 + batch_m2 + delta**2 * kept * k / total
        return ScalerRows(contexts, total, mean, m2)

    def apply(self, update: ScalerRows) -> None:
        """Stores statistics (a `fold`, or rows copied from another scaler)."""
        if not len(update.ids):
            return
        slots = self._slots_of(update.ids)
        new = slots == 0
        if new.any():
            slots[new] = self._grow(update.ids[new])
        self._count[slots] = update.count
        self._mean[slots] = update.mean
        self._m2[slots] = update.m2
        std = np.sqrt(update.m2 / np.maximum(update.count, 1.0))
        # A context whose values never varied is only shifted; the row bound still holds.
        self._shift[slots] = update.mean
        self._inverse_scale[slots] = 1.0 / np.where(std > 0, std, 1.0)

    def _grow(self, ids: np.ndarray) -> np.ndarray:
        """Gives new contexts slots, doubling the arrays when they are full; their slots."""
        start, end = self._size, self._size + len(ids)
        if end > len(self._ids):
            capacity = max(end, 2 * len(self._ids), 64)
            for name in ("_ids", "_count", "_mean", "_m2", "_shift", "_inverse_scale"):
                old = getattr(self, name)
                grown = np.zeros(capacity, dtype=old.dtype)
                grown[:start] = old[:start]
                setattr(self, name, grown)
        highest = int(ids.max())
        if highest >= len(self._table):
            table = np.zeros(max(highest + 1, 2 * len(self._table), 64), dtype=np.int64)
            table[: len(self._table)] = self._table
            self._table = table
        slots = np.arange(start, end)
        self._table[ids] = slots
        self._ids[start:end] = ids
        self._size = end
        return slots

    def forget(self, ids: set[int] | list[int]) -> None:
        """Drops the statistics of these contexts (deleted ones)."""
        gone = np.asarray(sorted(int(i) for i in ids), dtype=np.int64)
        if not (self._slots_of(gone) > 0).any():
            return
        everything = self.rows()
        keep = ~np.isin(everything.ids, gone)
        self._clear()
        self.apply(
            ScalerRows(
                everything.ids[keep],
                everything.count[keep],
                everything.mean[keep],
                everything.m2[keep],
            )
        )

    def _clear(self) -> None:
        """Forgets every context's statistics, leaving slot 0 (no context: shift 0, scale 1)."""
        # Ids are small non-negative integers (bank rows, registry indices), so a dense table
        # is the fastest lookup.
        self._table = np.zeros(0, dtype=np.int64)
        self._size = 1
        self._ids = np.full(1, -1, dtype=np.int64)
        self._count = np.zeros(1, dtype=np.float64)
        self._mean = np.zeros(1, dtype=np.float64)
        self._m2 = np.zeros(1, dtype=np.float64)
        self._shift = np.zeros(1, dtype=np.float64)
        self._inverse_scale = np.ones(1, dtype=np.float64)

    # Checkpoints ------------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The statistics as CPU tensors."""
        stats = self.rows()
        return {
            "ids": torch.from_numpy(stats.ids),
            "count": torch.from_numpy(stats.count),
            "mean": torch.from_numpy(stats.mean),
            "m2": torch.from_numpy(stats.m2),
        }

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replaces the statistics with saved ones (empty when `tensors` is)."""
        self._clear()
        if not tensors:
            return
        self.apply(
            ScalerRows(
                tensors["ids"].numpy().astype(np.int64),
                tensors["count"].numpy().astype(np.float64),
                tensors["mean"].numpy().astype(np.float64),
                tensors["m2"].numpy().astype(np.float64),
            )
        )


def _float64_rows(inputs: torch.Tensor, count: int) -> np.ndarray:
    """The rows as a float64 host array: any float32 input then standardises to a finite
    row."""
    rows = inputs.detach().reshape(count, -1)
    if rows.device.type != "cpu":
        rows = rows.cpu()
    return rows.numpy().astype(np.float64)
