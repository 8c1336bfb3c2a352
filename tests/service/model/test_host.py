"""The model host's locks: a prediction waits for a step's update, never for its passes, a
checkpoint's disk write or read, or the growth of the context tables, and every other change to
the learner waits for the whole step."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from psp_core.checkpoint import read_metadata
from psp_core.learner import TrainingConfig
from psp_core.models import ModelConfig
from service.contexts.definition import ContextDefinition
from service.model import host as model_host
from service.model.bank_rows import UnknownContext
from service.model.host import ModelHost, TrainRows

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


@contextmanager
def _held_after(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    work: Callable[..., object],
    *args: object,
) -> Iterator[threading.Thread]:
    """Runs `work(*args)` in a thread and holds it just after `owner.name` has run, for the
    block; the thread finishes after the block."""
    reached, release = threading.Event(), threading.Event()
    original = getattr(owner, name)

    def held(*call_args: Any, **call_kwargs: Any) -> Any:
        result = original(*call_args, **call_kwargs)
        reached.set()
        assert release.wait(WAIT_SECONDS)
        return result

    monkeypatch.setattr(owner, name, held)
    thread = threading.Thread(target=work, args=args)
    thread.start()
    try:
        assert reached.wait(WAIT_SECONDS)
        yield thread
    finally:
        release.set()
        thread.join(WAIT_SECONDS)


@pytest.fixture
def host() -> Iterator[ModelHost]:
    host = _host()
    yield host
    host.close()


def _answer_if_free(host: ModelHost) -> tuple[np.ndarray, int] | None:
    """A prediction, or None if the model lock is held."""
    return host.predict_if_free(_rows().inputs, np.array([0, 0, 0, 0]))


def test_a_prediction_is_answered_by_the_old_weights_while_a_step_computes(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, _ = host.predict(_rows().inputs, np.array([0, 0, 0, 0]))

    with _held_after(monkeypatch, host.learner, "prepare_step", host.train_step, _rows()):
        during = _answer_if_free(host)
        assert during is not None
        probabilities, version = during
        assert version == 0
        assert np.array_equal(probabilities, before)

    after, version = host.predict(_rows().inputs, np.array([0, 0, 0, 0]))
    assert version == 1
    assert not np.array_equal(after, before)


def test_a_restore_waits_for_the_step_in_progress_and_comes_after_it(
    host: ModelHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "version-0.pt"
    host.save(checkpoint, {})
    restore = threading.Thread(target=host.load, args=(checkpoint,))

    with _held_after(monkeypatch, host.learner, "prepare_step", host.train_step, _rows()) as step:
        restore.start()
        restore.join(0.3)
        assert restore.is_alive()  # it waits for the step, not between its halves
    restore.join(WAIT_SECONDS)

    assert not step.is_alive() and not restore.is_alive()
    assert host.model_version == 0  # the step was applied (version 1), then restored over
    assert host.replay_size == 0  # the checkpoint's buffer, taken before the step


def test_a_prediction_goes_on_while_a_checkpoint_is_written_to_disk(
    host: ModelHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    with _held_after(monkeypatch, model_host, "write_checkpoint", host.save, path, {"entry": "7"}):
        assert _answer_if_free(host) is not None
    assert read_metadata(path)["user"] == {"entry": "7"}


def test_a_prediction_goes_on_while_a_restore_reads_its_file(
    host: ModelHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    host.save(path, {})
    host.train_step(_rows())
    with _held_after(monkeypatch, model_host, "read_checkpoint", host.load, path):
        assert _answer_if_free(host) is not None
    assert host.model_version == 0


def test_a_prediction_goes_on_while_the_bank_grows_for_new_contexts(
    host: ModelHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank = host.learner.model.bank
    new = [ContextDefinition(n, seed=100 + n, power=None) for n in range(1, 50)]
    with _held_after(monkeypatch, bank, "reserve", host.add_contexts, new):
        assert len(bank.layers[0].table) >= 50  # grown, not yet appended
        assert _answer_if_free(host) is not None
    assert host.context_count == 50
    assert host.predict(_rows().inputs, np.array([49, 1, 0, 25]))[0].shape == (4, 10)


def test_a_forgotten_context_leaves_its_bank_row_to_the_next_new_one() -> None:
    host = _host()
    host.add_contexts([ContextDefinition(i, seed=10 + i, power=None) for i in (1, 2)])
    host.train_step(TrainRows(np.array([1, 1]), np.ones((2, 8), np.float32), np.array([1, 2])))
    assert host.bank_size == 3
    host.forget_contexts([1])
    assert not host.has_context(1) and host.context_count == 2
    assert 1 not in host.remembered_contexts()
    with pytest.raises(UnknownContext):
        host.predict(np.ones((1, 8), np.float32), np.array([1]))
    host.add_contexts([ContextDefinition(3, seed=13, power=None)])
    assert host.bank_size == 3  # the row of context 1 now serves context 3
    fresh = _host()
    fresh.add_contexts([ContextDefinition(3, seed=13, power=None)])
    x = np.random.default_rng(0).random((2, 8)).astype(np.float32)
    fresh.learner.model.load_state_dict(host.learner.model.state_dict())
    assert np.allclose(host.predict(x, np.array([3, 3]))[0], fresh.predict(x, np.array([3, 3]))[0])
