"""Service settings, read from `PSP_` environment variables (nested fields use `__`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from psp_core.models import ModelConfig
from service.auth import ApiKeySpec


class ModelSettings(BaseModel):
    """The superposed network the service hosts."""

    kind: Literal["binary", "complex", "rotation", "onepower", "none"] = "complex"
    arch: Literal["mlp", "convnet"] = "mlp"
    input_shape: list[int] = Field(default_factory=lambda: [64])
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    num_classes: int = Field(default=10, ge=2)
    seed: int = 0
    local_mix: bool = False

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
        )


class TrainingSettings(BaseModel):
    """How the single writer learns from queued batches."""

    optimizer: Literal["sgd", "adam", "rmsprop"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    batch_size: int = Field(default=32, ge=1)
    # Coalescing mixes entries of many contexts into one minibatch; off gives one step per entry,
    # which makes a replay bit-exact (the exactly-once tests rely on it).
    coalesce: bool = True
    deterministic: bool = False


class CheckpointSettings(BaseModel):
    """When checkpoints are written and how many are kept."""

    every_steps: int = Field(default=200, ge=1)
    every_seconds: float = Field(default=5.0, gt=0)
    keep: int = Field(default=5, ge=1)


class QueueSettings(BaseModel):
    """Limits of the train queue."""

    max_pending_examples: int = Field(default=100_000, ge=1)
    retry_after_seconds: int = Field(default=1, ge=1)
    shard: int = Field(default=0, ge=0)


class LimitSettings(BaseModel):
    """Request limits, answered with 413 or 422."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_rows: int = Field(default=4096, ge=1)
    max_key_length: int = Field(default=128, ge=1, le=128)  # of context keys
    wait_seconds: float = Field(default=60.0, gt=0)  # how long `?wait=true` waits to be applied


class BatcherSettings(BaseModel):
    """The predict batcher gathers concurrent requests into one forward pass."""

    max_delay_us: int = Field(default=2000, ge=0)
    max_rows: int = Field(default=4096, ge=1)


class ContextSettings(BaseModel):
    """Rules for registering contexts."""

    # Nearby one-power exponents recall nearly the same model, so new ones keep this distance.
    min_power_gap: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class Settings(BaseSettings):
    """Everything configurable, with the defaults of the embedded mode."""

    model_config = SettingsConfigDict(env_prefix="PSP_", env_nested_delimiter="__", extra="ignore")

    model: ModelSettings = Field(default_factory=ModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    batcher: BatcherSettings = Field(default_factory=BatcherSettings)
    data_dir: Path = Path("./psp-data")
    database_url: str | None = None
    redis_url: str | None = None
    device: str = "auto"
    registry_poll_seconds: float = Field(default=5.0, gt=0)  # for keys deleted elsewhere
    role: Literal["all", "api", "worker"] = "all"
    metrics_port: int = Field(default=9101, ge=1, le=65535)  # `psp worker`'s /metrics, /healthz
    api_keys: list[ApiKeySpec] = Field(default_factory=list)  # JSON; empty: the API is open
    key_prefix: str = "psp:"  # of every Redis key, so deployments (and tests) can share a Redis
    contexts: ContextSettings = Field(default_factory=ContextSettings)

    @model_validator(mode="after")
    def _split_roles_need_redis(self) -> Settings:
        if self.role != "all" and not self.redis_url:
            raise ValueError(
                f"PSP_ROLE={self.role} needs PSP_REDIS_URL: the API and the worker meet in Redis"
            )
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError("must be 'auto', 'cpu' or 'cuda[:n]'")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The registry URL: `PSP_DATABASE_URL`, else a SQLite file under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'psp.db').resolve()}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "checkpoints"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings` instead."""
    return Settings()
