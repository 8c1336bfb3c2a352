"""How the registry keeps each context's history: the drift detector's sensitivity, how long
hourly buckets and drift events are kept, and the pruning that keeps them bounded.

Pruning deletes by age over every context at once; the writers of scores run it at most once an
hour each (`RegistryStore`), so its cost does not grow with the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.feedback.drift import DriftConfig
from service.registry import accuracy, drift

DEFAULT_RETENTION = timedelta(days=90)
DEFAULT_MAX_DRIFT_EVENTS = 20


@dataclass(frozen=True)
class HistoryPolicy:
    """What the registry watches in each context's scores and how long it keeps them.

    Attributes:
        drift: The drift detectors' sensitivity.
        retention: Hourly buckets and drift events older than this are deleted.
        max_drift_events: Drift events kept per context; older ones go first.
    """

    drift: DriftConfig = field(default_factory=DriftConfig)
    retention: timedelta = DEFAULT_RETENTION
    max_drift_events: int = DEFAULT_MAX_DRIFT_EVENTS

    def __post_init__(self) -> None:
        if self.retention <= timedelta(0) or self.max_drift_events < 1:
            raise ValueError("retention must be positive and max_drift_events at least 1")


def forget_old_history(*, session: Session, policy: HistoryPolicy, now: datetime) -> None:
    """Deletes the buckets and drift events older than the retention, and the detectors of
    retired contexts."""
    cutoff = now - policy.retention
    accuracy.forget_before(session=session, before=cutoff)
    drift.forget_before(session=session, before=cutoff)
