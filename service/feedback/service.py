"""Predict and remember, then learn from the labels that come back later."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.api.payloads import PayloadError, TooManyRows, input_matrix, label_vector
from service.contexts.service import ContextService
from service.feedback.ids import new_ids, parse_id
from service.feedback.store import FeedbackStore, MemoryFeedbackStore, Remembered
from service.feedback.store import FeedbackUnavailable as FeedbackUnavailable  # the API maps it
from service.queue.base import Enqueued, TrainEntry
from service.queue.lanes import ShardQueue
from service.registry.accuracy import Scores
from service.registry.store import RegistryUnavailable
from service.serving.prediction import Prediction, PredictionService
from service.settings import Settings
from service.training.intake import NotAppliedInTime

log = logging.getLogger(__name__)


class UnknownPredictions(LookupError):
    """Ids never issued, or pushed out (404); the message lists them."""


class ExpiredPredictions(LookupError):
    """Ids past their time to live (410); the message lists them."""


class AlreadyLabelled(ValueError):
    """Ids whose label was already given (409); the message lists them."""


def _idempotency_key(index: int, ids: Sequence[str]) -> str:
    """The queue's idempotency key of one set of labelled prediction ids."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return f"feedback:{index}:{digest}"


def _listed(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:20])
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


@dataclass(frozen=True)
class RememberedPrediction:
    """A prediction and the ids under which its rows wait for their labels."""

    prediction: Prediction
    prediction_ids: list[str]


@dataclass(frozen=True)
class Scored:
    """What became of a feedback call.

    Attributes:
        batch_id: The train queue entry of the labelled rows.
        accepted: Rows queued for training.
        correct: How many of the original predictions the labels confirm.
        model_version: With `wait`, the version once the rows were learned.
        refused: With `wait`, why the trainer refused them; None if it learned them.
    """

    batch_id: str
    accepted: int
    correct: int
    model_version: int | None = None
    refused: str | None = None


def make_feedback_store(settings: Settings) -> FeedbackStore:
    """Redis when `PSP_REDIS_URL` is set, else the bounded in-memory store."""
    feedback = settings.feedback
    if settings.redis_url:
        from service.feedback.redis_store import RedisFeedbackStore

        return RedisFeedbackStore(
            settings.redis_url,
            settings.key_prefix,
            feedback.ttl_seconds,
            max_rows_per_context=feedback.max_rows_per_context,
        )
    return MemoryFeedbackStore(
        feedback.ttl_seconds, feedback.max_rows, max_rows_per_context=feedback.max_rows_per_context
    )


class FeedbackService:
    """Remembers predicted rows and turns their labels into train batches, once per id."""

    def __init__(
        self,
        contexts: ContextService,
        prediction: PredictionService,
        lanes: Mapping[int, ShardQueue],
        store: FeedbackStore,
        settings: Settings,
    ) -> None:
        self.contexts = contexts
        self.prediction = prediction
        self.lanes = dict(lanes)  # by shard
        self.store = store
        self.settings = settings

    async def predict_and_remember(
        self, key: str, inputs: Sequence[Any], *, top_k: int | None = None
    ) -> RememberedPrediction:
        """Predicts like `PredictionService.predict` and keeps each row under a new id.

        Raises:
            PayloadError, ContextNotFound, RegistryUnavailable, FeedbackUnavailable.
        """
        self.prediction.check_top_k(top_k)
        model = self.settings.model
        matrix = input_matrix(inputs, model.input_shape, self.settings.limits.max_rows)
        index = await self.contexts.resolve(key)
        prediction = await self.prediction.run(matrix, index)
        predicted = prediction.classes
        ids = new_ids(index, int(time.time() * 1000), len(matrix))
        rows = [Remembered(matrix[i], int(predicted[i])) for i in range(len(matrix))]
        await self.store.remember(ids, rows)
        return RememberedPrediction(prediction, ids)

    async def label(
        self, key: str, prediction_ids: Sequence[str], labels: Sequence[int], *, wait: bool
    ) -> Scored:
        """Queues the remembered rows of `prediction_ids` with `labels` for training.

        Nothing is claimed unless every id can be: one bad id leaves all of them usable.

        Raises:
            TooManyRows: More ids than `PSP_LIMITS__MAX_ROWS`.
            PayloadError: Wrong lengths, repeated ids, bad labels, or ids of another context.
            UnknownPredictions, ExpiredPredictions, AlreadyLabelled, ContextNotFound,
            RegistryUnavailable, FeedbackUnavailable, QueueFull, QueueUnavailable,
            NotAppliedInTime.
        """
        ids = list(prediction_ids)
        self._check_count(ids)
        vector = label_vector(labels, len(ids), self.settings.model.num_classes)
        repeated = sorted(i for i, seen in Counter(ids).items() if seen > 1)
        if repeated:
            raise PayloadError(
                f"prediction_ids repeats {_listed(repeated)}; send each id once with its label"
            )
        index = await self.contexts.resolve(key)
        self._check_issued_for(index, ids)
        # Look, queue, then claim: a call that dies after queueing leaves the ids unclaimed,
        # and the labels sent again find its batch through the idempotency key. (Claiming
        # first would leave them claimed and never queued: lost, and answered 409.)
        looked = await self.store.look(ids)
        await self._explain_failed_claim(looked.missing, looked.used)
        lane = self.lanes[self.contexts.shard_of(index)]
        queued, correct = await self._queue_rows(lane, index, ids, looked.rows, vector)
        await self._claim_queued(ids)
        if not wait:
            return Scored(queued.entry_id, len(vector), correct)
        timeout = self.settings.limits.wait_seconds
        try:
            version = await lane.applied.wait(queued.entry_id, timeout)
        except TimeoutError:
            raise NotAppliedInTime(
                f"batch {queued.entry_id} is queued but was not applied within {timeout:g} s; "
                "it will still be applied, so do not send these labels again"
            ) from None
        refused = await lane.applied.refusal(queued.entry_id)
        return Scored(queued.entry_id, len(vector), correct, version, refused)

    def _check_count(self, ids: list[str]) -> None:
        """Raises TooManyRows for more ids than the limit, before any work per id."""
        limit = self.settings.limits.max_rows
        if len(ids) > limit:
            raise TooManyRows(
                f"prediction_ids has {len(ids)} ids, more than the limit of {limit}; send at "
                f"most {limit} ids per call"
            )

    def _check_issued_for(self, index: int, ids: list[str]) -> None:
        """Raises unless every id was issued for context `index` and has not expired."""
        parsed = [parse_id(i) for i in ids]
        foreign = [i for i, p in zip(ids, parsed, strict=True) if p and p.context_index != index]
        if foreign:
            raise PayloadError(
                f"prediction ids {_listed(foreign)} were issued for another context; send them "
                "to /feedback/ with the key they were predicted under"
            )
        self._check_expiry(ids, parsed)

    async def _queue_rows(
        self,
        lane: ShardQueue,
        index: int,
        ids: list[str],
        rows: list[Remembered],
        vector: np.ndarray,
    ) -> tuple[Enqueued, int]:
        """Queues the remembered rows with their labels, keyed by their ids, and records their
        scores once.

        Returns:
            What the queue answered, and how many rows the model had predicted right.
        """
        matrix = np.stack([row.inputs for row in rows]).astype(np.float32, copy=False)
        correct = sum(1 for row, label in zip(rows, vector, strict=True) if row.predicted == label)
        entry = TrainEntry(index, matrix, vector, time.time())
        # Labels sent again after a call that queued them but never answered find the first
        # batch instead of queueing a second.
        queued = await lane.queue.enqueue(entry, _idempotency_key(index, ids))
        if not queued.repeated:
            metrics.TRAIN_ACCEPTED.inc(len(vector))
            await self._record_scores(index, Scores(len(vector), correct))
        return queued, correct

    async def _claim_queued(self, ids: list[str]) -> None:
        """Marks the ids of queued rows as labelled. The rows are queued whatever happens here:
        a claim another call made first (the same labels, sent twice at once, found the same
        batch) or a store outage leaves them learned once."""
        try:
            claim = await self.store.claim(ids)
        except FeedbackUnavailable as error:
            log.warning("queued feedback ids not marked as labelled: %s", error)
            return
        if not claim.rows:
            log.info("queued feedback ids were claimed by a call that sent them at once")

    async def _record_scores(self, index: int, scores: Scores) -> None:
        """Adds the scores to the context's hourly bucket and the aggregate metrics. The rows
        are already queued, so a registry outage loses only this call's bucket entry."""
        metrics.FEEDBACK_SCORED.inc(scores.seen)
        metrics.FEEDBACK_CORRECT.inc(scores.correct)
        try:
            await self.contexts.registry.add_feedback_scores(index, scores)
        except RegistryUnavailable as error:
            log.warning("feedback scores of context %d not recorded: %s", index, error)

    def _check_expiry(self, ids: list[str], parsed: list[Any]) -> None:
        horizon_ms = (time.time() - self.settings.feedback.ttl_seconds) * 1000
        unknown = [i for i, p in zip(ids, parsed, strict=True) if p is None]
        if unknown:
            raise UnknownPredictions(
                f"prediction ids {_listed(unknown)} were never issued; send ids returned by "
                "POST /predict/{key}?remember=true"
            )
        expired = [p.text for p in parsed if p.created_ms < horizon_ms]
        if expired:
            raise ExpiredPredictions(self._expired_sentence(expired))

    def _expired_sentence(self, expired: Sequence[str]) -> str:
        ttl = self.settings.feedback.ttl_seconds
        return (
            f"prediction ids {_listed(expired)} have expired (rows are kept {ttl:g} s, or until "
            "newer predictions push them out); send labels sooner, or train with POST /train"
        )

    async def _explain_failed_claim(self, missing: list[str], used: list[str]) -> None:
        if missing:
            gone = await self.store.pushed_out(missing)
            if gone:
                raise ExpiredPredictions(self._expired_sentence(gone))
            raise UnknownPredictions(
                f"prediction ids {_listed(missing)} are unknown; send ids returned by "
                "POST /predict/{key}?remember=true"
            )
        if used:
            raise AlreadyLabelled(
                f"prediction ids {_listed(used)} already have their labels and were learned "
                "once; send only ids not labelled yet"
            )
