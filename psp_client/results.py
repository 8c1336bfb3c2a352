"""Typed results of the service's answers."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def _read(result_type: type[R], body: dict[str, Any], **parsed: Any) -> R:
    """A `result_type` from the answer's fields of the same names; `parsed` gives the fields
    that are more than a copied value."""
    copied = {f.name: _value(f, body) for f in fields(result_type) if f.name not in parsed}
    return result_type(**copied, **parsed)


def _value(field: Field[Any], body: dict[str, Any]) -> Any:
    """The answer's value for `field`; a field with a default may be missing from the answer."""
    return body[field.name] if field.default is MISSING else body.get(field.name, field.default)


class _ReadByName:
    """Gives a result dataclass a `from_json` that copies the answer's fields of its names."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # set by @dataclass on the result

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Self:
        return _read(cls, body)


@dataclass(frozen=True)
class RecentAccuracy(_ReadByName):
    """A context's accuracy over the last `window_hours` hours (None before any score)."""

    window_hours: int
    train_seen: int
    train_accuracy: float | None
    feedback_seen: int
    feedback_accuracy: float | None


@dataclass(frozen=True)
class AccuracyHour:
    """One hour of a context's prequential train scores and scored feedback predictions."""

    hour: datetime
    train_seen: int
    train_correct: int
    train_accuracy: float | None
    feedback_seen: int
    feedback_correct: int
    feedback_accuracy: float | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AccuracyHour:
        return _read(cls, body, hour=datetime.fromisoformat(body["hour"]))


@dataclass(frozen=True)
class Context:
    """A registered context and what it has learned so far."""

    key: str
    index: int
    kind: str
    seed: int | None
    power: float | None
    created_at: datetime
    examples_seen: int
    refused: int
    prequential_accuracy: float | None
    recent: RecentAccuracy | None = None
    shard: int = 0  # the superposed model (shard) that holds the context; it never changes

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Context:
        recent = body.get("recent")
        return _read(
            cls,
            body,
            created_at=datetime.fromisoformat(body["created_at"]),
            recent=RecentAccuracy.from_json(recent) if recent else None,
        )


@dataclass(frozen=True)
class ContextPage:
    """One page of contexts and how many there are in all."""

    items: list[Context]
    total: int

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ContextPage:
        return cls([Context.from_json(item) for item in body["items"]], body["total"])


@dataclass(frozen=True)
class TrainResult:
    """A queued batch; with `wait=True`, also whether the trainer applied it.

    Attributes:
        batch_id: The queue entry id.
        accepted: Rows accepted.
        idempotency_key: The key the batch was sent under; resending under it trains nothing
            twice.
        applied: With `wait=True`, False when the trainer refused the batch; else None.
        model_version: With `wait=True`, the version once the batch was done; else None.
        reason: Why the trainer refused the batch, when it did.
    """

    batch_id: str
    accepted: int
    idempotency_key: str
    applied: bool | None = None
    model_version: int | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any], idempotency_key: str) -> TrainResult:
        return _read(cls, body, idempotency_key=idempotency_key)


@dataclass(frozen=True)
class Prediction(_ReadByName):
    """Classes and probabilities for the rows of one request.

    Attributes:
        predictions: The most likely class of each row.
        probabilities: Class probabilities of each row.
        model_version: The weights' version that answered.
        prediction_ids: With `remember=True`, one id per row to send its label back with
            `feedback`; else None.
    """

    predictions: list[int]
    probabilities: list[list[float]]
    model_version: int
    prediction_ids: list[str] | None = None


@dataclass(frozen=True)
class FeedbackResult(_ReadByName):
    """Labels of remembered predictions, queued for training and scored.

    Attributes:
        batch_id: The queue entry of the labelled rows.
        accepted: Rows queued.
        correct: How many of the original predictions the labels confirm.
        model_version: With `wait=True`, the version once the rows were learned; else None.
        applied: With `wait=True`, False when the trainer refused them; else None.
    """

    batch_id: str
    accepted: int
    correct: int
    model_version: int | None = None
    applied: bool | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One shard's model: its version, size and learning settings."""

    model_version: int
    contexts: int
    parameters: int
    config: dict[str, Any]
    checkpoints: list[int]
    raw: dict[str, Any]
    shard: int = 0  # which shard's model this describes
    shards: int = 1  # how many shards the service runs

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        return _read(cls, body, raw=body)
