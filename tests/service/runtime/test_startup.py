"""Start-up mistakes end `psp` with one line that names the setting to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from psp_core.checkpoint import save_checkpoint
from psp_core.learner import OnlineLearner, TrainingConfig
from psp_core.models import ModelConfig, build_model
from service.runtime.startup import StartupError, check_checkpoint_fits
from service.settings import Settings

PSP = str(Path(sys.executable).parent / "psp")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PSP_")}
    return subprocess.run(
        [PSP, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def _checkpoint(data_dir: Path, hidden: tuple[int, ...]) -> None:
    (data_dir / "checkpoints").mkdir(parents=True)
    model = build_model(ModelConfig(kind="complex", input_shape=(64,), hidden=hidden))
    save_checkpoint(
        data_dir / "checkpoints" / "ckpt-0000000001-v0.safetensors",
        OnlineLearner(model, TrainingConfig()),
    )


@pytest.mark.real_process
def test_worker_without_redis_prints_one_line(tmp_path: Path) -> None:
    result = _run(["worker"], {"PSP_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PSP_ROLE=worker needs PSP_REDIS_URL" in lines[0]
    assert "set PSP_REDIS_URL=redis://" in lines[0]


@pytest.mark.real_process
def test_a_bad_setting_value_is_named(tmp_path: Path) -> None:
    result = _run(["serve"], {"PSP_DATA_DIR": str(tmp_path), "PSP_TRAINING__LR": "-1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psp: invalid settings: PSP_TRAINING__LR:")


@pytest.mark.real_process
def test_a_checkpoint_of_another_shape_names_the_fields_that_differ(tmp_path: Path) -> None:
    _checkpoint(tmp_path, hidden=(256, 256))
    settings = Settings(data_dir=tmp_path, model={"hidden": [32], "kind": "complex"})
    with pytest.raises(StartupError) as caught:
        check_checkpoint_fits(settings)
    message = str(caught.value)
    assert "was made with PSP_MODEL__HIDDEN=[256,256]" in message
    assert "the settings say PSP_MODEL__HIDDEN=[32]" in message
    assert "KIND" not in message  # only what differs
    assert "point PSP_DATA_DIR at a new directory" in message

    result = _run(["serve"], {"PSP_DATA_DIR": str(tmp_path), "PSP_MODEL__HIDDEN": "[32]"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "PSP_MODEL__HIDDEN=[256,256]" in result.stderr


def test_a_matching_checkpoint_passes(tmp_path: Path) -> None:
    _checkpoint(tmp_path, hidden=(32,))
    check_checkpoint_fits(Settings(data_dir=tmp_path, model={"hidden": [32]}))


@pytest.mark.real_process
def test_a_worker_shard_beyond_the_count_is_refused_with_one_line(tmp_path: Path) -> None:
    env = {
        "PSP_DATA_DIR": str(tmp_path),
        "PSP_SHARDS__COUNT": "2",
        "PSP_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    result = _run(["worker", "--shard", "2"], env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "psp: invalid settings: shard 2 (psp worker --shard, or PSP_QUEUE__SHARD) does not "
        "exist: with PSP_SHARDS__COUNT=2 the shards are 0 to 1; pick one of those, or raise "
        "PSP_SHARDS__COUNT"
    )


def test_a_checkpoint_from_before_input_scaling_names_the_setting(tmp_path: Path) -> None:
    _checkpoint(tmp_path, hidden=(32,))
    path = tmp_path / "checkpoints" / "ckpt-0000000001-v0.safetensors"
    learner = OnlineLearner(
        build_model(ModelConfig(kind="complex", hidden=(32,), input_scaling="none")),
        TrainingConfig(),
    )
    save_checkpoint(path, learner)  # what a checkpoint written before the option says
    settings = Settings(data_dir=tmp_path, model={"hidden": [32], "kind": "complex"})
    with pytest.raises(StartupError, match="PSP_MODEL__INPUT_SCALING=none, but the settings"):
        check_checkpoint_fits(settings)
    fitting = Settings(
        data_dir=tmp_path, model={"hidden": [32], "kind": "complex", "input_scaling": "none"}
    )
    check_checkpoint_fits(fitting)
