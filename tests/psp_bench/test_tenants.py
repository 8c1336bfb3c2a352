"""The tenants stream: per-tenant label maps, interleaved blocks, and the loop that scores it."""

from __future__ import annotations

import statistics
from collections import Counter

import torch

from psp_bench.baselines import EWCConfig
from psp_bench.continual import run_continual
from psp_bench.continual_config import ContinualConfig
from psp_bench.methods import Method
from psp_bench.runners import in_process_runner
from psp_bench.tenants import TenantsStream, run_tenants_method
from psp_core import ModelConfig, TrainingConfig


def test_each_tenant_sends_its_rows_in_blocks_under_its_own_labels() -> None:
    stream = TenantsStream(tenants=5, rows_per_tenant=120, block_rows=50, seed=3)
    order = [stream.block_tenant(position) for position in range(len(stream))]
    assert sorted(Counter(order).values()) == [3] * 5
    tenant_0 = [p for p in range(len(stream)) if order[p] == 0]
    assert sorted(len(stream.block_rows_of(p)) for p in tenant_0) == [20, 50, 50]
    rows_of_0 = torch.cat([stream.block_rows_of(p) for p in sorted(tenant_0)])
    assert len(set(rows_of_0.tolist())) > 100  # 120 rows drawn, not one block repeated
    assert order != sorted(order)  # interleaved, not one tenant after another
    for tenant in range(5):
        assert sorted(stream.label_maps[tenant].tolist()) == list(range(10))
        _, y_test = stream.test_set(tenant)
        original = stream.dataset.y_test
        assert torch.equal(y_test, stream.label_maps[tenant][original])
    tenant, x, y = stream.block(0)
    rows = stream.block_rows_of(0)
    assert torch.equal(x, stream.dataset.x_train[rows])
    assert torch.equal(y, stream.label_maps[tenant][stream.dataset.y_train[rows]])


def test_skew_makes_a_few_loud_tenants_and_keeps_every_tenant_a_block() -> None:
    stream = TenantsStream(tenants=8, rows_per_tenant=400, block_rows=50, seed=0, skew=1.0)
    assert stream.rows_sent[0] > 3 * stream.rows_sent[7]
    assert min(stream.rows_sent) >= 50
    assert stream.rows_sent == sorted(stream.rows_sent, reverse=True)


def test_the_loop_scores_every_tenant_and_superposition_tells_them_apart() -> None:
    stream = TenantsStream(tenants=4, rows_per_tenant=2000, block_rows=50, seed=0)
    config = ModelConfig(kind="none", input_shape=(64,), hidden=(64,))
    accuracy = {}
    for name in ("none", "complex-replay"):
        runner = in_process_runner(
            Method.parse(name), config, TrainingConfig(), EWCConfig(), replay_rows=2000
        )
        trace = run_tenants_method(stream, Method.parse(name), runner, batch_size=32)
        assert len(trace.accuracies) == 4 and trace.contexts == 4
        assert trace.prequential_accuracy is not None and 0 <= trace.prequential_accuracy <= 1
        accuracy[name] = statistics.fmean(trace.accuracies)
    # One plain network cannot serve four label maps of the same inputs; contexts can.
    assert accuracy["complex-replay"] > accuracy["none"] + 0.3


def test_run_continual_reports_mean_and_minimum_over_tenants() -> None:
    config = ContinualConfig(
        stream="tenants",
        tenants=3,
        rows_per_tenant=100,
        methods=("binary-replay",),
        hidden=(16,),
        replay_rows=500,
    )
    results = run_continual(config)
    (result,) = results.methods
    assert results.stream["family"] == "tenants" and results.stream["tenants"] == 3
    assert len(result.final_accuracy) == 3
    assert result.average_accuracy == sum(result.final_accuracy) / 3
    assert result.minimum_accuracy == min(result.final_accuracy)
    assert result.matrix == [] and result.to_dict()["forgetting"] is None
