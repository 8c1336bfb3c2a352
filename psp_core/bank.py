"""The context bank: every registered context, as specs plus per-layer tables on the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from psp_core.contexts import ContextSpec
from psp_core.kinds import LayerContexts


class ContextBank:
    """All contexts of one model.

    The bank keeps each context's spec (8 bytes: a seed or an exponent) and appends one row to
    the table of every superposed layer, so the vectors live on the model's device and are
    gathered per batch. Adding a context never rebuilds the model.

    Memory per context, summed over layers with context dimensions `M_l` (float32 tables):
    binary `4 ΣM_l` bytes, complex `8 ΣM_l`, rotation `4 ΣM_l²`, one-power 8 bytes per layer for
    the exponent that defines the context (the base phases are shared) plus `8 ΣM_l` for its
    cached vectors, none 0. `bytes_per_context` reports the figure for a given model.

    Attributes:
        kind: The class of the layers' kind, which checks every spec.
        layers: The contexts of every superposed layer, in layer order.
        specs: Every registered context, in row order.
    """

    def __init__(self, kind: type[LayerContexts], layers: Sequence[LayerContexts]) -> None:
        self.kind = kind
        self.layers = list(layers)
        self.specs: list[ContextSpec] = []

    def __len__(self) -> int:
        return len(self.specs)

    def add(self, spec: ContextSpec) -> int:
        """Registers one context and returns its row."""
        return self.extend([spec])[0]

    def extend(self, specs: Sequence[ContextSpec]) -> range:
        """Registers contexts in order and returns their rows."""
        return self.append_prepared(self.prepare(specs))

    def prepare(self, specs: Sequence[ContextSpec]) -> PreparedContexts:
        """Generates the table rows of contexts without changing the bank.

        Generation is the slow part of registering (about 0.2 ms per complex context, 0.1 s
        per rotation context), so a server runs it without holding the lock that forward
        passes take, and only `append_prepared` under it.
        """
        checked = [self.kind.check_spec(spec) for spec in specs]
        return PreparedContexts(checked, [layer.make_rows(checked) for layer in self.layers])

    def reserve(self, extra: int) -> None:
        """Grows every layer's table, if need be, so that `extra` more contexts append without
        growing it. Growing copies every row; a server reserves before it takes the lock of
        forward passes, which go on reading the old tables meanwhile (the rows they read are
        the same in both), and holds the lock only for `append_prepared`. Appends must not run
        beside it."""
        for layer in self.layers:
            layer.reserve(extra)

    def append_prepared(self, prepared: PreparedContexts) -> range:
        """Appends prepared contexts in order and returns their rows (a memory copy)."""
        for layer, rows in zip(self.layers, prepared.rows, strict=True):
            layer.append_rows(rows)
        start = len(self.specs)
        self.specs.extend(prepared.specs)
        return range(start, len(self.specs))

    def place_prepared(self, rows: Sequence[int], prepared: PreparedContexts) -> None:
        """Writes prepared contexts into existing rows, one per context, in order: a server
        reuses the rows of contexts it let go, so that its bank holds what is live, not
        everything ever registered. The tables do not grow."""
        if len(rows) != len(prepared.specs):
            raise ValueError(f"{len(prepared.specs)} contexts need as many rows, not {len(rows)}")
        for layer, layer_rows in zip(self.layers, prepared.rows, strict=True):
            layer.write_rows(rows, layer_rows)
        for row, spec in zip(rows, prepared.specs, strict=True):
            self.specs[row] = spec

    def bytes_per_context(self) -> int:
        """Bytes stored on the device for each additional context."""
        return sum(layer.bytes_per_context() for layer in self.layers)

    def check_index(self, context_index: torch.Tensor) -> None:
        """Raises IndexError unless every entry names a registered row.

        The tables grow by doubling, so a row past the last context would read zeros (bias-only
        logits) rather than fail; this check costs one small reduction and one host sync.
        """
        if not context_index.numel():
            return
        low, high = (int(v) for v in torch.aminmax(context_index))
        if low < 0 or high >= len(self):
            bad = low if low < 0 else high
            raise IndexError(
                f"context row {bad} is out of range: the bank holds {len(self)} contexts, so "
                f"rows must lie in [0, {len(self)}); register the context before using its row"
            )


@dataclass(frozen=True)
class PreparedContexts:
    """Contexts whose table rows are generated but not yet in the bank (see `prepare`).

    Attributes:
        specs: The specs, checked against the bank's kind.
        rows: Per layer, the stacked rows of these contexts, on the CPU.
    """

    specs: list[ContextSpec]
    rows: list[torch.Tensor]

    def split(self, count: int) -> tuple[PreparedContexts, PreparedContexts]:
        """The first `count` contexts, and the rest."""
        return (
            PreparedContexts(self.specs[:count], [r[:count] for r in self.rows]),
            PreparedContexts(self.specs[count:], [r[count:] for r in self.rows]),
        )
