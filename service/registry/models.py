"""SQLAlchemy models of the context registry.

One row per registered context. A context is defined by one number (an integer seed, or a real
exponent for one-power), so a row stays small: the table is expected to hold hundreds of
thousands of tenants. Besides the primary key there are: a partial unique index on live keys, a
partial index on retirement times (which holds retired rows only), and unique indices on seed
and on power. The last two cost bytes on every row and are worth it: a seed names a model in the
shared weights, so it must never be issued twice, not even after its context was deleted.

A second table holds the API keys created at run time (`psp keys create`), as salted hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

KEY_MAX_LENGTH = 128
"""The longest context key."""

KEY_CHARACTERS = "A-Za-z0-9._:-"
"""The characters of a context key, as a regex character class: none needs escaping in a URL
path."""

KEY_PATTERN = rf"^[{KEY_CHARACTERS}]{{1,{KEY_MAX_LENGTH}}}$"
"""A valid context key. The HTTP contract (path parameters and bodies) and the registry both
check keys against it."""

LIVE_KEY_INDEX = "uq_contexts_key_live"
"""Name of the partial unique index that keeps keys unique among live (unretired) contexts."""

RETIRED_AT_INDEX = "ix_contexts_retired_at"
"""Name of the partial index over retired rows that serving processes poll for deletions."""

SEED_INDEX = "uq_contexts_seed"
"""Name of the unique index that keeps a seed to one context, live or retired, for good."""

POWER_INDEX = "uq_contexts_power"
"""Name of the unique index that keeps a one-power exponent to one context, for good."""


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def _partial_index(name: str, column: str, where: str, *, unique: bool = False) -> Index:
    """An index over the rows where `where` holds, on SQLite and PostgreSQL alike."""
    return Index(
        name, column, unique=unique, sqlite_where=text(where), postgresql_where=text(where)
    )


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always stored in and read back as timezone-aware UTC.

    SQLite keeps no zone and hands back naive values, so they are tagged as UTC on the way out;
    PostgreSQL hands back the session's zone, so values are converted to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Float64(TypeDecorator[float]):
    """An IEEE double that is always read back as a Python float.

    SQLite stores integral REAL values as integers and, in RETURNING rows, hands them back as
    Python ints; this coerces them so that a power is a float wherever it comes from.
    """

    impl = Double()
    cache_ok = True

    def process_result_value(self, value: float | None, dialect: Dialect) -> float | None:
        return None if value is None else float(value)


class Base(DeclarativeBase):
    """Declarative base of the registry models, with deterministic constraint names."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ContextRow(Base):
    """One registered context.

    Attributes:
        index: Position of the context in the model's context bank. Monotonic and never reused,
            even after the context is retired (SQLite uses AUTOINCREMENT, PostgreSQL a sequence).
        seed: The integer seed of a binary, complex, rotation or none context; None for
            one-power.
        power: The real exponent of a one-power context; None for the other kinds.
        created_at: When the context was registered (UTC).
        retired_at: When the context was deleted (UTC); None while it is live.
        examples_seen: Training examples applied under this context.
        prequential_correct: Examples the model got right before learning them.
        prequential_seen: Examples scored before learning them (test-then-train).
        shard: The model process that owns the context when contexts are sharded.
        key: The client's name for the context, unique among live contexts.
        refused: Examples the trainer refused to learn (a non-finite loss or gradient); they
            are not in `examples_seen`. None until the first refusal.
    """

    __tablename__ = "contexts"
    __table_args__ = (
        _partial_index(LIVE_KEY_INDEX, "key", "retired_at IS NULL", unique=True),
        _partial_index(RETIRED_AT_INDEX, "retired_at", "retired_at IS NOT NULL"),
        # Partial, so the rows of the other kinds (whose seed or power is NULL) cost nothing.
        _partial_index(SEED_INDEX, "seed", "seed IS NOT NULL", unique=True),
        _partial_index(POWER_INDEX, "power", "power IS NOT NULL", unique=True),
        {"sqlite_autoincrement": True},
    )

    # Columns are declared widest-first so PostgreSQL packs them without alignment padding
    # (8-byte values, then the 4-byte shard, then the variable-length key).
    # SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY, hence the variant.
    index: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    seed: Mapped[int | None] = mapped_column(BigInteger)
    power: Mapped[float | None] = mapped_column(Float64)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    examples_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    prequential_correct: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    prequential_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    shard: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH))
    # NULL stands for none refused, so rows that never had a step refused pay no heap bytes.
    refused: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def is_live(self) -> bool:
        """Whether the context still answers (it has not been retired)."""
        return self.retired_at is None

    @property
    def prequential_accuracy(self) -> float | None:
        """Test-then-train accuracy so far, or None before any example was scored."""
        if self.prequential_seen == 0:
            return None
        return self.prequential_correct / self.prequential_seen

    def __repr__(self) -> str:
        return (
            f"ContextRow(index={self.index!r}, key={self.key!r}, seed={self.seed!r}, "
            f"power={self.power!r}, retired_at={self.retired_at!r})"
        )


class TrainerState(Base):
    """How far the registry's counters have been advanced by each shard's trainer.

    `last_entry_id` is the id of the last queue entry whose counts are in `contexts`. The
    trainer advances it in the same transaction as the counts, which makes applying a
    checkpoint's counts idempotent (exactly-once).

    The writer lease (`service.registry.writers`): `writer_token` grows by one with each
    writer that claims the shard, and only the newest writer's token may commit counts;
    `writer_owner` names that writer (`host:pid`) and `lease_until` is when its claim lapses
    unless renewed.
    """

    __tablename__ = "trainer_state"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_entry_id: Mapped[str] = mapped_column(String(64))
    writer_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    writer_owner: Mapped[str] = mapped_column(String(200), default="", server_default=text("''"))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ApiKeyRow(Base):
    """An API key created at run time; only its salted hash is kept (see `service.api.auth`).

    Attributes:
        id: The public part of the key (`psp_<id>_<secret>`).
        salt: Random hex salt of the hash.
        sha256: `sha256(salt + secret)` in hex.
        scopes: Comma-separated scopes (`predict`, `train`, `admin`).
        key_prefix: The context-key prefix the key is limited to; empty for every context.
        name: A label for people; never a secret.
        created_at: When the key was created (UTC).
        revoked_at: When the key was revoked (UTC); None while it is valid.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    salt: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(64))
    key_prefix: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), default="")
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AccuracyHourRow(Base):
    """One hour of one context's scored predictions, kept apart from `contexts` so that the
    context rows stay small.

    Attributes:
        context_index: The context's bank index.
        hour: Start of the hour (UTC) the scores were recorded in. Train scores are recorded
            when their checkpoint's counts reach the registry, feedback scores when the labels
            are accepted.
        train_seen: Examples scored before being learned (test-then-train).
        train_correct: Of those, the ones the model got right.
        feedback_seen: Remembered predictions whose labels came back.
        feedback_correct: Of those, the predictions the labels confirm.
    """

    __tablename__ = "accuracy_hours"

    context_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    train_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    train_correct: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    feedback_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    feedback_correct: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class ContextDriftRow(Base):
    """The drift detector's state for one context and one source of scores
    (`service.feedback.drift`), kept apart from `contexts` so that its rows stay small; created
    at the first scores.

    Attributes:
        context_index: The context's bank index.
        source: `train` (prequential scores, at each checkpoint) or `feedback` (late labels).
        rows: Rows scored since the first scores or the last drift.
        baseline: The recent accuracy a fall is measured from.
        cusum: Evidence of a fall gathered so far.
        suspect_seen: Rows scored since the evidence last stood at zero.
        suspect_correct: Of those, the right ones.
        drifts: Drifts detected from this source, ever.
        scored_at: When the last scores arrived (for `train`: the context was last trained).
        last_drift_at: When the last drift was detected; None before the first.
    """

    __tablename__ = "context_drift"

    context_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    source: Mapped[str] = mapped_column(String(8), primary_key=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    baseline: Mapped[float] = mapped_column(Float64)
    cusum: Mapped[float] = mapped_column(Float64)
    suspect_seen: Mapped[int] = mapped_column(BigInteger)
    suspect_correct: Mapped[int] = mapped_column(BigInteger)
    drifts: Mapped[int] = mapped_column(Integer)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_drift_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DriftEventRow(Base):
    """One detected drift of one context: when, from which scores, and how far accuracy fell.

    Attributes:
        id: Increases with every event.
        context_index: The context's bank index.
        at: When the drift was detected (UTC): when its scores reached the registry.
        source: `train` or `feedback`, as in `ContextDriftRow`.
        accuracy_before: The baseline accuracy the fall was measured from.
        accuracy_after: The accuracy of the rows that gave the evidence.
        rows: How many rows that was.
    """

    __tablename__ = "drift_events"
    __table_args__ = (Index("ix_drift_events_context_index", "context_index", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    context_index: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(8))
    accuracy_before: Mapped[float] = mapped_column(Float64)
    accuracy_after: Mapped[float] = mapped_column(Float64)
    rows: Mapped[int] = mapped_column(BigInteger)
