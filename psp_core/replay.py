"""Rehearsal: a bounded memory of past rows that every training step mixes back in.

A stream that arrives one tenant at a time (one client's block of rows, then another's) makes
each minibatch pull the shared weights towards one context. Superposition keeps the contexts
apart, but the optimiser's momentum and the shared biases still drift towards whoever spoke
last. Mixing a few rows of the past into every step keeps every context in each gradient.

The memory is a class-balanced reservoir: the contexts share the capacity about equally, so a
quiet tenant keeps its rows while a loud one sends a million. While there is room every row is
kept. Once full, a new row looks at a few random rows of the buffer (so large contexts are
found in proportion to their size) and takes the place of the first whose context holds more
than an equal share of the capacity and more rows than its own; a context below its share is
never evicted. When no probe finds such a row, the row's context already holds its share, and
the row replaces one of its context's own rows with probability `held / seen`, as plain
reservoir sampling does within that context.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import torch

DEFAULT_REPLAY_ROWS = 100_000
"""27 MB at 64 inputs per row: about 400 rows per context for 256 contexts."""

EVICTION_PROBES = 8
"""Random rows a new row inspects for a context larger than its own. A context holding a share
`s` of a full buffer is missed by all probes with probability `(1 - s) ** 8`."""


class ReplayBuffer:
    """Past `(input, context id, label)` rows, balanced over contexts, on the CPU.

    Context ids are the caller's stable names for contexts (a model's bank rows, or a
    registry's indices); the buffer never interprets them.

    Memory: `capacity * (4 * input_size + 16)` bytes, allocated up front.

    Args:
        capacity: Rows kept at most.
        input_size: Floats per row.
        seed: Seeds the buffer's own random generator.
        balanced: Share the capacity among contexts (above). False keeps one plain reservoir
            sample of all rows, where contexts hold rows in proportion to what they sent (the
            comparison in docs/benchmarks.md).
    """

    def __init__(
        self, capacity: int, input_size: int, *, seed: int = 0, balanced: bool = True
    ) -> None:
        if capacity < 1:
            raise ValueError("a replay buffer needs a capacity of at least one row")
        self.capacity = capacity
        self.balanced = balanced
        self.input_size = input_size
        self.inputs = np.zeros((capacity, input_size), dtype=np.float32)
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.labels = np.zeros(capacity, dtype=np.int64)
        self._position = np.zeros(capacity, dtype=np.int64)  # slot -> place in its context's list
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.size = 0
        self._slots: dict[int, list[int]] = defaultdict(list)  # context id -> its slots
        self._seen: dict[int, int] = defaultdict(int)  # context id -> rows ever offered
        self._offered = 0  # rows offered by live contexts: the reservoir's denominator
        self._retired: set[int] = set()  # purged contexts, whose rows are refused

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes held by the row arrays."""
        return self.inputs.nbytes + self.ids.nbytes + self.labels.nbytes

    def contexts(self) -> set[int]:
        """The context ids that hold rows."""
        return set(self._slots)

    def rows_of(self, context_id: int) -> int:
        """How many rows of one context the buffer holds."""
        return len(self._slots.get(context_id, ()))

    # Adding -----------------------------------------------------------------------------------

    def add(self, inputs: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> None:
        """Offers rows to the buffer; rows of retired contexts are ignored.

        Args:
            inputs: `(n, input_size)` float32.
            ids: `(n,)` int64 context ids.
            labels: `(n,)` int64 labels.
        """
        count = len(ids)
        # The random numbers of the whole call are drawn at once: a numpy call per row would
        # cost more than the bookkeeping.
        probes = self._rng.integers(self.capacity, size=(count, EVICTION_PROBES)).tolist()
        draws = self._rng.random((count, 2)).tolist()
        context_ids = ids.tolist()
        row_of_slot: dict[int, int] = {}  # a slot claimed twice keeps the later row
        for row in range(count):
            context = context_ids[row]
            if context in self._retired:
                continue
            self._seen[context] += 1
            self._offered += 1
            slot = self._claim_slot(context, probes[row], draws[row])
            if slot is not None:
                row_of_slot[slot] = row
        slots, rows = list(row_of_slot), list(row_of_slot.values())
        self.inputs[slots] = inputs[rows]
        self.labels[slots] = labels[rows]

    def _claim_slot(self, context: int, probes: list[int], draws: list[float]) -> int | None:
        """The slot that a new row of `context` should overwrite, or None to drop the row.

        Args:
            context: The row's context id.
            probes: `EVICTION_PROBES` random slots (below the capacity, which a full buffer
                fills).
            draws: Two uniform numbers in [0, 1): whether to replace one of the context's own
                rows, and which.
        """
        if self.size < self.capacity:
            slot = self.size
            self.size += 1
            self._attach(slot, context)
            return slot
        if not self.balanced:
            if draws[0] * self._offered >= self.capacity:
                return None
            slot = probes[0]
            self._detach(slot)
            self._attach(slot, context)
            return slot
        held = self.rows_of(context)
        share = self.capacity // (len(self._slots) + (0 if held else 1))
        for slot in probes:
            donor = self.rows_of(int(self.ids[slot]))
            if donor > share and donor > held + 1:
                self._detach(slot)
                self._attach(slot, context)
                return slot
        # The context holds a full share: reservoir sampling among its own rows.
        if held and draws[0] * self._seen[context] < held:
            mine = self._slots[context]
            return mine[int(draws[1] * len(mine))]
        return None

    def _attach(self, slot: int, context: int) -> None:
        slots = self._slots[context]
        self._position[slot] = len(slots)
        slots.append(slot)
        self.ids[slot] = context

    def _detach(self, slot: int) -> None:
        """Removes `slot` from its context's list (swap with the last, O(1))."""
        context = int(self.ids[slot])
        slots = self._slots[context]
        place, last = int(self._position[slot]), slots[-1]
        slots[place] = last
        self._position[last] = place
        slots.pop()
        if not slots:
            del self._slots[context]

    # Sampling and purging ---------------------------------------------------------------------

    def sample(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`count` rows drawn uniformly with replacement (fewer only when the buffer is empty).

        Returns:
            inputs `(k, input_size)` float32, context ids `(k,)` int64, labels `(k,)` int64.
        """
        if self.size == 0 or count <= 0:
            empty = np.zeros((0, self.input_size), dtype=np.float32)
            return empty, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        picks = self._rng.integers(self.size, size=count)
        return self.inputs[picks], self.ids[picks], self.labels[picks]

    def purge(self, context_ids: set[int] | list[int]) -> int:
        """Drops every row of these contexts, and refuses their rows from now on.

        Returns:
            How many rows were dropped.
        """
        dropped = 0
        for context in context_ids:
            self._retired.add(int(context))
            for slot in sorted(self._slots.get(int(context), ()), reverse=True):
                self._remove(slot)
                dropped += 1
            self._offered -= self._seen.pop(int(context), 0)
        return dropped

    def _remove(self, slot: int) -> None:
        """Frees `slot` by moving the last occupied row into it."""
        self._detach(slot)
        last = self.size - 1
        if slot != last:
            moved = int(self.ids[last])
            place = int(self._position[last])
            self._slots[moved][place] = slot
            self._position[slot] = place
            self.inputs[slot] = self.inputs[last]
            self.ids[slot] = moved
            self.labels[slot] = self.labels[last]
        self.size = last

    # Checkpoints ------------------------------------------------------------------------------

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The buffer as CPU tensors plus a JSON-able header (the random state, the capacity)."""
        seen_ids = np.fromiter(self._seen.keys(), dtype=np.int64, count=len(self._seen))
        seen_counts = np.fromiter(self._seen.values(), dtype=np.int64, count=len(self._seen))
        tensors = {
            "inputs": torch.from_numpy(self.inputs[: self.size].copy()),
            "ids": torch.from_numpy(self.ids[: self.size].copy()),
            "labels": torch.from_numpy(self.labels[: self.size].copy()),
            "positions": torch.from_numpy(self._position[: self.size].copy()),
            "seen_ids": torch.from_numpy(seen_ids),
            "seen_counts": torch.from_numpy(seen_counts),
            "retired": torch.tensor(sorted(self._retired), dtype=torch.int64),
        }
        header = {"capacity": self.capacity, "rng": json.dumps(self._rng.bit_generator.state)}
        return tensors, header

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        """Replaces the contents with a saved state.

        A state saved with the same capacity is restored exactly, random state included, so a
        replay after a restart draws the same rows. One saved with another capacity (the setting
        changed) is offered row by row, which keeps a balanced subset.

        Raises:
            ValueError: The saved rows have another input width.
        """
        inputs = tensors["inputs"].numpy()
        if inputs.shape[1:] != (self.input_size,):
            raise ValueError(
                f"the saved replay rows have shape {inputs.shape[1:]}, not ({self.input_size},)"
            )
        ids, labels = tensors["ids"].numpy(), tensors["labels"].numpy()
        self._reset()
        self._retired = {int(i) for i in tensors["retired"].tolist()}
        self._rng.bit_generator.state = json.loads(header["rng"])
        seen = zip(tensors["seen_ids"].tolist(), tensors["seen_counts"].tolist(), strict=True)
        if int(header["capacity"]) != self.capacity:
            self.add(inputs, ids, labels)
        else:
            size = self.size = len(inputs)
            self.inputs[:size], self.ids[:size], self.labels[:size] = inputs, ids, labels
            self._position[:size] = tensors["positions"].numpy()
            # Each context's slots in their saved order, so later draws pick the same rows.
            for slot in np.argsort(self._position[:size], kind="stable").tolist():
                self._slots[int(ids[slot])].append(slot)
        self._seen = defaultdict(int, {int(i): int(c) for i, c in seen})
        self._offered = sum(self._seen.values())

    def clear(self) -> None:
        """Forgets every row (the retired contexts stay refused)."""
        retired = self._retired
        self._reset()
        self._retired = retired

    def _reset(self) -> None:
        self._offered = 0  # rows offered by live contexts: the reservoir's denominator
        self.size = 0
        self._slots = defaultdict(list)
        self._seen = defaultdict(int)
        self._retired = set()
