"""Context generation: the vectors `c(k)` that recall one model out of the superposition.

A context is fully defined by one number: an integer seed (binary, complex, rotation) or a real
exponent (one-power). The vector of every layer is a pure function of
(kind, model seed, context seed or exponent, layer index, dimension), so only that number is
ever stored. Random draws are made on the CPU with a `torch.Generator` in float64 and rounded to
float32, which makes them bit-identical across processes and devices.

Real-arithmetic encoding of the complex kinds: a complex context `e^{iφ}` acting on a real input
and complex weights `W = A + iB` gives `Re(W (c ⊙ x)) = A (cos φ ⊙ x) - B (sin φ ⊙ x)`. Layers
therefore store complex contexts as the pair `(cos φ, -sin φ)`, concatenated to length `2M`.

The kinds themselves (which of these functions makes a row, which spec a kind takes) live in
`psp_core.kinds`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContextSpec:
    """The whole definition of one context: a seed, or for one-power an exponent.

    Attributes:
        seed: Integer seed for binary, complex and rotation contexts.
        power: Real exponent `k` of `c(k) = e^{i k φ}` for one-power contexts; fractional values
            drift smoothly between the integer contexts.
    """

    seed: int | None = None
    power: float | None = None

    def __post_init__(self) -> None:
        if (self.seed is None) == (self.power is None):
            raise ValueError("a context is defined by exactly one of seed or power")


def derive_seed(*parts: int | str) -> int:
    """Mixes the parts into a 63-bit generator seed that is stable across processes and versions.

    Python's `hash` is salted per process, so a cryptographic digest is used instead.
    """
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _generator(*parts: int | str) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def wrap_phase(phase: torch.Tensor) -> torch.Tensor:
    """Maps phases to [-π, π)."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def random_phases(model_seed: int, seed: int, layer_index: int, dim: int) -> torch.Tensor:
    """Uniform phases in [-π, π) for one complex context (paper eq. 5).

    Returns:
        float64 tensor of shape `(dim,)`.
    """
    g = _generator("complex", model_seed, seed, layer_index, dim)
    return (torch.rand(dim, dtype=torch.float64, generator=g) * 2 - 1) * math.pi


def onepower_base_phases(model_seed: int, layer_index: int, dim: int) -> torch.Tensor:
    """The base phase vector φ of a one-power layer; context `k` is `e^{i k φ}` (paper eq. 8).

    Returns:
        float64 tensor of shape `(dim,)`.
    """
    g = _generator("onepower", model_seed, layer_index, dim)
    return (torch.rand(dim, dtype=torch.float64, generator=g) * 2 - 1) * math.pi


def binary_context(model_seed: int, seed: int, layer_index: int, dim: int) -> torch.Tensor:
    """A ±1 context vector (paper §4.2.2).

    Returns:
        float32 tensor of shape `(dim,)` with entries in {-1, 1}.
    """
    g = _generator("binary", model_seed, seed, layer_index, dim)
    bits = torch.randint(0, 2, (dim,), generator=g, dtype=torch.int64)
    return (bits * 2 - 1).to(torch.float32)


def rotation_context(model_seed: int, seed: int, layer_index: int, dim: int) -> torch.Tensor:
    """A Haar-random orthogonal matrix (paper §4.2.3).

    The QR decomposition of a Gaussian matrix, with the signs of R's diagonal folded into Q, is
    Haar-distributed on O(dim) (Mezzadri, 2007).

    Returns:
        float32 tensor of shape `(dim, dim)`.
    """
    g = _generator("rotation", model_seed, seed, layer_index, dim)
    gaussian = torch.randn(dim, dim, dtype=torch.float64, generator=g)
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).to(torch.float32)


def complex_phases(
    model_seed: int, seed: int, layer_index: int, dim: int, *, local_mix: bool = False
) -> torch.Tensor:
    """Phases of a complex context, optionally mixed with its neighbours (paper eq. 7).

    With `local_mix`, the phase is the mean of the phases of seeds `seed-1`, `seed`, `seed+1`, so
    consecutive seeds give overlapping contexts that share what they learn.

    Returns:
        float64 tensor of shape `(dim,)`.
    """
    if not local_mix:
        return random_phases(model_seed, seed, layer_index, dim)
    neighbours = [
        random_phases(model_seed, s, layer_index, dim) for s in (seed - 1, seed, seed + 1)
    ]
    return torch.stack(neighbours).mean(dim=0)


def onepower_phases(
    base: torch.Tensor, power: torch.Tensor, *, local_mix: bool = False
) -> torch.Tensor:
    """Phases of one-power contexts `k φ` for a batch of exponents, wrapped to [-π, π).

    With `local_mix`, the phase is the mean of the wrapped phases of `k-1`, `k`, `k+1` (paper
    eq. 7). It differs from `k φ` only where a neighbour's phase wraps around.

    Args:
        base: float64 base phases φ, shape `(M,)`.
        power: exponents `k`, shape `(B,)`, any float dtype.

    Returns:
        float64 tensor of shape `(B, M)`.
    """
    k = power.to(torch.float64).unsqueeze(1)
    if not local_mix:
        return wrap_phase(k * base)
    return (wrap_phase((k - 1) * base) + wrap_phase(k * base) + wrap_phase((k + 1) * base)) / 3


def phases_to_real_pair(phases: torch.Tensor) -> torch.Tensor:
    """Encodes phases as `(cos φ, -sin φ)` concatenated on the last dimension, in float32.

    Args:
        phases: float64 tensor of shape `(..., M)`.

    Returns:
        float32 tensor of shape `(..., 2M)`.
    """
    return torch.cat([torch.cos(phases), -torch.sin(phases)], dim=-1).to(torch.float32)
