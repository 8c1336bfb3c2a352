"""The replay buffer: bounded, balanced over contexts, purgeable, and saved exactly."""

from __future__ import annotations

import numpy as np
import pytest

from psp_core.replay import ReplayBuffer


def _rows(context: int, count: int, width: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inputs = np.full((count, width), float(context), dtype=np.float32)
    return inputs, np.full(count, context, dtype=np.int64), np.arange(count, dtype=np.int64)


def test_keeps_every_row_while_there_is_room() -> None:
    buffer = ReplayBuffer(10, 4)
    buffer.add(*_rows(3, 6))
    assert len(buffer) == 6 and buffer.rows_of(3) == 6
    inputs, ids, labels = buffer.sample(50)
    assert inputs.shape == (50, 4) and set(ids.tolist()) == {3}
    assert (inputs == 3.0).all() and set(labels.tolist()) <= set(range(6))


def test_a_loud_context_cannot_crowd_out_a_quiet_one() -> None:
    buffer = ReplayBuffer(1000, 4, seed=1)
    buffer.add(*_rows(0, 50))  # a quiet tenant speaks first
    for _ in range(40):  # then a loud one sends 40 times the buffer's capacity
        buffer.add(*_rows(1, 1000))
    buffer.add(*_rows(2, 400))  # and a newcomer arrives late
    assert len(buffer) == 1000
    assert buffer.rows_of(0) == 50  # below its share: never evicted
    assert buffer.rows_of(2) >= 380  # the newcomer takes its share from the loud tenant
    assert buffer.rows_of(1) == 1000 - 50 - buffer.rows_of(2)


def test_a_full_share_is_a_uniform_sample_of_its_context() -> None:
    buffer = ReplayBuffer(200, 1, seed=3)
    inputs = np.arange(20_000, dtype=np.float32).reshape(-1, 1)
    buffer.add(inputs, np.zeros(20_000, dtype=np.int64), np.zeros(20_000, dtype=np.int64))
    kept = buffer.inputs[: len(buffer), 0]
    # Reservoir sampling keeps early and late rows alike: the mean of a uniform sample of
    # 0..19999 is 10000 with a standard error of about 400 for 200 rows.
    assert abs(float(kept.mean()) - 10_000) < 2_000
    assert (kept < 10_000).sum() > 60 and (kept >= 10_000).sum() > 60


def test_purge_drops_a_context_and_refuses_its_later_rows() -> None:
    buffer = ReplayBuffer(100, 4)
    for context in (1, 2, 3):
        buffer.add(*_rows(context, 20))
    assert buffer.purge({2}) == 20
    assert len(buffer) == 40 and buffer.contexts() == {1, 3}
    assert set(buffer.ids[: len(buffer)].tolist()) == {1, 3}
    assert (buffer.inputs[: len(buffer), 0] == buffer.ids[: len(buffer)]).all()  # rows moved whole
    buffer.add(*_rows(2, 5))
    assert buffer.rows_of(2) == 0 and len(buffer) == 40


def test_a_saved_state_draws_the_same_rows_after_loading() -> None:
    original = ReplayBuffer(64, 4, seed=5)
    for context in range(6):
        original.add(*_rows(context, 30))
    original.purge({4})
    tensors, header = original.state_tensors()
    restored = ReplayBuffer(64, 4, seed=99)
    restored.load_state_tensors(tensors, header)
    for buffer in (original, restored):
        buffer.add(*_rows(7, 25))
    assert len(restored) == len(original) == 64
    for a, b in zip(original.sample(40), restored.sample(40), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(original.ids, restored.ids)
    restored.add(*_rows(4, 3))
    assert restored.rows_of(4) == 0


def test_a_smaller_capacity_keeps_a_balanced_subset() -> None:
    big = ReplayBuffer(300, 4)
    for context in range(3):
        big.add(*_rows(context, 100))
    small = ReplayBuffer(90, 4)
    small.load_state_tensors(*big.state_tensors())
    assert len(small) == 90
    assert all(25 <= small.rows_of(context) <= 35 for context in range(3))


def test_rows_of_another_width_are_refused() -> None:
    tensors, header = ReplayBuffer(8, 4).state_tensors()
    with pytest.raises(ValueError, match="shape"):
        ReplayBuffer(8, 5).load_state_tensors(tensors, header)


def test_an_empty_buffer_samples_nothing() -> None:
    inputs, ids, labels = ReplayBuffer(8, 4).sample(5)
    assert inputs.shape == (0, 4) and ids.shape == labels.shape == (0,)
