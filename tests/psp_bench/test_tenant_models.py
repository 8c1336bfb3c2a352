"""The per-tenant baselines: a learned embedding, learned gains, and river's online models."""

from __future__ import annotations

import pytest
import torch

from psp_bench.baselines import EWCConfig
from psp_bench.footprint import footprint
from psp_bench.methods import Method
from psp_bench.river_runner import RiverRunner
from psp_bench.runners import PSPRunner, in_process_runner
from psp_bench.tenant_models import ROWS_PER_BLOCK, TenantEmbeddingMLP, TenantGainsMLP
from psp_core import ContextSpec, ModelConfig, TrainingConfig

CONFIG = ModelConfig(kind="none", input_shape=(64,), hidden=(32,), seed=0)


def _batch(seed: int, rows: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 64, generator=generator)
    return x, (x[:, 0] > 0.5).long()  # a label the inputs decide


def test_gains_start_as_random_signs_and_each_tenant_gets_its_own() -> None:
    model = TenantGainsMLP(CONFIG)
    assert [model.add_context(ContextSpec(seed=s)) for s in range(3)] == [0, 1, 2]
    first = model.gain_tables[0](torch.tensor([0, 1]))
    assert first.shape == (2, 64)
    assert set(first.unique().tolist()) == {-1.0, 1.0}
    assert not torch.equal(first[0], first[1])
    x = torch.rand(1, 64)
    assert not torch.equal(model(x, torch.tensor([0])), model(x, torch.tensor([1])))
    with pytest.raises(IndexError, match="no registered tenant"):
        model(x, torch.tensor([3]))


def test_a_new_block_of_tenants_joins_the_optimiser_and_keeps_the_others_state() -> None:
    runner = in_process_runner(
        Method.parse("embed-replay"), CONFIG, TrainingConfig(), EWCConfig(), replay_rows=500
    )
    assert isinstance(runner, PSPRunner)
    assert isinstance(runner.learner.model, TenantEmbeddingMLP)
    runner.register("a", ContextSpec(seed=0))
    runner.train("a", *_batch(0))
    first_block = runner.learner.model.embeddings.blocks[0]
    state_before = runner.learner.optimizer.state[first_block]["exp_avg"].clone()
    for tenant in range(1, ROWS_PER_BLOCK + 1):  # one more than a block holds
        runner.register(f"t{tenant}", ContextSpec(seed=tenant))
    assert len(runner.learner.model.embeddings.blocks) == 2
    groups = runner.learner.optimizer.param_groups
    assert sum(len(group["params"]) for group in groups) == len(
        list(runner.learner.model.parameters())
    )
    assert torch.equal(runner.learner.optimizer.state[first_block]["exp_avg"], state_before)
    last = f"t{ROWS_PER_BLOCK}"
    before = runner.learner.model.embeddings(torch.tensor([ROWS_PER_BLOCK])).clone()
    runner.train(last, *_batch(1))
    after = runner.learner.model.embeddings(torch.tensor([ROWS_PER_BLOCK]))
    assert not torch.equal(before, after)  # the new block learns


def test_gains_learn_a_rule_the_inputs_decide() -> None:
    runner = in_process_runner(Method.parse("gains"), CONFIG, TrainingConfig(lr=0.01), EWCConfig())
    runner.register("a", ContextSpec(seed=0))
    for seed in range(60):
        runner.train("a", *_batch(seed))
    x, y = _batch(1000, rows=400)
    assert float((runner.predict("a", x) == y).float().mean()) > 0.9


def test_river_learns_each_tenant_apart_and_scores_before_learning() -> None:
    runner = RiverRunner()
    runner.register("a", ContextSpec(seed=0))
    runner.register("b", ContextSpec(seed=1))
    x, y = _batch(0, rows=300)
    scores = runner.send("a", x, y, batch_size=32, wait=True)
    assert scores.shape == (300,) and scores.dtype == torch.bool
    assert not bool(scores[0])  # nothing learned yet: no class to predict
    test_x, test_y = _batch(1, rows=200)
    assert float((runner.predict("a", test_x) == test_y).float().mean()) > 0.8
    assert set(runner.predict("b", test_x).tolist()) == {-1}  # b has learned nothing


def test_footprints_count_the_per_tenant_rows() -> None:
    embed = footprint(Method.parse("embed"), CONFIG, contexts=10)
    gains = footprint(Method.parse("gains-replay"), CONFIG, contexts=10)
    river = footprint(Method.parse("river"), CONFIG, contexts=10)
    assert embed.bytes_per_context == 4 * 32
    assert gains.bytes_per_context == 4 * (64 + 32)
    assert river.bytes_per_context == 4 * ((64 + 1) * 10 + 2 * 64)
    shared_embed = (64 + 32) * 32 + 32 + 32 * 10 + 10
    assert embed.parameters == shared_embed + 10 * 32
    assert river.total_bytes == 10 * river.bytes_per_context
