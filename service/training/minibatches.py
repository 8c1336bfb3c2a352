"""Cutting the entries of one apply into training minibatches, each row tagged with the position
of its entry so that a refused step can be traced back to the entries it held."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from psp_core.contexts import derive_seed
from service.model.host import TrainRows
from service.queue.base import QueuedEntry


def minibatches(
    entries: Sequence[QueuedEntry], *, size: int, coalesce: bool, seed: int
) -> list[TrainRows]:
    """Cuts entries into minibatches of `size` rows.

    Coalescing shuffles the rows of all the entries together before cutting, so that a step
    mixes the contexts that were queued instead of holding one client's block. The shuffle is
    seeded by `seed` and the first entry's id: the same entries give the same minibatches, but
    a replay after a restart or a rewind groups the pending entries differently from the reads
    that first applied them, so its minibatches can differ. Without coalescing each entry is
    cut in order on its own, so a replay steps the same minibatches in the same order.
    """
    numbered = list(enumerate(entries))
    groups = [numbered] if coalesce else [[n] for n in numbered]
    batches = []
    for group in groups:
        if group:
            batches += _cut(_group_rows(group, coalesce=coalesce, seed=seed), size)
    return batches


def _group_rows(group: list[tuple[int, QueuedEntry]], *, coalesce: bool, seed: int) -> TrainRows:
    """The rows of a group of numbered entries, shuffled when a coalesced group has several."""
    indices = np.concatenate(
        [np.full(e.entry.size, e.entry.context_index, dtype=np.int64) for _, e in group]
    )
    positions = np.concatenate(
        [np.full(e.entry.size, position, dtype=np.int64) for position, e in group]
    )
    inputs = np.concatenate([e.entry.inputs for _, e in group])
    labels = np.concatenate([e.entry.labels for _, e in group])
    if coalesce and len(group) > 1:
        shuffle_seed = derive_seed("shuffle", seed, group[0][1].entry_id)
        order = np.random.default_rng(shuffle_seed).permutation(len(labels))
        indices, inputs, labels = indices[order], inputs[order], labels[order]
        positions = positions[order]
    return TrainRows(indices, inputs, labels, positions)


def _cut(rows: TrainRows, size: int) -> list[TrainRows]:
    positions = rows.entry_positions
    assert positions is not None
    return [
        TrainRows(
            rows.indices[start : start + size],
            rows.inputs[start : start + size],
            rows.labels[start : start + size],
            positions[start : start + size],
        )
        for start in range(0, len(rows.labels), size)
    ]


def entry_positions(batch: TrainRows) -> list[int]:
    """The positions of the entries whose rows the minibatch holds."""
    if batch.entry_positions is None:
        return []
    return [int(p) for p in np.unique(batch.entry_positions)]


def split_by_entry(batch: TrainRows) -> list[TrainRows]:
    """The minibatch's rows, one minibatch per entry, in the order of the entries."""
    positions = batch.entry_positions
    assert positions is not None
    parts = []
    for position in entry_positions(batch):
        mine = positions == position
        parts.append(
            TrainRows(batch.indices[mine], batch.inputs[mine], batch.labels[mine], positions[mine])
        )
    return parts
