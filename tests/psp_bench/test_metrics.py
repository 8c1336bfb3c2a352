"""Metrics from hand-computed accuracy matrices."""

import math

import pytest

from psp_bench.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    prequential_accuracy,
    window_summary,
)

NAN = math.nan

# Lower-triangular, as a permuted stream measures it: tasks are evaluated once trained. Task 0
# peaks after task 1 (0.95), so forgetting and -BWT differ.
TRIANGLE = [
    [0.90, NAN, NAN],
    [0.95, 0.80, NAN],
    [0.60, 0.60, 0.95],
]
# Full, as the last cycle of a rotating stream measures it.
FULL = [
    [0.5, 0.9, 0.8],
    [0.6, 0.7, 0.4],
    [0.7, 0.5, 0.9],
]


def test_average_accuracy_is_the_mean_of_the_last_row() -> None:
    assert average_accuracy(TRIANGLE) == pytest.approx((0.60 + 0.60 + 0.95) / 3)
    assert average_accuracy(FULL) == pytest.approx(0.7)


def test_forgetting_uses_the_best_earlier_accuracy() -> None:
    # Task 0: max(0.90, 0.95) - 0.60 = 0.35; task 1: 0.80 - 0.60 = 0.20.
    assert forgetting(TRIANGLE) == pytest.approx((0.35 + 0.20) / 2)
    # Task 0: max(0.5, 0.6) - 0.7 = -0.1; task 1: max(0.9, 0.7) - 0.5 = 0.4.
    assert forgetting(FULL) == pytest.approx((-0.1 + 0.4) / 2)


def test_backward_transfer_compares_with_the_accuracy_just_after_training() -> None:
    # (0.60 - 0.90 + 0.60 - 0.80) / 2
    assert backward_transfer(TRIANGLE) == pytest.approx(-0.25)
    # (0.7 - 0.5 + 0.5 - 0.7) / 2
    assert backward_transfer(FULL) == pytest.approx(0.0)


def test_a_single_task_has_nothing_to_forget() -> None:
    assert average_accuracy([[0.8]]) == pytest.approx(0.8)
    assert forgetting([[0.8]]) == 0.0
    assert backward_transfer([[0.8]]) == 0.0


@pytest.mark.parametrize("matrix", [[[0.5, 0.5]], [], [[0.1, 0.2], [0.3]]])
def test_a_matrix_that_is_not_square_is_refused(matrix: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        average_accuracy(matrix)


def test_prequential_accuracy_and_window_summary() -> None:
    assert prequential_accuracy(3, 4) == 0.75
    with pytest.raises(ValueError):
        prequential_accuracy(0, 0)
    assert window_summary([0.2, 0.8, 0.5]) == {"min": 0.2, "mean": pytest.approx(0.5)}
    with pytest.raises(ValueError):
        window_summary([])
