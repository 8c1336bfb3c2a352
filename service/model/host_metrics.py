"""The Prometheus series of one shard's model: its version, steps, examples and contexts."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from psp_core.learner import StepResult
from service import metrics


@dataclass(frozen=True)
class HostMetrics:
    """The series of one shard's model."""

    version: Gauge
    steps: Counter
    examples: Counter
    refused_steps: Counter
    replay_rows: Gauge
    contexts: Gauge

    @classmethod
    def of_shard(cls, shard: int) -> HostMetrics:
        label = str(shard)
        return cls(
            version=metrics.MODEL_VERSION.labels(label),
            steps=metrics.TRAIN_STEPS.labels(label),
            examples=metrics.TRAINED_EXAMPLES.labels(label),
            refused_steps=metrics.REFUSED_STEPS.labels(label),
            replay_rows=metrics.REPLAY_ROWS.labels(label),
            contexts=metrics.CONTEXTS.labels(label),
        )

    def record_step(self, result: StepResult, examples: int, replay_rows: int) -> None:
        """Records a step of `examples` rows, after which the replay buffer holds
        `replay_rows`."""
        self.replay_rows.set(replay_rows)
        if result.applied:
            self.steps.inc()
            self.examples.inc(examples)
            self.version.set(result.model_version)
        else:
            self.refused_steps.inc()
