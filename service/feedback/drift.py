"""Concept-drift detection on one context's stream of scored predictions.

A context's model is scored as it goes: prequentially (each row is predicted just before it is
learned) and by late labels (feedback on remembered predictions). The scores reach the registry
in batches of any size (a checkpoint's `(seen, correct)` for each context it trained, or one
feedback call), and a fall in accuracy is the moment an operator wants to hear about: the
tenant's data changed (a concept drift) and its model must learn anew.

The test is a one-sided Bernoulli CUSUM (Page, 1954). Each batch adds its log-likelihood ratio
of "the accuracy fell to `(1 - drop) × baseline`" against "the accuracy is the baseline"; the sum
is floored at zero, so old good batches are no alibi for new bad ones, and a drift is declared
when it passes `threshold`. The baseline is the context's recent accuracy, a mean over about
`baseline_rows` rows. While evidence of a fall stands, the rows that gave it are held back from
the baseline, so a fall does not drag down the level it is measured against; once the evidence
is back at zero (a false suspicion) they are learned after all, so that the baseline is a mean
over every row and not only over the lucky ones. The test measures from the baseline's lower
confidence bound (`confidence` standard errors below it), so that a baseline that happens to
lie high, as an estimate from a few hundred rows often does, does not make ordinary batches
look like a fall. A model that is still learning (accuracy
rising) never raises evidence and keeps the baseline current. A drift resets the detector: the
model relearns, and the baseline is measured afresh after `warmup_rows` rows.

The state is five numbers (`DetectorState`), small enough to keep per context in the registry,
where every process sees it and a restart keeps it. Nothing here touches the prediction path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DriftConfig:
    """How sensitive the detector is; the defaults were tuned by `benchmarks/drift_detection.py`.

    Attributes:
        warmup_rows: Rows scored before the first test, and again after each drift: the
            baseline needs them to mean something.
        baseline_rows: The baseline is an exponentially weighted mean over about this many rows.
        drop: The relative fall of accuracy the test is tuned to find: 0.3 looks for
            `accuracy < 0.7 × baseline`. Smaller falls are found later or not at all.
        threshold: Evidence (log-likelihood ratio) at which a drift is declared; each unit more
            makes a false alarm about e times rarer and a detection slightly later.
        min_baseline: Below this accuracy nothing is tested (a model near chance cannot fall).
        confidence: The test measures a fall from this many standard errors below the
            baseline, which is itself an estimate.
    """

    warmup_rows: int = 150
    baseline_rows: int = 200
    drop: float = 0.3
    threshold: float = 10.0
    min_baseline: float = 0.2
    confidence: float = 2.0

    def __post_init__(self) -> None:
        if self.warmup_rows < 1 or self.baseline_rows < 1:
            raise ValueError("warmup_rows and baseline_rows must be at least 1")
        if not 0 < self.drop < 1:
            raise ValueError("drop must lie strictly between 0 and 1")
        if not self.threshold > 0:
            raise ValueError("threshold must be positive")
        if not 0 < self.min_baseline < 1:
            raise ValueError("min_baseline must lie strictly between 0 and 1")
        if self.confidence < 0:
            raise ValueError("confidence must be zero or more")


@dataclass(frozen=True)
class DetectorState:
    """What the detector remembers of one context's scores.

    Attributes:
        rows: Rows the baseline has learned since the start, or since the last drift.
        baseline: The recent accuracy the test compares against.
        cusum: Evidence of a fall gathered so far (0: none).
        suspect_seen: Rows scored since the evidence last stood at zero, held back from the
            baseline.
        suspect_correct: Of those, the right ones: the accuracy after a fall.
    """

    rows: int = 0
    baseline: float = 0.0
    cusum: float = 0.0
    suspect_seen: int = 0
    suspect_correct: int = 0


@dataclass(frozen=True)
class Drift:
    """A detected fall of accuracy.

    Attributes:
        accuracy_before: The baseline the fall was measured from.
        accuracy_after: The accuracy of the rows that gave the evidence.
        rows: How many rows that was.
    """

    accuracy_before: float
    accuracy_after: float
    rows: int


def observe(
    state: DetectorState, seen: int, correct: int, config: DriftConfig
) -> tuple[DetectorState, Drift | None]:
    """Feeds one batch of scores to the detector.

    Args:
        state: The context's state before the batch.
        seen: Rows scored in the batch.
        correct: Of those, the right ones.
        config: The detector's sensitivity.

    Returns:
        The state after the batch, and the drift it revealed, if any.

    Raises:
        ValueError: The counts are negative or `correct > seen`.
    """
    if seen < 0 or not 0 <= correct <= seen:
        raise ValueError(f"need 0 <= correct <= seen, got seen={seen}, correct={correct}")
    if seen == 0:
        return state, None
    if state.rows < config.warmup_rows or state.baseline < config.min_baseline:
        return _learn_baseline(state, seen, correct, config), None
    evidence = _log_likelihood_ratio(_lower_bound(state, config), seen, correct, config)
    cusum = max(0.0, state.cusum + evidence)
    suspect_seen = state.suspect_seen + seen
    suspect_correct = state.suspect_correct + correct
    if cusum == 0.0:
        return _learn_baseline(state, suspect_seen, suspect_correct, config), None
    if cusum >= config.threshold:
        drift = Drift(state.baseline, suspect_correct / suspect_seen, suspect_seen)
        return DetectorState(), drift
    return (
        DetectorState(state.rows, state.baseline, cusum, suspect_seen, suspect_correct),
        None,
    )


def _learn_baseline(
    state: DetectorState, seen: int, correct: int, config: DriftConfig
) -> DetectorState:
    """Moves the baseline towards the accuracy of `seen` rows (the batch, with the rows held
    back while evidence stood): a plain mean over the first `baseline_rows` rows, an
    exponentially weighted one after; the evidence is cleared."""
    rows = state.rows + seen
    weight = min(1.0, seen / min(rows, config.baseline_rows))
    baseline = state.baseline + weight * (correct / seen - state.baseline)
    return DetectorState(rows, baseline, 0.0, 0, 0)


def _lower_bound(state: DetectorState, config: DriftConfig) -> float:
    """The baseline less `confidence` standard errors of a mean over the rows it learned."""
    variance = state.baseline * (1.0 - state.baseline) / min(state.rows, config.baseline_rows)
    return max(state.baseline - config.confidence * math.sqrt(variance), 1e-3)


def _log_likelihood_ratio(baseline: float, seen: int, correct: int, config: DriftConfig) -> float:
    """log P(batch | accuracy (1 - drop) × baseline) - log P(batch | accuracy baseline)."""
    before = min(baseline, 1.0 - 1e-3)
    after = (1.0 - config.drop) * before
    wrong = seen - correct
    return correct * math.log(after / before) + wrong * math.log((1.0 - after) / (1.0 - before))
