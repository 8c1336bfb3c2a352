"""The model host's locks: a prediction waits for a step's update, never for its passes or a
checkpoint's disk write, and every other change to the learner waits for the whole step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from psp_core.checkpoint import read_metadata
from psp_core.learner import PreparedStep, TrainingConfig
from psp_core.models import ModelConfig
from service import model_host
from service.context_definition import ContextDefinition
from service.model_host import ModelHost, TrainRows

WAIT_SECONDS = 10


def _host() -> ModelHost:
    config = ModelConfig(kind="complex", input_shape=(8,), hidden=(16,))
    host = ModelHost(config, TrainingConfig(), torch.device("cpu"), replay_rows=100)
    host.add_contexts([ContextDefinition(0, seed=1, power=None)])
    return host


def _rows(n: int = 4) -> TrainRows:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((n, 8)).astype(np.float32)
    return TrainRows(np.zeros(n, dtype=np.int64), inputs, np.arange(n) % 10)


class _HeldStep:
    """Holds the host's next training step between its backward pass and its update."""

    def __init__(self, host: ModelHost) -> None:
        self.prepared = threading.Event()
        self.release = threading.Event()
        prepare = host.learner.prepare_step

        def held(*args: Any, **kwargs: Any) -> PreparedStep:
            step = prepare(*args, **kwargs)
            self.prepared.set()
            assert self.release.wait(WAIT_SECONDS)
            return step

        host.learner.prepare_step = held  # type: ignore[method-assign]
        self.thread = threading.Thread(target=host.train_step, args=(_rows(),))

    def __enter__(self) -> _HeldStep:
        self.thread.start()
        assert self.prepared.wait(WAIT_SECONDS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.thread.join(WAIT_SECONDS)


@pytest.fixture
def host() -> Iterator[ModelHost]:
    host = _host()
    yield host
    host.close()


def test_a_prediction_is_answered_by_the_old_weights_while_a_step_computes(
    host: ModelHost,
) -> None:
    inputs, rows = _rows().inputs, host.bank_rows([0, 0, 0, 0])
    before, _ = host.predict(inputs, rows)

    with _HeldStep(host):
        during = host.predict_if_free(inputs, rows)  # None if the model lock were held
        assert during is not None
        probabilities, version = during
        assert version == 0
        assert np.array_equal(probabilities, before)

    after, version = host.predict(inputs, rows)
    assert version == 1
    assert not np.array_equal(after, before)


def test_a_restore_waits_for_the_step_in_progress_and_comes_after_it(
    host: ModelHost, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "version-0.pt"
    host.save(checkpoint, {})
    restore = threading.Thread(target=host.load, args=(checkpoint,))

    with _HeldStep(host) as step:
        restore.start()
        restore.join(0.3)
        assert restore.is_alive()  # it waits for the step, not between its halves
    restore.join(WAIT_SECONDS)

    assert not step.thread.is_alive() and not restore.is_alive()
    assert host.model_version == 0  # the step was applied (version 1), then restored over
    assert host.replay_size == 0  # the checkpoint's buffer, taken before the step


def test_a_prediction_goes_on_while_a_checkpoint_is_written_to_disk(
    host: ModelHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, release = threading.Event(), threading.Event()
    write = model_host.write_checkpoint

    def held_write(path: Path, checkpoint: bytes) -> None:
        writing.set()
        assert release.wait(WAIT_SECONDS)
        write(path, checkpoint)

    monkeypatch.setattr(model_host, "write_checkpoint", held_write)
    saving = threading.Thread(target=host.save, args=(tmp_path / "ck.pt", {"entry": "7"}))
    saving.start()
    try:
        assert writing.wait(WAIT_SECONDS)
        assert host.predict_if_free(_rows().inputs, host.bank_rows([0, 0, 0, 0])) is not None
    finally:
        release.set()
        saving.join(WAIT_SECONDS)
    assert read_metadata(tmp_path / "ck.pt")["user"] == {"entry": "7"}


def test_a_prediction_goes_on_while_the_bank_grows_for_new_contexts(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = host.learner.model.bank
    growing, release = threading.Event(), threading.Event()
    reserve = bank.reserve

    def held_reserve(extra: int) -> None:
        reserve(extra)
        growing.set()
        assert release.wait(WAIT_SECONDS)

    monkeypatch.setattr(bank, "reserve", held_reserve)
    new = [ContextDefinition(n, seed=100 + n, power=None) for n in range(1, 50)]
    adding = threading.Thread(target=host.add_contexts, args=(new,))
    adding.start()
    try:
        assert growing.wait(WAIT_SECONDS)
        assert host.predict_if_free(_rows().inputs, host.bank_rows([0, 0, 0, 0])) is not None
    finally:
        release.set()
        adding.join(WAIT_SECONDS)
    assert host.context_count == 50
    assert host.predict(_rows().inputs, host.bank_rows([49, 1, 0, 25]))[0].shape == (4, 10)
