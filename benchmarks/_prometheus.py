"""Reading a server's Prometheus /metrics page: its samples, their sums, histogram quantiles."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a Prometheus `/metrics` page as (name, labels, value)."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_value(
    samples: Sequence[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when absent)."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def histogram_buckets(
    samples: Sequence[tuple[str, dict[str, str], float]], name: str
) -> list[tuple[float, float]]:
    """The cumulative `(upper bound, count)` buckets of histogram `name`, in bound order."""
    buckets = [
        (float(labels["le"]), value)
        for sample_name, labels, value in samples
        if sample_name == f"{name}_bucket"
    ]
    return sorted(buckets)


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' `histogram_quantile`: q in 0..1, linear inside the bucket that holds it.

    Args:
        buckets: Cumulative `(upper bound, count)` pairs in bound order, ending with `+Inf`.
    """
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bound: report that bound
            width = count - lower_count
            share = (rank - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound
