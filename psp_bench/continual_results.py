"""What a continual-learning run measured: each method's trace over the stream, its scores,
and the whole run's results file."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from psp_bench import metrics
from psp_bench.continual_config import ContinualConfig
from psp_bench.footprint import Footprint


@dataclass
class MethodResult:
    """What one method scored.

    Attributes:
        method: The method's name.
        matrix: `R[i][j]`, `T x T`, accuracy on task `j` after segment `i` of the last cycle;
            NaN where task `j` had not been trained yet.
        curve_steps: Steps at which task 0 was evaluated (0 is before training).
        curve_accuracy: Accuracy on task 0 at those steps.
        prequential_accuracy: Test-then-train accuracy over every training example.
        refused_steps: Steps refused for a non-finite loss or gradient.
        footprint: Parameters and memory.
        seconds: Wall time of the method's run.
        last_cycle: Minimum and mean of the task-0 curve over the last cycle (rotating streams:
            the accuracy at angle 0°), else None.
        tenant_accuracy: The tenants stream's final accuracy of each tenant (the matrix and
            the curve are then empty), else None.
    """

    method: str
    matrix: list[list[float]]
    curve_steps: list[int]
    curve_accuracy: list[float]
    prequential_accuracy: float
    refused_steps: int
    footprint: Footprint
    seconds: float
    last_cycle: dict[str, float] | None = None
    tenant_accuracy: list[float] | None = None

    @property
    def final_accuracy(self) -> list[float]:
        """Accuracy on each task (or tenant) at the end of the run."""
        return self.tenant_accuracy if self.tenant_accuracy is not None else self.matrix[-1]

    @property
    def average_accuracy(self) -> float:
        if self.tenant_accuracy is not None:
            return sum(self.tenant_accuracy) / len(self.tenant_accuracy)
        return metrics.average_accuracy(self.matrix)

    @property
    def minimum_accuracy(self) -> float:
        """The worst task's (or tenant's) accuracy at the end of the run."""
        return min(self.final_accuracy)

    @property
    def forgetting(self) -> float:
        return math.nan if self.tenant_accuracy is not None else metrics.forgetting(self.matrix)

    @property
    def backward_transfer(self) -> float:
        if self.tenant_accuracy is not None:
            return math.nan
        return metrics.backward_transfer(self.matrix)

    def to_dict(self) -> dict[str, Any]:
        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "method": self.method,
            "average_accuracy": self.average_accuracy,
            "minimum_accuracy": self.minimum_accuracy,
            "forgetting": finite(self.forgetting),
            "backward_transfer": finite(self.backward_transfer),
            "prequential_accuracy": finite(self.prequential_accuracy),
            "final_accuracy": self.final_accuracy,
            "task0_last_cycle": self.last_cycle,
            "refused_steps": self.refused_steps,
            "seconds": self.seconds,
            "footprint": self.footprint.to_dict(),
            "matrix": [[finite(v) for v in row] for row in self.matrix],
            "task0_curve": {"steps": self.curve_steps, "accuracy": self.curve_accuracy},
        }


@dataclass
class ContinualResults:
    """A whole run: its configuration, the stream, and one result per method."""

    config: ContinualConfig
    stream: dict[str, Any]
    methods: list[MethodResult] = field(default_factory=list)
    environment: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "stream": self.stream,
            "environment": self.environment,
            "metric_definitions": metrics.__doc__,
            "methods": [result.to_dict() for result in self.methods],
        }


@dataclass
class Trace:
    """What one method measured over a stream.

    Attributes:
        matrix: `R[i][j]` over the last cycle, NaN where task `j` had not been trained yet.
        curve_steps: Steps at which task 0 was evaluated (0 is before training).
        curve_accuracy: Accuracy on task 0 at those steps.
        prequential_accuracy: Test-then-train accuracy over every training example.
        contexts: Contexts registered (for `separate`, networks created).
        last_cycle: Minimum and mean of the task-0 curve over the last cycle (rotating streams:
            the accuracy at angle 0°), else None.
        tenant_accuracy: The tenants stream's final accuracy of each tenant (the matrix and
            the curve are then empty), else None.
    """

    matrix: list[list[float]]
    curve_steps: list[int]
    curve_accuracy: list[float]
    prequential_accuracy: float
    contexts: int
    last_cycle: dict[str, float] | None = None
    tenant_accuracy: list[float] | None = None
