"""One-power contexts: `c(k) = e^{i k φ}`, one real exponent `k` per context (paper eq. 8)."""

from __future__ import annotations

import math

import torch

from psp_core.contexts import (
    ContextSpec,
    onepower_base_phases,
    onepower_phases,
    phases_to_real_pair,
)
from psp_core.kinds.base import grown
from psp_core.kinds.complex import ComplexContexts


class OnePowerContexts(ComplexContexts):
    """Complex contexts that all are powers of one base context.

    A context is one float64 exponent (8 bytes), which defines it; the `M` base phases φ are
    shared by all contexts. The vectors `(cos kφ, -sin kφ)` are computed once, when a context is
    appended, and cached beside the exponents (`2M` float32 values, 8M bytes), so a forward pass
    gathers them like complex contexts instead of recomputing them.
    """

    kind = "onepower"
    uses_power = True
    table_dtype = torch.float64

    def __init__(self, *, model_seed: int, layer_index: int, dim: int, local_mix: bool) -> None:
        super().__init__(
            model_seed=model_seed, layer_index=layer_index, dim=dim, local_mix=local_mix
        )
        self.base_phases: torch.Tensor
        base = onepower_base_phases(model_seed, layer_index, dim)
        self.register_buffer("base_phases", base, persistent=False)
        # The cached vectors of the appended exponents, row for row.
        self.vectors: torch.Tensor
        self.register_buffer("vectors", torch.zeros((0, 2 * dim)), persistent=False)

    def row_shape(self) -> tuple[int, ...]:
        return ()

    def make_row(self, spec: ContextSpec) -> torch.Tensor:
        assert spec.power is not None
        return torch.tensor(spec.power, dtype=torch.float64)

    @classmethod
    def check_spec(cls, spec: ContextSpec) -> ContextSpec:
        """Raises ValueError unless the spec is a finite power."""
        if spec.power is None:
            raise ValueError("one-power contexts are defined by a power (a real exponent)")
        if not math.isfinite(spec.power):
            raise ValueError("the power must be a finite number")
        return spec

    def reserve(self, extra: int) -> None:
        """Makes room for `extra` more exponents and their vectors (see `LayerContexts`)."""
        super().reserve(extra)
        if self.vectors.shape[0] < self.table.shape[0]:
            self.vectors = grown(self.vectors, self.count, self.table.shape[0])

    def append_rows(self, rows: torch.Tensor) -> None:
        """Appends exponents and caches their vectors, made on the CPU like the other kinds'
        rows, so they are identical on every device."""
        start = self.count
        super().append_rows(rows)  # reserves room in `vectors` too
        if not len(rows):
            return
        phases = onepower_phases(self.base_phases.cpu(), rows, local_mix=self.local_mix)
        self.vectors[start : self.count] = phases_to_real_pair(phases).to(self.vectors.device)

    def gather(self, context_index: torch.Tensor) -> torch.Tensor:
        """The cached `(cos kφ, -sin kφ)` of every row of a batch, `(B, 2M)`."""
        return self.vectors.index_select(0, context_index)  # see `LayerContexts.gather`

    def bytes_per_context(self) -> int:
        """The exponent and its cached vector (the shared base phases not counted)."""
        return super().bytes_per_context() + self.vectors.shape[1] * self.vectors.element_size()
