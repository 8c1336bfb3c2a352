"""Online EWC and independent networks, checked against direct computations."""

import pytest
import torch

from psp_bench.baselines import EWCConfig, OnlineEWC, SeparateModels
from psp_core import ModelConfig, TrainingConfig, build_model

CONFIG = ModelConfig(kind="none", input_shape=(6,), hidden=(5,), num_classes=3, seed=0)


def _ewc(lam: float = 2.0, gamma: float = 1.0) -> OnlineEWC:
    return OnlineEWC(build_model(CONFIG), TrainingConfig(lr=0.1), EWCConfig(lam, gamma, 8))


def _brute_force_fisher(ewc: OnlineEWC, x: torch.Tensor) -> list[torch.Tensor]:
    """Σ_c p(c|x) (∂ log p(c|x)/∂θ)², one example and one class at a time, averaged."""
    params = list(ewc.model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for row in x:
        log_p = torch.log_softmax(ewc.model(row[None], torch.zeros(1, dtype=torch.long)), 1)[0]
        for c in range(CONFIG.num_classes):
            grads = torch.autograd.grad(log_p[c], params, retain_graph=True)
            for acc, grad in zip(total, grads, strict=True):
                acc += log_p[c].exp().detach() * grad**2
    return [acc / len(x) for acc in total]


def test_the_fisher_matches_a_direct_computation() -> None:
    ewc = _ewc()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(0))
    for fast, slow in zip(ewc.task_fisher(x), _brute_force_fisher(ewc, x), strict=True):
        assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-4)


def test_the_penalty_is_the_fisher_weighted_distance_to_the_anchor() -> None:
    ewc = _ewc(lam=2.0)
    assert float(ewc.penalty().detach()) == 0.0
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    ewc.consolidate(x)
    assert float(ewc.penalty().detach()) == 0.0  # the anchor is the current weights
    with torch.no_grad():
        for p in ewc.model.parameters():
            p.add_(0.5)
    assert ewc.fisher is not None
    expected = 0.5 * 2.0 * sum(float((f * 0.25).sum()) for f in ewc.fisher)
    assert float(ewc.penalty().detach()) == pytest.approx(expected, rel=1e-5)


def test_online_consolidation_decays_the_old_fisher() -> None:
    ewc = _ewc(gamma=0.5)
    generator = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(8, 6, generator=generator), torch.randn(8, 6, generator=generator)
    first, second = ewc.task_fisher(x1), ewc.task_fisher(x2)
    ewc.consolidate(x1)
    ewc.consolidate(x2)  # no training in between: the same weights
    assert ewc.fisher is not None
    for total, f1, f2 in zip(ewc.fisher, first, second, strict=True):
        assert torch.allclose(total, 0.5 * f1 + f2)


def test_the_penalty_holds_weights_near_the_anchor() -> None:
    generator = torch.Generator().manual_seed(3)
    x_old, x_new = torch.randn(32, 6, generator=generator), torch.randn(32, 6, generator=generator)
    y_new = torch.randint(0, 3, (32,), generator=generator)
    drift = {}
    for lam in (0.0, 50.0):
        ewc = _ewc(lam=lam)
        ewc.consolidate(x_old)
        anchor = torch.cat([p.detach().flatten() for p in ewc.model.parameters()])
        for _ in range(30):
            assert ewc.step(x_new, y_new).applied
        weights = torch.cat([p.detach().flatten() for p in ewc.model.parameters()])
        drift[lam] = float((weights - anchor).norm())
    assert drift[50.0] < 0.8 * drift[0.0]


def test_a_non_finite_step_is_refused_and_changes_nothing() -> None:
    ewc = _ewc()
    before = [p.detach().clone() for p in ewc.model.parameters()]
    x = torch.full((4, 6), float("nan"))
    result = ewc.step(x, torch.zeros(4, dtype=torch.long))
    assert not result.applied and ewc.refused_steps == 1 and ewc.model_version == 0
    assert all(torch.equal(a, b) for a, b in zip(before, ewc.model.parameters(), strict=True))


def test_ewc_needs_a_plain_network_and_valid_settings() -> None:
    with pytest.raises(ValueError, match="plain network"):
        OnlineEWC(build_model(ModelConfig(kind="complex")), TrainingConfig(), EWCConfig())
    with pytest.raises(ValueError):
        EWCConfig(gamma=1.5)


def test_separate_networks_are_independent() -> None:
    models = SeparateModels(
        ModelConfig(kind="complex", input_shape=(6,), hidden=(5,)), TrainingConfig()
    )
    a, b = models.learner("a"), models.learner("b")
    assert models.learner("a") is a and a.model.config.kind == "none"
    assert (a.model.config.seed, b.model.config.seed) == (0, 1)
    before = [p.detach().clone() for p in b.model.parameters()]
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 3])
    assert a.step(x, torch.zeros(4, dtype=torch.long), y).applied
    assert all(torch.equal(p, q) for p, q in zip(before, b.model.parameters(), strict=True))
