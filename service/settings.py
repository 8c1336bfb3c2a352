"""Service settings, read from `PSP_` environment variables (nested fields use `__`)."""

from __future__ import annotations

import math
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from psp_core.contexts import derive_seed
from psp_core.kinds import CONTEXT_KINDS, kind_class
from psp_core.learner import TrainingConfig
from psp_core.models import ModelConfig
from psp_core.replay import DEFAULT_REPLAY_ROWS
from service.api.auth import ApiKeySpec, AuthSettings
from service.feedback.drift import DriftConfig

# The learning defaults live in psp_core, where the sweep in docs/benchmarks.md chose them.
_TRAINING = TrainingConfig()
_MODEL = ModelConfig()
_DRIFT = DriftConfig()


class ModelSettings(BaseModel):
    """The superposed network the service hosts."""

    kind: str = Field(default="complex", json_schema_extra={"enum": list(CONTEXT_KINDS)})
    arch: Literal["mlp", "convnet"] = "mlp"
    input_shape: list[int] = Field(default_factory=lambda: [64])
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    num_classes: int = Field(default=10, ge=2)
    seed: int = 0
    local_mix: bool = False
    # complex and onepower: carry complex activations between layers (see psp_core.kinds.complex)
    complex_activations: bool = _MODEL.complex_activations
    # `context`: standardise each context's inputs by its own running statistics and bound each
    # row's size, so that no tenant moves the shared weights more than its share, whatever the
    # scale of its inputs (psp_core.scaling); `none`: feed inputs in as they are.
    input_scaling: Literal["context", "none"] = _MODEL.input_scaling  # type: ignore[assignment]

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        kind_class(value)  # raises ValueError naming the kinds there are
        return value

    @field_validator("input_shape", "hidden")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(v <= 0 for v in value):
            raise ValueError("must be a non-empty list of positive integers")
        return value

    def to_config(self) -> ModelConfig:
        return ModelConfig(
            kind=self.kind,
            arch=self.arch,
            input_shape=tuple(self.input_shape),
            hidden=tuple(self.hidden),
            num_classes=self.num_classes,
            seed=self.seed,
            local_mix=self.local_mix,
            complex_activations=self.complex_activations,
            input_scaling=self.input_scaling,
        )


class TrainingSettings(BaseModel):
    """How the single writer learns from queued batches."""

    optimizer: Literal["sgd", "adam", "rmsprop"] = _TRAINING.optimizer  # type: ignore[assignment]
    lr: float = Field(default=_TRAINING.lr, gt=0)
    momentum: float = Field(default=_TRAINING.momentum, ge=0, lt=1)
    # Each step's gradients are scaled down to this global norm; raw-scale inputs (pixels in
    # 0-255) then still learn. Empty (null) turns clipping off.
    clip_norm: float | None = Field(default=_TRAINING.clip_norm, gt=0)
    batch_size: int = Field(default=32, ge=1)
    # Coalescing mixes entries of many contexts into one minibatch; off gives one step per entry,
    # which makes a replay bit-exact (the exactly-once tests rely on it).
    coalesce: bool = True
    deterministic: bool = False
    # Where role `all` runs the training steps on the CPU: a child process of their own
    # (`service.model.step_client`), so that they and the HTTP work do not take turns on one
    # interpreter; or a thread of the API process. Workers and GPU models step in a thread.
    steps_in: Literal["child_process", "thread"] = "child_process"

    def to_config(self, replay: ReplaySettings) -> TrainingConfig:
        return TrainingConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            clip_norm=self.clip_norm,
            replay_per_step=replay.per_step,
        )


class ReplaySettings(BaseModel):
    """Rehearsal: the trainer keeps past rows and mixes some into every step.

    The buffer holds up to `rows` rows shared about equally by the contexts, in the writer's
    memory and in every checkpoint: `rows * (4 * input width + 16)` bytes, 27 MB at the default
    100,000 rows of 64 inputs. `rows=0` keeps no rows at all.
    """

    rows: int = Field(default=DEFAULT_REPLAY_ROWS, ge=0)
    per_step: int = Field(default=_TRAINING.replay_per_step, ge=0)


class GuardSettings(BaseModel):
    """When the trainer judges that a step has broken the weights, and what it does then."""

    # Far above anything a healthy model reaches, far below float32 overflow.
    max_abs_weight: float = Field(default=1e6, gt=0)
    # A loss above both `runaway_factor` times its recent mean and `runaway_min_loss` has run
    # away; new tasks raise the loss a lot, so both bounds are generous.
    runaway_factor: float = Field(default=100.0, gt=1)
    runaway_min_loss: float = Field(default=100.0, gt=0)
    warmup_steps: int = Field(default=20, ge=0)
    # An entry whose step raises this many times is set aside as poison.
    poison_attempts: int = Field(default=3, ge=1)


class CheckpointSettings(BaseModel):
    """When checkpoints are written and how many are kept."""

    every_steps: int = Field(default=200, ge=1)
    every_seconds: float = Field(default=5.0, gt=0)
    keep: int = Field(default=5, ge=1)
    # Where API replicas download this worker's checkpoints when they do not share its volume:
    # the base URL of its health and metrics port, as they reach it. Unset: this host's name
    # and `metrics_port`, which is what a Kubernetes StatefulSet pod behind a headless Service
    # answers to.
    advertise_url: str | None = None
    # When set, a worker serves its checkpoints only to requests that carry it as a bearer
    # token, and API replicas send it. Exports hold weights only, never training rows.
    fetch_token: SecretStr | None = None

    @field_validator("advertise_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                "must be the worker's base URL as API replicas reach it, e.g. "
                "http://psp-worker-1.psp-worker:9101"
            )
        return value.rstrip("/") if value else value


class QueueSettings(BaseModel):
    """Limits of the train queue."""

    max_pending_examples: int = Field(default=100_000, ge=1)
    # The most of those one context may hold, as a share of `max_pending_examples`: a tenant
    # that floods the queue is refused (429) at its share while the others still get in.
    context_share: float = Field(default=0.1, gt=0, le=1)
    retry_after_seconds: int = Field(default=1, ge=1)
    shard: int = Field(default=0, ge=0)

    @property
    def max_pending_per_context(self) -> int:
        return max(1, math.ceil(self.context_share * self.max_pending_examples))


class WriterSettings(BaseModel):
    """The lease that makes each shard's writer the only one (`service.training.writer_lease`)."""

    # How long a claim lasts unless renewed (every third of it): a writer that stalls longer
    # than this may be replaced, and is then fenced out.
    lease_seconds: float = Field(default=15.0, ge=2)
    # How long a starting writer waits for another's lease to lapse before it gives up with
    # one line (exit status 2): a restart after a crash on another host waits out the lease.
    wait_seconds: float = Field(default=30.0, ge=0)


class ShardSettings(BaseModel):
    """How contexts are spread over superposed models.

    One model holds a limited number of contexts well; past that the answer is more models.
    Each shard is one model with its own train queue and writer. A new context goes to the
    least-loaded shard and stays there for good, so raising `count` sends new contexts to the
    new, empty shards and moves no existing one.
    """

    count: int = Field(default=1, ge=1)
    # Live contexts a shard may hold; empty (null): no cap.
    capacity: int | None = Field(default=None, ge=1)


class LimitSettings(BaseModel):
    """Request limits, answered with 413 or 422."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_rows: int = Field(default=4096, ge=1)
    max_key_length: int = Field(default=128, ge=1, le=128)  # of context keys
    wait_seconds: float = Field(default=60.0, gt=0)  # how long `?wait=true` waits to be applied


class BatcherSettings(BaseModel):
    """The predict batcher gathers concurrent requests into one forward pass."""

    # Under load only: a request that finds no forward pass in flight runs at once.
    max_delay_us: int = Field(default=2000, ge=0)
    max_rows: int = Field(default=4096, ge=1)


class FeedbackSettings(BaseModel):
    """Predictions remembered with `?remember=true`, waiting for their labels."""

    ttl_seconds: float = Field(default=24 * 3600, gt=0)
    # The in-memory store's cap (without Redis); the oldest rows are pushed out beyond it.
    max_rows: int = Field(default=100_000, ge=1)
    # The most rows one context may keep waiting for labels, as a share of `max_rows` (in
    # Redis too): a context past its share loses its own oldest rows, never another's.
    context_share: float = Field(default=0.1, gt=0, le=1)

    @property
    def max_rows_per_context(self) -> int:
        return max(1, math.ceil(self.context_share * self.max_rows))


class AccuracySettings(BaseModel):
    """Live per-context accuracy in GET /contexts/{key}."""

    # The rolling window sums this many hourly buckets, the current one included.
    window_hours: int = Field(default=24, ge=1, le=24 * 366)
    # Hourly buckets and drift events older than this are deleted, so that each context's
    # history stays bounded (at most one bucket per hour).
    retention_hours: int = Field(default=24 * 90, ge=1)


class DriftSettings(BaseModel):
    """Concept-drift detection on each context's scores (`service.feedback.drift`); the
    defaults were tuned by `benchmarks/drift_detection.py`."""

    warmup_rows: int = Field(default=_DRIFT.warmup_rows, ge=1)
    baseline_rows: int = Field(default=_DRIFT.baseline_rows, ge=1)
    drop: float = Field(default=_DRIFT.drop, gt=0, lt=1)  # the relative fall looked for
    threshold: float = Field(default=_DRIFT.threshold, gt=0)
    min_baseline: float = Field(default=_DRIFT.min_baseline, gt=0, lt=1)
    confidence: float = Field(default=_DRIFT.confidence, ge=0)
    max_events: int = Field(default=20, ge=1)  # drift events kept per context

    def to_config(self) -> DriftConfig:
        return DriftConfig(
            warmup_rows=self.warmup_rows,
            baseline_rows=self.baseline_rows,
            drop=self.drop,
            threshold=self.threshold,
            min_baseline=self.min_baseline,
            confidence=self.confidence,
        )


class ContextSettings(BaseModel):
    """Rules for registering contexts."""

    # Nearby one-power exponents recall nearly the same model, so new ones keep this distance.
    min_power_gap: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class Settings(BaseSettings):
    """Everything configurable, with the defaults of the embedded mode."""

    # An empty variable means "the default": deployments (compose, Kubernetes) can then list every
    # setting once and leave the defaults here, in one place.
    model_config = SettingsConfigDict(
        env_prefix="PSP_", env_nested_delimiter="__", extra="ignore", env_ignore_empty=True
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    shards: ShardSettings = Field(default_factory=ShardSettings)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    batcher: BatcherSettings = Field(default_factory=BatcherSettings)
    data_dir: Path = Path("./psp-data")
    database_url: str | None = None
    redis_url: str | None = None
    device: str = "auto"
    registry_poll_seconds: float = Field(default=5.0, gt=0)  # for keys deleted elsewhere
    # torch's intra-op threads in each process that runs the model (the API, a worker, the
    # training child). Unset: half the CPUs this process may use, at least one: a role-`all`
    # server runs two such processes, and torch's threads spin while they wait for a peer
    # that a busy neighbour has descheduled (docs/benchmarks.md, "Noisy neighbours").
    torch_threads: int | None = Field(default=None, ge=1)
    # The Retry-After of the 503s answered while a store or the model is unavailable (a full
    # queue's 429 has its own, `queue.retry_after_seconds`).
    unavailable_retry_after_seconds: int = Field(default=1, ge=1)
    role: Literal["all", "api", "worker"] = "all"
    metrics_port: int = Field(default=9101, ge=1, le=65535)  # `psp worker`'s /metrics, /healthz
    api_keys: list[ApiKeySpec] = Field(default_factory=list)  # JSON
    auth: AuthSettings = Field(default_factory=AuthSettings)  # when keys are required
    # FastAPI's own OpenTelemetry traces, metrics and logs, for a process that configures a
    # provider; off by default, since the service's metrics are Prometheus's (/metrics).
    opentelemetry: bool = False
    key_prefix: str = "psp:"  # of every Redis key, so deployments (and tests) can share a Redis
    contexts: ContextSettings = Field(default_factory=ContextSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)

    @model_validator(mode="after")
    def _split_roles_need_redis(self) -> Settings:
        if self.role != "all" and not self.redis_url:
            raise ValueError(
                f"PSP_ROLE={self.role} needs PSP_REDIS_URL, since the API and the worker meet in "
                "Redis; set PSP_REDIS_URL=redis://<host>:6379/0, or run `psp serve` with "
                "PSP_ROLE=all for one process without Redis"
            )
        return self

    @model_validator(mode="after")
    def _shard_exists(self) -> Settings:
        if self.queue.shard >= self.shards.count:
            raise ValueError(
                f"shard {self.queue.shard} (psp worker --shard, or PSP_QUEUE__SHARD) does not "
                f"exist: with PSP_SHARDS__COUNT={self.shards.count} the shards are 0 to "
                f"{self.shards.count - 1}; pick one of those, or raise PSP_SHARDS__COUNT"
            )
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError("must be 'auto', 'cpu' or 'cuda[:n]'")
        return value

    @property
    def resolved_torch_threads(self) -> int:
        """`torch_threads`, or half the CPUs this process may run on (at least one)."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, len(os.sched_getaffinity(0)) // 2)

    @property
    def resolved_database_url(self) -> str:
        """The registry URL: `PSP_DATABASE_URL`, else a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'psp.db').resolve()}"

    def learning_summary(self) -> dict[str, object]:
        """The settings that decide what the writer learns, as `GET /model` shows them."""
        training = self.training
        return {
            "optimizer": training.optimizer,
            "lr": training.lr,
            "momentum": training.momentum,
            "clip_norm": training.clip_norm,
            "batch_size": training.batch_size,
            "coalesce": training.coalesce,
            "replay_rows": self.replay.rows,
            "replay_per_step": self.replay.per_step,
        }

    def for_shard(self, shard: int) -> Settings:
        """The settings of one shard's model, queue and checkpoints.

        Shard 0 is the configured model itself, so a deployment that had one model keeps it;
        every other shard draws its initial weights from a seed of its own, so the shards are
        independent models.
        """
        update: dict[str, object] = {"queue": self.queue.model_copy(update={"shard": shard})}
        if shard != 0:
            seed = derive_seed("shard", self.model.seed, shard)
            update["model"] = self.model.model_copy(update={"seed": seed})
        return self.model_copy(update=update)

    @property
    def checkpoint_base_url(self) -> str:
        """Where API replicas reach this worker's checkpoints (`checkpoint.advertise_url`)."""
        return self.checkpoint.advertise_url or f"http://{socket.getfqdn()}:{self.metrics_port}"

    @property
    def checkpoint_dir(self) -> Path:
        """Shard 0's checkpoints where a one-model deployment always kept them; the other
        shards' in a subdirectory each."""
        directory = self.data_dir / "checkpoints"
        shard = self.queue.shard
        return directory if shard == 0 else directory / f"shard-{shard}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` instead."""
    return Settings()
