"""A Python client for the superposition continual-learning service (needs only httpx)."""

from psp_client.client import AsyncClient, Client
from psp_client.errors import (
    Conflict,
    Gone,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PspError,
    TooManyRequests,
    Unavailable,
)
from psp_client.results import (
    AccuracyHour,
    Context,
    ContextPage,
    FeedbackResult,
    ModelInfo,
    Prediction,
    RecentAccuracy,
    TrainResult,
)
from psp_client.retry import NO_RETRIES, RetryPolicy

__all__ = [
    "NO_RETRIES",
    "AccuracyHour",
    "AsyncClient",
    "Client",
    "Conflict",
    "Context",
    "ContextPage",
    "FeedbackResult",
    "Gone",
    "InvalidRequest",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "Prediction",
    "PspError",
    "RecentAccuracy",
    "RetryPolicy",
    "TooManyRequests",
    "TrainResult",
    "Unavailable",
]
