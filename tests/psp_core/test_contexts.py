"""Context generation: the paper's Propositions 1-2 and determinism across processes."""

import math
import subprocess
import sys

import pytest
import torch

from psp_core.contexts import (
    ContextSpec,
    binary_context,
    complex_phases,
    derive_seed,
    onepower_base_phases,
    onepower_phases,
    phases_to_real_pair,
    rotation_context,
    wrap_phase,
)

M = 32
SAMPLES = 3000


def _inner_products(kind: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """⟨c(k) ⊙ w, x⟩ (or ⟨C(k) w, x⟩) for many random contexts k; complex values for complex."""
    values = []
    for seed in range(SAMPLES):
        if kind == "binary":
            values.append(torch.dot(binary_context(0, seed, 0, M).double() * w, x))
        elif kind == "complex":
            c = torch.polar(torch.ones(M, dtype=torch.float64), complex_phases(0, seed, 0, M))
            values.append(torch.sum(c * w * x))
        else:
            values.append(torch.dot(rotation_context(0, seed, 0, M).double() @ w, x))
    return torch.stack(values)


@pytest.mark.parametrize("kind", ["binary", "complex", "rotation"])
def test_binding_is_unbiased_with_variance_near_norm_over_m(kind: str) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(M, dtype=torch.float64, generator=g)
    x = torch.randn(M, dtype=torch.float64, generator=g)
    values = _inner_products(kind, w, x)
    # Proposition 2: binary and complex binding gives Var = ‖w ⊙ x‖², a rotation ‖w‖²‖x‖²/M.
    expected_var = (
        float((w.norm() * x.norm()) ** 2 / M) if kind == "rotation" else float((w * x).norm() ** 2)
    )
    mean = values.mean()
    variance = float((values - mean).abs().pow(2).mean())
    standard_error = math.sqrt(expected_var / SAMPLES)
    assert abs(complex(mean)) < 5 * standard_error  # Proposition 1: E[ε] = 0
    assert variance == pytest.approx(expected_var, rel=0.1)
    # The unbound model's response is much larger than the interference it suffers when bound.
    assert abs(float(torch.dot(w, x))) ** 2 < 40 * expected_var


def test_binary_context_is_signs() -> None:
    c = binary_context(3, 7, 1, 1000)
    assert set(c.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(c.mean())) < 0.1


def test_rotation_context_is_orthogonal() -> None:
    c = rotation_context(0, 5, 2, 32).double()
    assert torch.allclose(c @ c.T, torch.eye(32, dtype=torch.float64), atol=1e-5)


def test_complex_phases_are_uniform_in_range() -> None:
    phases = complex_phases(0, 1, 0, 20000)
    assert float(phases.min()) >= -math.pi and float(phases.max()) < math.pi
    assert float(phases.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(phases.var()) == pytest.approx(math.pi**2 / 3, rel=0.05)


def test_contexts_depend_on_every_part_of_their_definition() -> None:
    base = binary_context(0, 1, 0, 256)
    assert not torch.equal(base, binary_context(1, 1, 0, 256))  # model seed
    assert not torch.equal(base, binary_context(0, 2, 0, 256))  # context seed
    assert not torch.equal(base, binary_context(0, 1, 1, 256))  # layer index
    assert torch.equal(base, binary_context(0, 1, 0, 256))


def test_local_mix_is_the_mean_of_neighbouring_phases() -> None:
    mixed = complex_phases(0, 10, 0, 16, local_mix=True)
    neighbours = [complex_phases(0, s, 0, 16) for s in (9, 10, 11)]
    assert torch.allclose(mixed, sum(neighbours) / 3)
    # Consecutive mixed contexts overlap: two of their three phase terms are shared.
    next_mixed = complex_phases(0, 11, 0, 16, local_mix=True)
    unmixed_gap = (complex_phases(0, 11, 0, 16) - complex_phases(0, 10, 0, 16)).abs().mean()
    assert float((next_mixed - mixed).abs().mean()) < float(unmixed_gap)


def test_onepower_integer_powers_are_powers_of_the_base_context() -> None:
    base = onepower_base_phases(0, 0, 32)
    phases = onepower_phases(base, torch.tensor([0.0, 1.0, 3.0]))
    c = torch.polar(torch.ones_like(phases), phases)
    c1 = torch.polar(torch.ones_like(base), base)
    assert torch.allclose(c[0], torch.ones(32, dtype=torch.complex128))
    assert torch.allclose(c[1], c1)
    assert torch.allclose(c[2], c1**3)  # paper eq. 6: c^{a+b} = c^a ⊙ c^b


def test_onepower_fractional_powers_drift_smoothly() -> None:
    base = onepower_base_phases(0, 0, 64)
    powers = torch.linspace(2.0, 3.0, 11)
    pairs = phases_to_real_pair(onepower_phases(base, powers))
    steps = (pairs[1:] - pairs[:-1]).norm(dim=1)
    # Each tenth of a power moves the context by a tenth of the way, never in one jump.
    assert float(steps.max()) < 0.5 * float((pairs[-1] - pairs[0]).norm())


def test_wrap_phase_range() -> None:
    wrapped = wrap_phase(torch.tensor([math.pi, -math.pi, 3 * math.pi + 0.5, -0.2]))
    assert torch.allclose(
        wrapped, torch.tensor([-math.pi, -math.pi, -math.pi + 0.5, -0.2]), atol=1e-6
    )


def test_spec_requires_exactly_one_definition() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ContextSpec()
    with pytest.raises(ValueError, match="exactly one"):
        ContextSpec(seed=1, power=1.0)


def test_derive_seed_is_a_stable_63_bit_value() -> None:
    assert derive_seed("binary", 0, 1, 2, 3) == derive_seed("binary", 0, 1, 2, 3)
    assert 0 <= derive_seed("x") < 2**63


_FINGERPRINT = """
import hashlib, torch
from psp_core.contexts import *
parts = [binary_context(7, 11, 0, 50), phases_to_real_pair(complex_phases(7, 11, 1, 50)),
         rotation_context(7, 11, 2, 20), onepower_base_phases(7, 3, 50),
         phases_to_real_pair(complex_phases(7, 11, 1, 50, local_mix=True))]
print(hashlib.sha256(b"".join(p.numpy().tobytes() for p in parts)).hexdigest())
"""


def test_regeneration_is_bit_identical_in_a_fresh_process() -> None:
    runs = {
        subprocess.run(
            [sys.executable, "-c", _FINGERPRINT], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    exec_globals: dict[str, object] = {}
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(_FINGERPRINT, exec_globals)
    runs.add(buffer.getvalue().strip())
    assert len(runs) == 1 and len(runs.pop()) == 64
