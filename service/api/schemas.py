"""Request and response bodies of the HTTP contract (docs/design.md).

Request bodies are strict: a number is a number, never a string or a boolean that could be
read as one, as the OpenAPI schema says (msgpack bodies reach validation as they are).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from service.api.body_budget import MOST_LISTED_ITEMS
from service.registry.models import KEY_CHARACTERS, KEY_MAX_LENGTH, KEY_PATTERN

KEY_PREFIX_PATTERN = rf"^[{KEY_CHARACTERS}]{{0,{KEY_MAX_LENGTH}}}$"
"""The start of a context key, possibly empty (`GET /contexts?prefix=`)."""

MAX_BATCH_CONTEXTS = MOST_LISTED_ITEMS
"""Contexts one `POST /contexts:batch` may register."""
MAX_PREDICT_ITEMS = 1000
"""Items one `POST /predict` may carry."""

ContextKey = Annotated[str, Field(pattern=KEY_PATTERN, examples=["tenant-42"])]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ContextCreate(BaseModel):
    """Registers a context; the server picks the seed or power when omitted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: ContextKey
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    power: FiniteFloat | None = None


class ContextBatchCreate(BaseModel):
    """Registers up to 10 000 contexts in one transaction."""

    model_config = ConfigDict(extra="forbid", strict=True)

    contexts: Annotated[list[ContextCreate], Field(min_length=1, max_length=MAX_BATCH_CONTEXTS)]


class ContextOut(BaseModel):
    """A registered context and what it has learned so far."""

    key: str
    index: int
    kind: str
    seed: int | None
    power: float | None
    shard: int = Field(
        description="The superposed model (shard) that holds the context; it never changes."
    )
    created_at: datetime
    examples_seen: int = Field(description="Examples learned under this context.")
    refused: int = Field(
        description="Examples the trainer refused to learn (a non-finite loss or gradient); "
        "they are not in examples_seen."
    )
    prequential_accuracy: float | None = Field(
        description="Share of examples the model got right just before learning them."
    )
    recent: RecentAccuracy | None = Field(
        default=None,
        description="Accuracy over the last PSP_ACCURACY__WINDOW_HOURS hours; only in "
        "GET /contexts/{key}.",
    )
    drift: DriftOut | None = Field(
        default=None,
        description="Whether the context's accuracy fell (a concept drift); only in "
        "GET /contexts/{key}.",
    )


class RecentAccuracy(BaseModel):
    """Rolling-window accuracy of a context, from its hourly buckets."""

    window_hours: int = Field(description="The current hour and the hours before it summed.")
    train_seen: int = Field(description="Examples scored just before being learned.")
    train_accuracy: float | None = Field(description="Share of those the model got right.")
    feedback_seen: int = Field(description="Remembered predictions whose labels came back.")
    feedback_accuracy: float | None = Field(description="Share of those the labels confirm.")


class DriftEventOut(BaseModel):
    """A detected fall of a context's accuracy: a concept drift."""

    at: datetime = Field(description="When it was found (UTC): when its scores were recorded.")
    source: Literal["train", "feedback"] = Field(
        description="train: scores of rows just before they were learned; feedback: "
        "remembered predictions whose labels came back."
    )
    accuracy_before: float = Field(description="The recent accuracy it fell from.")
    accuracy_after: float = Field(description="The accuracy of the rows that showed the fall.")
    rows: int = Field(description="How many rows showed it.")


class DriftOut(BaseModel):
    """A context's drift detection."""

    state: Literal["learning", "stable", "falling", "drifted"] = Field(
        description="learning: too few rows scored to test yet; stable: no fall; falling: "
        "evidence of a fall is gathering; drifted: a drift was found within the last "
        "PSP_ACCURACY__WINDOW_HOURS hours."
    )
    drifts: int = Field(description="Drifts found so far.")
    last_drift_at: datetime | None = Field(description="When the newest was found.")
    events: list[DriftEventOut] = Field(
        description="The newest drifts, newest first (at most PSP_DRIFT__MAX_EVENTS)."
    )


class AccuracyHourOut(BaseModel):
    """One hour of a context's scores; hours without scores are left out."""

    hour: datetime = Field(description="Start of the hour (UTC).")
    train_seen: int
    train_correct: int
    train_accuracy: float | None
    feedback_seen: int
    feedback_correct: int
    feedback_accuracy: float | None


class AccuracyHistory(BaseModel):
    key: str
    hours: int = Field(description="How far back the buckets go, the current hour included.")
    buckets: list[AccuracyHourOut]
    drifts: list[DriftEventOut] = Field(description="Drifts found in those hours, oldest first.")


class ContextPage(BaseModel):
    items: list[ContextOut]
    total: int


class ContextBatchOut(BaseModel):
    items: list[ContextOut]
    created: int


class TrainRequest(BaseModel):
    """Labelled rows for one context; rows are flat or nested to the model's input shape."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Annotated[list[list[Any]], Field(min_length=1, examples=[[[0.0, 0.5, 1.0]]])]
    labels: Annotated[list[StrictInt], Field(min_length=1, examples=[[3]])]


class TrainAccepted(BaseModel):
    batch_id: str
    accepted: int


class TrainApplied(TrainAccepted):
    applied: bool = Field(description="False when the trainer refused to learn the batch.")
    model_version: int
    reason: str | None = Field(
        default=None, description="Why the trainer refused the batch; null when applied."
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Annotated[list[list[Any]], Field(min_length=1, examples=[[[0.0, 0.5, 1.0]]])]


class PredictResponse(BaseModel):
    predictions: list[int]
    probabilities: list[list[float]] | None = Field(
        default=None,
        description="Every class's probability, per row; left out with ?probabilities=false "
        "or ?top_k=.",
    )
    top_classes: list[list[int]] | None = Field(
        default=None,
        description="With ?top_k=N: each row's N most probable classes, most probable first.",
    )
    top_probabilities: list[list[float]] | None = Field(
        default=None,
        description="With ?top_k=N: the probabilities of `top_classes`; left out with "
        "?probabilities=false.",
    )
    model_version: int


class PredictItem(BaseModel):
    """Rows for one context, inside a many-context predict request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    context: ContextKey
    inputs: Annotated[list[list[Any]], Field(min_length=1, examples=[[[0.0, 0.5, 1.0]]])]


class MultiPredictRequest(BaseModel):
    """Rows for many contexts, answered by one forward pass."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: Annotated[list[PredictItem], Field(min_length=1, max_length=MAX_PREDICT_ITEMS)]


class PredictItemOut(BaseModel):
    context: str
    predictions: list[int]
    probabilities: list[list[float]]
    model_version: int = Field(description="The version of the context's shard's model.")


class MultiPredictResponse(BaseModel):
    items: list[PredictItemOut] = Field(description="One answer per item, in request order.")
    model_version: int = Field(
        description="The first item's model version: every item's when all contexts share "
        "one shard (always, with PSP_SHARDS__COUNT=1)."
    )


class RememberedPredictResponse(PredictResponse):
    """A prediction made with `?remember=true`."""

    prediction_ids: list[str] = Field(
        description="One id per row; send it to POST /feedback/{key} with the row's true label "
        "within the time to live (PSP_FEEDBACK__TTL_SECONDS)."
    )


class FeedbackRequest(BaseModel):
    """True labels of remembered predictions, one per id."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prediction_ids: Annotated[
        list[Annotated[str, Field(max_length=64)]],
        Field(min_length=1, examples=[["p2.18c3a5f4e21.5f0c9d2e8a7b6c41"]]),
    ]
    labels: Annotated[list[StrictInt], Field(min_length=1, examples=[[3]])]


class FeedbackAccepted(BaseModel):
    batch_id: str
    accepted: int
    correct: int = Field(description="How many of the original predictions the labels confirm.")


class FeedbackApplied(FeedbackAccepted):
    applied: bool = Field(description="False when the trainer refused to learn the rows.")
    model_version: int
    reason: str | None = Field(
        default=None, description="Why the trainer refused the rows; null when applied."
    )


class ModelInfo(BaseModel):
    """One shard's model."""

    shard: int = Field(description="The shard this answer describes.")
    shards: int = Field(description="How many shards there are (PSP_SHARDS__COUNT).")
    config: dict[str, Any]
    model_version: int
    contexts: int = Field(description="Live contexts of the shard (deleted ones are not counted).")
    bank_rows: int = Field(
        description="Contexts held in this process's memory; a deleted context keeps its row, "
        "since its seed is never issued again."
    )
    parameters: int
    bytes_per_context: int = Field(
        description="Memory one more context adds to the model's bank (its per-layer keys)."
    )
    stored_bytes_per_context: int = Field(
        description="What defines a context in the registry: one 8-byte seed or exponent; the "
        "in-memory keys are derived from it."
    )
    device: str
    role: str
    checkpoints: list[int] = Field(description="Model versions of the kept checkpoints, unique.")
    training: dict[str, Any] = Field(
        description="How the writer learns: optimiser, learning rate, gradient clipping, "
        "minibatch size, and the replay buffer's rows and rows replayed per step."
    )
    restored_from: int | None = Field(
        default=None,
        description="In a rollback's answer: the version whose weights the new version holds.",
    )


class DeadLetterOut(BaseModel):
    """A train entry set aside as poison: never learned, counted as rejected."""

    entry_id: str
    reason: str
    context_index: int | None
    examples: int
    dead_lettered_at: float


class DeadLetterPage(BaseModel):
    """The newest dead-lettered entries first, and how many are kept."""

    items: list[DeadLetterOut]
    total: int


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Annotated[int, Field(ge=0)]
    shard: Annotated[int, Field(ge=0, description="The shard whose model rolls back.")] = 0


class Problem(BaseModel):
    """Every error: a sentence saying what is wrong and what to send instead."""

    detail: str


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` entries for error statuses answered with a `Problem`."""
    return {status: {"model": Problem} for status in statuses}
