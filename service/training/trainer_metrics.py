"""The metric series one shard's trainer updates, labelled with the shard's number."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from service import metrics


@dataclass(frozen=True)
class TrainerMetrics:
    """The series of one shard's trainer and queue."""

    divergences: Counter
    dead_lettered_entries: Counter
    dead_lettered_examples: Counter
    queue_depth: Gauge
    queue_lag: Gauge
    refused_rows: Counter
    bounded_rows: Counter

    @classmethod
    def of_shard(cls, shard: int) -> TrainerMetrics:
        label = str(shard)
        return cls(
            refused_rows=metrics.REFUSED_ROWS.labels(label),
            bounded_rows=metrics.BOUNDED_ROWS.labels(label),
            divergences=metrics.DIVERGENCES.labels(label),
            dead_lettered_entries=metrics.DEAD_LETTERED_ENTRIES.labels(label),
            dead_lettered_examples=metrics.DEAD_LETTERED_EXAMPLES.labels(label),
            queue_depth=metrics.QUEUE_DEPTH.labels(label),
            queue_lag=metrics.QUEUE_LAG.labels(label),
        )
