"""CUDA: contexts are bit-identical to the CPU's, and everything lives on the GPU.

These run only where CUDA is present (a GPU machine) and skip cleanly elsewhere.
"""

from pathlib import Path

import pytest
import torch

from psp_core.checkpoint import load_checkpoint, save_checkpoint
from psp_core.contexts import ContextSpec
from psp_core.kinds import KINDS_WITH_CONTEXTS, kind_class
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model(kind: str, device: str):
    model = build_model(ModelConfig(kind=kind, hidden=(64,)), device)
    uses_power = kind_class(kind).uses_power
    model.bank.extend(
        [ContextSpec(power=i * 0.75) if uses_power else ContextSpec(seed=i) for i in range(8)]
    )
    return model


@pytest.mark.parametrize("kind", KINDS_WITH_CONTEXTS)
def test_gathered_contexts_are_bit_identical_on_cuda(kind: str) -> None:
    cpu, gpu = _model(kind, "cpu"), _model(kind, "cuda")
    index = torch.tensor([3, 0, 7, 7, 1])
    for layer in range(len(cpu.bank.layers)):
        on_cpu = cpu.bank.layers[layer].gather(index)
        on_gpu = gpu.bank.layers[layer].gather(index.cuda())
        assert on_gpu.device.type == "cuda"
        assert torch.equal(on_gpu.cpu(), on_cpu)


@pytest.mark.parametrize("kind", KINDS_WITH_CONTEXTS)
def test_model_bank_and_optimizer_state_live_on_the_gpu(kind: str) -> None:
    learner = OnlineLearner(_model(kind, "cuda"), TrainingConfig(optimizer="adam", lr=0.01))
    x = torch.randn(16, 64, device="cuda")
    index = torch.arange(16, device="cuda") % 8
    result = learner.step(x, index, torch.randint(0, 10, (16,), device="cuda"))
    assert result.applied
    assert all(p.device.type == "cuda" for p in learner.model.parameters())
    assert all(b.device.type == "cuda" for b in learner.model.buffers())
    states = [
        v
        for s in learner.optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    ]
    assert states and all(v.device.type == "cuda" for v in states)


@pytest.mark.parametrize("kind", KINDS_WITH_CONTEXTS)
def test_cuda_matches_cpu_and_mixed_batches_match_rows(kind: str) -> None:
    cpu, gpu = _model(kind, "cpu"), _model(kind, "cuda")
    x, index = torch.randn(12, 64), torch.arange(12) % 8
    on_gpu = gpu(x.cuda(), index.cuda())
    assert torch.allclose(on_gpu.cpu(), cpu(x, index), atol=1e-4)
    rows = torch.cat([gpu(x[i : i + 1].cuda(), index[i : i + 1].cuda()) for i in range(12)])
    assert torch.allclose(on_gpu, rows, atol=1e-5)


def test_checkpoint_written_on_gpu_loads_on_cpu(tmp_path: Path) -> None:
    learner = OnlineLearner(_model("complex", "cuda"), TrainingConfig())
    learner.step(
        torch.randn(8, 64, device="cuda"),
        torch.zeros(8, dtype=torch.long, device="cuda"),
        torch.zeros(8, dtype=torch.long, device="cuda"),
    )
    save_checkpoint(tmp_path / "c", learner)
    loaded, _ = load_checkpoint(tmp_path / "c", "cpu")
    x, index = torch.randn(4, 64), torch.tensor([0, 1, 2, 3])
    assert torch.allclose(
        loaded.predict(x, index), learner.predict(x.cuda(), index.cuda()).cpu(), atol=1e-5
    )
