"""Every `psp_` metric, defined once. Context keys are never labels (unbounded cardinality).

Per-route HTTP latency and counts (`psp_http_*`) are recorded by `service.api.http_metrics`;
the rest are the model's, the queue's and the trainer's. When several processes serve
(`PROMETHEUS_MULTIPROC_DIR` set), prometheus-client aggregates them; the gauges say how.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Labelled by the route's path template (`/predict/{key}`), never by the path itself.
HTTP_REQUESTS = Counter(
    "psp_http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["handler", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "psp_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template and method.",
    ["handler", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_WAIT_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)

PREDICT_BATCH_ROWS = Histogram(
    "psp_predict_batch_rows",
    "Rows in each forward pass of the predict batcher.",
    buckets=_ROWS_BUCKETS,
)
PREDICT_QUEUE_WAIT = Histogram(
    "psp_predict_queue_wait_seconds",
    "Time a predict request waited to join a forward pass.",
    buckets=_WAIT_BUCKETS,
)
# What belongs to one shard's model, queue or trainer carries its number as the label `shard`.
_SHARD = ["shard"]

QUEUE_DEPTH = Gauge(
    "psp_queue_depth_examples",
    "Examples accepted for training but not yet checkpointed.",
    _SHARD,
    multiprocess_mode="max",
)
QUEUE_LAG = Gauge(
    "psp_queue_lag_seconds",
    "Age of the oldest example not yet checkpointed.",
    _SHARD,
    multiprocess_mode="max",
)
TRAIN_ACCEPTED = Counter("psp_train_accepted_examples_total", "Examples accepted by POST /train.")
TRAINED_EXAMPLES = Counter("psp_trainer_examples_total", "Examples learned by the trainer.", _SHARD)
TRAIN_STEPS = Counter("psp_trainer_steps_total", "Optimiser steps applied.", _SHARD)
REFUSED_STEPS = Counter(
    "psp_trainer_refused_steps_total",
    "Steps refused because the loss or a gradient was not finite.",
    _SHARD,
)
REFUSED_ROWS = Counter(
    "psp_trainer_refused_rows_total",
    "Rows refused because their own step was not finite (a refused step shared with other "
    "entries is stepped again without them first).",
    _SHARD,
)
BOUNDED_ROWS = Counter(
    "psp_trainer_bounded_rows_total",
    "Rows whose size the input scaling bounded: far outside their context's usual values.",
    _SHARD,
)
DIVERGENCES = Counter(
    "psp_trainer_divergences_total",
    "Times the weights went non-finite or the loss ran away, and the last healthy checkpoint "
    "was restored.",
    _SHARD,
)
DEAD_LETTERED_ENTRIES = Counter(
    "psp_dead_lettered_entries_total",
    "Train entries set aside as poison (undecodable, diverging, or failing repeatedly).",
    _SHARD,
)
DEAD_LETTERED_EXAMPLES = Counter(
    "psp_dead_lettered_examples_total",
    "Examples of the train entries set aside as poison; they count as rejected, not lost.",
    _SHARD,
)
BACKGROUND_RESTARTS = Counter(
    "psp_background_restarts_total",
    "Restarts of a crashed background task, by task.",
    ["task"],
)
BACKGROUND_POLL_FAILURES = Counter(
    "psp_background_poll_failures_total",
    "Polls of a background task that failed and wait for the next tick (the registry was "
    "unreachable), by task.",
    ["task"],
)
PREQUENTIAL_CORRECT = Counter(
    "psp_prequential_correct_total", "Examples the model got right just before learning them."
)
PREQUENTIAL_EXAMPLES = Counter(
    "psp_prequential_examples_total", "Examples scored before learning them."
)
PREQUENTIAL_ACCURACY = Gauge(
    "psp_prequential_accuracy_ratio",
    "Aggregate prequential (test-then-train) accuracy since the process started.",
    multiprocess_mode="max",
)
FEEDBACK_SCORED = Counter(
    "psp_feedback_scored_total", "Remembered predictions whose labels came back (all contexts)."
)
FEEDBACK_CORRECT = Counter(
    "psp_feedback_correct_total", "Remembered predictions the returned labels confirm."
)
MODEL_VERSION = Gauge(
    "psp_model_version",
    "Version (applied steps) of the weights this process serves.",
    _SHARD,
    multiprocess_mode="max",
)
REPLAY_ROWS = Gauge(
    "psp_replay_rows",
    "Rows held in the trainer's replay buffer.",
    _SHARD,
    multiprocess_mode="max",
)
CONTEXTS = Gauge(
    "psp_contexts", "Contexts in this process's bank.", _SHARD, multiprocess_mode="max"
)
SHARD_LIVE_CONTEXTS = Gauge(
    "psp_shard_live_contexts",
    "Live contexts of each shard, as the registry counts them.",
    _SHARD,
    multiprocess_mode="max",
)
SHARD_CAPACITY = Gauge(
    "psp_shard_capacity",
    "Live contexts a shard may hold (PSP_SHARDS__CAPACITY); absent without a cap.",
    _SHARD,
    multiprocess_mode="max",
)
CHECKPOINT_SECONDS = Histogram(
    "psp_checkpoint_duration_seconds",
    "Time to write one checkpoint durably.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHECKPOINT_STALENESS = Histogram(
    "psp_checkpoint_staleness_seconds",
    "Time from a checkpoint being written to this process serving it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHECKPOINT_FETCHES = Counter(
    "psp_checkpoint_fetches_total",
    "Checkpoints an API replica downloaded from a worker, by outcome: ok, unavailable (no "
    "answer or not 200) or checksum_mismatch.",
    ["shard", "outcome"],
)


_prequential_totals = {"correct": 0, "examples": 0}


def record_prequential(correct: int, examples: int) -> None:
    """Adds a scored minibatch and refreshes the aggregate accuracy."""
    PREQUENTIAL_CORRECT.inc(correct)
    PREQUENTIAL_EXAMPLES.inc(examples)
    _prequential_totals["correct"] += correct
    _prequential_totals["examples"] += examples
    if _prequential_totals["examples"]:
        PREQUENTIAL_ACCURACY.set(_prequential_totals["correct"] / _prequential_totals["examples"])


def exposition() -> tuple[bytes, str]:
    """The text format of every metric and its content type; summed over the serving
    processes when `PROMETHEUS_MULTIPROC_DIR` is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


CONTEXT_DRIFTS = Counter(
    "psp_context_drifts_total",
    "Concept drifts found in the contexts' scores (a context's accuracy fell), by the shard "
    "that holds the context; which contexts is in GET /contexts/{key} and on the /ui page.",
    _SHARD,
)
