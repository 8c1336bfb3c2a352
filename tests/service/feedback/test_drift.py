"""The drift detector: a one-sided Bernoulli CUSUM over batches of (seen, correct) scores."""

from __future__ import annotations

import random

import pytest

from service.feedback.drift import DetectorState, Drift, DriftConfig, observe

CONFIG = DriftConfig()


def _feed(
    blocks: list[tuple[int, int]], config: DriftConfig = CONFIG, state: DetectorState | None = None
) -> tuple[DetectorState, list[tuple[int, Drift]]]:
    """Feeds the blocks in order; the drifts found, each with the rows fed until it."""
    state = state or DetectorState()
    found, rows = [], 0
    for seen, correct in blocks:
        rows += seen
        state, drift = observe(state, seen, correct, config)
        if drift is not None:
            found.append((rows, drift))
    return state, found


def _blocks(
    accuracy: float, count: int, rng: random.Random, rows: int = 50
) -> list[tuple[int, int]]:
    return [(rows, sum(rng.random() < accuracy for _ in range(rows))) for _ in range(count)]


def test_a_steady_context_is_never_flagged() -> None:
    rng = random.Random(0)
    for accuracy in (0.95, 0.7, 0.4):
        _, found = _feed(_blocks(accuracy, 400, rng))  # 20,000 rows each
        assert found == [], accuracy


def test_a_learning_curve_is_not_a_drift() -> None:
    rng = random.Random(1)
    curve = [b for step in range(10) for b in _blocks(0.1 + 0.08 * step, 4, rng)]
    _, found = _feed(curve)
    assert found == []


def test_a_fall_is_found_in_the_first_block_after_it() -> None:
    state, _ = _feed([(50, 45)] * 10)
    assert state.rows == 500 and state.baseline == pytest.approx(0.9)
    state, found = _feed([(50, 5)], state=state)
    assert found == [(50, Drift(accuracy_before=pytest.approx(0.9), accuracy_after=0.1, rows=50))]
    # A drift starts the detector afresh: the model relearns under a new baseline.
    assert state == DetectorState()


def test_evidence_gathers_over_small_batches() -> None:
    state, _ = _feed([(10, 9)] * 50)
    state, found = _feed([(10, 5)] * 20, state=state)
    assert len(found) == 1
    rows, drift = found[0]
    # One batch of ten at half the accuracy is not enough; a few are.
    assert 20 <= rows <= 100
    assert drift.accuracy_after == pytest.approx(0.5, abs=0.15)
    assert drift.rows == rows


def test_the_baseline_does_not_learn_from_a_suspected_fall() -> None:
    state, _ = _feed([(50, 45)] * 10)
    state, found = _feed([(50, 35)], state=state)  # 0.7: some evidence, no drift yet
    assert found == [] and 0 < state.cusum < CONFIG.threshold
    assert state.baseline == pytest.approx(0.9)
    assert (state.rows, state.suspect_seen, state.suspect_correct) == (500, 50, 35)
    state, found = _feed([(50, 49)], state=state)  # the suspicion clears: both batches count
    assert found == [] and state.cusum == 0 and state.rows == 600
    weight = 100 / CONFIG.baseline_rows
    assert state.baseline == pytest.approx(0.9 + weight * (84 / 100 - 0.9))


def test_nothing_is_tested_during_the_warm_up() -> None:
    config = DriftConfig(warmup_rows=200)
    _, found = _feed([(50, 45), (50, 45), (50, 45), (50, 0)], config)
    assert found == []


def test_a_context_near_chance_is_not_tested() -> None:
    _, found = _feed([(50, 8)] * 10 + [(50, 0)] * 10, DriftConfig(min_baseline=0.2))
    assert found == []


def test_an_empty_batch_changes_nothing() -> None:
    state = DetectorState(rows=300, baseline=0.8, cusum=3.0, suspect_seen=50, suspect_correct=30)
    assert observe(state, 0, 0, CONFIG) == (state, None)


@pytest.mark.parametrize(("seen", "correct"), [(-1, 0), (5, 6), (5, -1)])
def test_impossible_counts_are_refused(seen: int, correct: int) -> None:
    with pytest.raises(ValueError, match="0 <= correct <= seen"):
        observe(DetectorState(), seen, correct, CONFIG)


@pytest.mark.parametrize(
    "values",
    [
        {"warmup_rows": 0},
        {"drop": 1.0},
        {"drop": 0.0},
        {"threshold": 0.0},
        {"min_baseline": 1.0},
        {"confidence": -1.0},
    ],
)
def test_a_config_out_of_range_is_refused(values: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DriftConfig(**values)  # type: ignore[arg-type]
