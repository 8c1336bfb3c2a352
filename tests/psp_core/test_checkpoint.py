"""Checkpoints: exact round trips, clear errors for torn or mismatched files, atomic writes."""

import os
from pathlib import Path

import pytest
import torch

from psp_core.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    export_weights,
    load_checkpoint,
    read_checkpoint,
    read_metadata,
    read_weights,
    restore_checkpoint,
    save_checkpoint,
    write_checkpoint,
)
from psp_core.contexts import ContextSpec
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model


def _trained(
    kind: str = "complex", optimizer: str = "adam", *, per_tensor_adam: bool = False
) -> OnlineLearner:
    model = build_model(ModelConfig(kind=kind, hidden=(16,)))
    model.bank.extend(
        [ContextSpec(power=i / 2) if kind == "onepower" else ContextSpec(seed=i) for i in range(4)]
    )
    learner = OnlineLearner(model, TrainingConfig(optimizer=optimizer, lr=0.01))
    if per_tensor_adam:  # as checkpoints written before Adam was fused were
        learner.optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        learner.step(
            torch.randn(8, 64, generator=g),
            torch.arange(8) % 4,
            torch.randint(0, 10, (8,), generator=g),
        )
    return learner


@pytest.mark.parametrize("kind", ["none", "binary", "complex", "rotation", "onepower"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_round_trip_reproduces_predictions_and_training(tmp_path: Path, kind, optimizer) -> None:
    learner = _trained(kind, optimizer)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, learner, {"last_entry_id": "17-0"})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"last_entry_id": "17-0"}
    assert loaded.model_version == learner.model_version == 5
    x, index = torch.randn(6, 64), torch.tensor([0, 1, 2, 3, 2, 1])
    assert torch.equal(loaded.predict(x, index), learner.predict(x, index))
    y = torch.randint(0, 10, (6,))
    learner.step(x, index, y)
    loaded.step(x, index, y)  # the optimiser state came along too
    for a, b in zip(learner.model.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(a, b)
    if optimizer == "adam":
        assert loaded.optimizer.param_groups[0]["fused"] is True


def test_a_checkpoint_of_per_tensor_adam_resumes_with_the_fused_one(tmp_path: Path) -> None:
    learner = _trained(per_tensor_adam=True)
    save_checkpoint(tmp_path / "ckpt", learner)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.optimizer.param_groups[0]["fused"] is True
    x, index, y = torch.randn(6, 64), torch.tensor([0, 1, 2, 3, 2, 1]), torch.arange(6)
    for _ in range(3):
        learner.step(x, index, y)
        loaded.step(x, index, y)
    for a, b in zip(learner.model.parameters(), loaded.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_restore_into_a_bank_that_grew_since(tmp_path: Path) -> None:
    learner = _trained("binary")
    save_checkpoint(tmp_path / "c", learner)
    model = build_model(learner.model.config)
    model.bank.extend([ContextSpec(seed=i) for i in range(6)])
    fresh = OnlineLearner(model, learner.config)
    restore_checkpoint(tmp_path / "c", fresh)
    x, index = torch.randn(3, 64), torch.tensor([0, 3, 2])
    assert torch.equal(fresh.predict(x, index), learner.predict(x, index))
    assert read_metadata(tmp_path / "c")["model_version"] == 5


def test_an_export_holds_the_weights_alone_and_serves_the_same_predictions(
    tmp_path: Path,
) -> None:
    learner = _trained("complex")
    learner.replay = None
    save_checkpoint(tmp_path / "full", learner, {"last_entry_id": "17-0"})
    export = export_weights(tmp_path / "full")
    assert export == export_weights(tmp_path / "full")  # same checkpoint, same bytes
    (tmp_path / "export").write_bytes(export)
    assert len(export) < (tmp_path / "full").stat().st_size / 2  # no Adam moments

    serving = read_weights(tmp_path / "export", learner.model.config)
    assert serving.header["model_version"] == 5 and "user" not in serving.header
    reader = OnlineLearner(build_model(learner.model.config), TrainingConfig())
    reader.model.bank.extend(learner.model.bank.specs)
    reader.model.load_state_dict(serving.weights, strict=True)
    assert reader.scaler is not None and len(serving.scaler["ids"]) == 4  # every context's
    reader.scaler.load_state_tensors(serving.scaler)
    x, index = torch.randn(5, 64), torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(reader.predict(x, index), learner.predict(x, index))
    with pytest.raises(CheckpointError, match="weights only"):
        load_checkpoint(tmp_path / "export")
    with pytest.raises(CheckpointError, match="weights only"):
        restore_checkpoint(tmp_path / "export", learner)


def test_torn_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c"
    save_checkpoint(path, _trained())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="torn"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", _trained("complex"))
    other = build_model(ModelConfig(kind="binary", hidden=(16,)))
    other.bank.extend([ContextSpec(seed=i) for i in range(4)])
    with pytest.raises(CheckpointError, match="same config"):
        restore_checkpoint(tmp_path / "c", OnlineLearner(other, TrainingConfig()))
    same_config = build_model(ModelConfig(kind="complex", hidden=(16,)))
    same_config.bank.extend([ContextSpec(seed=i + 100) for i in range(4)])
    with pytest.raises(CheckpointError, match="differ"):
        restore_checkpoint(tmp_path / "c", OnlineLearner(same_config, TrainingConfig()))


def test_foreign_safetensors_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "foreign"))
    with pytest.raises(CheckpointError, match="not a psp checkpoint"):
        load_checkpoint(tmp_path / "foreign")


def test_save_replaces_atomically_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c"
    learner = _trained()
    save_checkpoint(path, learner)
    good = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    learner.step(torch.randn(2, 64), torch.zeros(2, dtype=torch.long), torch.zeros(2).long())
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, learner)
    assert path.read_bytes() == good  # a crash before the rename keeps the old checkpoint whole


def test_restore_keeps_the_learners_hyperparameters_but_not_another_optimizer(
    tmp_path: Path,
) -> None:
    save_checkpoint(tmp_path / "c", _trained("binary", "adam"))
    model = build_model(ModelConfig(kind="binary", hidden=(16,)))
    model.bank.extend([ContextSpec(seed=i) for i in range(4)])
    learner = OnlineLearner(model, TrainingConfig(optimizer="adam", lr=0.123))
    restore_checkpoint(tmp_path / "c", learner)
    assert learner.optimizer.param_groups[0]["lr"] == 0.123
    assert learner.optimizer.state  # Adam's moments came back
    with pytest.raises(CheckpointError, match="same optimizer"):
        restore_checkpoint(tmp_path / "c", OnlineLearner(model, TrainingConfig(optimizer="sgd")))


def test_a_step_prepared_before_a_restore_is_never_committed(tmp_path: Path) -> None:
    learner = _trained()
    x, index, y = torch.randn(4, 64), torch.zeros(4, dtype=torch.long), torch.zeros(4).long()
    save_checkpoint(tmp_path / "ck.pt", learner)
    prepared = learner.prepare_step(x, index, y)
    restore_checkpoint(tmp_path / "ck.pt", learner)
    with pytest.raises(RuntimeError, match="latest prepare_step"):
        learner.commit_step(prepared)
    assert learner.model_version == 5
    assert all(p.grad is None for p in learner.model.parameters())


def test_a_checkpoint_made_in_memory_is_the_file_save_writes(tmp_path: Path) -> None:
    learner = _trained()
    save_checkpoint(tmp_path / "saved.pt", learner, {"entry": "3"})
    write_checkpoint(tmp_path / "written.pt", checkpoint_bytes(learner, {"entry": "3"}))
    assert (tmp_path / "written.pt").read_bytes() == (tmp_path / "saved.pt").read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary files were renamed


def test_a_checkpoint_read_ahead_restores_as_its_path_does(tmp_path: Path) -> None:
    learner = _trained()
    save_checkpoint(tmp_path / "ck.pt", learner, {"entry": "5"})
    from_path, read_ahead = _trained("complex", "adam"), _trained("complex", "adam")
    for other in (from_path, read_ahead):
        other.step(torch.randn(8, 64), torch.arange(8) % 4, torch.randint(0, 10, (8,)))

    stored = read_checkpoint(tmp_path / "ck.pt")
    assert restore_checkpoint(stored, read_ahead) == {"entry": "5"}
    assert restore_checkpoint(tmp_path / "ck.pt", from_path) == {"entry": "5"}
    assert read_ahead.model_version == from_path.model_version == 5
    for a, b in zip(read_ahead.model.parameters(), from_path.model.parameters(), strict=True):
        assert torch.equal(a, b)
    (tmp_path / "torn.pt").write_bytes((tmp_path / "ck.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="torn"):
        read_checkpoint(tmp_path / "torn.pt")
