"""Declarative models of queuert's tables: ``Job``, ``JobBlocker`` and ``RateBucket``.

They live on queuert's own :data:`metadata` (not the application's), so an
application's Alembic autogenerate never sees them unless asked to, yet they can
be queried and JOINed like any mapped class::

    from queuert_sa.models import Job
    session.scalars(select(Job).where(Job.status == "pending"))

The default tables are ``queuert_job`` and ``queuert_job_blocker`` in the
default schema. :func:`create_models` builds the same classes with another
table prefix and/or schema; pass the result to ``Queuert(..., models=...)``.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

__all__ = [
    "DEFAULT_TABLE_PREFIX",
    "NAMING_CONVENTION",
    "Job",
    "JobBlocker",
    "JobStatus",
    "Models",
    "RateBucket",
    "create_models",
    "metadata",
]

DEFAULT_TABLE_PREFIX = "queuert_"

#: Constraint naming convention of queuert's MetaData (stable names make
#: migrations reversible on every backend).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class JobStatus(enum.StrEnum):
    """Status of a job; compares equal to its plain string (``JobStatus.PENDING == "pending"``)."""

    BLOCKED = "blocked"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    """Terminal: the last allowed attempt failed, or the handler raised ``q.Fail``."""
    CANCELLED = "cancelled"
    """Terminal: ``cancel_chain`` ended the chain before it completed."""

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``failed`` and ``cancelled``: no attempt will run."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores UTC text. Values read back
    are always aware and in UTC; naive values are refused on write because their
    zone is unknowable.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(
                f"naive datetime {value!r}: queuert_sa stores UTC; pass an aware datetime "
                "(e.g. datetime.now(UTC))"
            )
        # SQLite keeps the wall-clock text only: one fixed zone (UTC) keeps
        # string order equal to time order.
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class StatusType(TypeDecorator[JobStatus]):
    """``JobStatus`` stored as a short string (checked by a CHECK constraint)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: Dialect) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> JobStatus | None:
        return None if value is None else JobStatus(value)


def _json_type() -> TypeEngine[Any]:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class JobColumns:
    """Columns shared by every ``Job`` class (default or :func:`create_models`)."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    type_name: Mapped[str] = mapped_column(String(255))
    chain_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    chain_type_name: Mapped[str] = mapped_column(String(255))
    chain_index: Mapped[int] = mapped_column(Integer)
    input: Mapped[Any] = mapped_column(_json_type(), nullable=True)
    output: Mapped[Any] = mapped_column(_json_type(), nullable=True)
    status: Mapped[JobStatus] = mapped_column(StatusType())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    scheduled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    leased_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deduplication_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    trace_context: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Added by revision d4a7c2e9f1b3 (after the others, as the migration adds them).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    cancel_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Added by revision e6b1f3a8c2d5.
    chain_trace_context: Mapped[str | None] = mapped_column(String(255), nullable=True)

    def __repr__(self) -> str:
        return (
            f"<Job {self.type_name} id={self.id} chain={self.chain_id}#{self.chain_index} "
            f"status={self.status}>"
        )


class JobBlockerColumns:
    """Columns shared by every ``JobBlocker`` class."""

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    blocked_by_chain_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    index: Mapped[int] = mapped_column(Integer)
    trace_context: Mapped[str | None] = mapped_column(String(255), nullable=True)


_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in JobStatus)


def job_table_args(prefix: str, schema: str | None) -> tuple[Any, ...]:
    """Constraints and indexes of the job table (shared by models and tests)."""
    job = f"{prefix}job"
    ref = f"{schema}.{job}.id" if schema else f"{job}.id"
    pending = text("status = 'pending'")
    running_leased = text("status = 'running' AND leased_until IS NOT NULL")
    root = text("chain_index = 0")
    dedup = text("deduplication_key IS NOT NULL AND chain_index = 0")
    open_dedup = text("deduplication_key IS NOT NULL AND status <> 'completed'")
    ended = text("completed_at IS NOT NULL")

    def partial(name: str, *cols: Any, where: Any, unique: bool = False) -> Index:
        return Index(name, *cols, unique=unique, postgresql_where=where, sqlite_where=where)

    return (
        ForeignKeyConstraint(["chain_id"], [ref], name=f"fk_{job}_chain_id"),
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),
        # Also the race guard that makes continue_with idempotent.
        Index(f"{prefix}chain_index_idx", "chain_id", "chain_index", unique=True),
        # Acquisition order: priority (higher first), then due time, then id.
        partial(
            f"{prefix}job_acquisition_idx",
            "type_name",
            text("priority DESC"),
            "scheduled_at",
            "id",
            where=pending,
        ),
        partial(
            f"{prefix}job_expired_lease_idx", "type_name", "leased_until", where=running_leased
        ),
        # Deduplication: "any" scope (with its window) over chain roots, and
        # "open" scope over the unfinished jobs only (the key is inherited by
        # continuations), so neither lookup grows with a key's history.
        partial(
            f"{prefix}job_deduplication_idx",
            "chain_type_name",
            "deduplication_key",
            "created_at",
            where=dedup,
        ),
        partial(
            f"{prefix}job_open_deduplication_idx",
            "chain_type_name",
            "deduplication_key",
            where=open_dedup,
        ),
        # Listings page by key on (created_at, id), hence the id in each index.
        partial(f"{prefix}chain_listing_idx", "created_at", "id", where=root),
        partial(
            f"{prefix}chain_listing_type_name_idx",
            "chain_type_name",
            "created_at",
            "id",
            where=root,
        ),
        Index(f"{prefix}job_listing_idx", "created_at", "id"),
        Index(f"{prefix}job_listing_status_idx", "status", "created_at", "id"),
        Index(f"{prefix}job_listing_type_name_idx", "type_name", "created_at", "id"),
        # Ended jobs by when they ended: throughput per minute (the dashboard's
        # statistics) and retention read only the recent or the old end of it.
        partial(f"{prefix}job_ended_idx", "completed_at", where=ended),
        {"schema": schema} if schema else {},
    )


class RateBucketColumns:
    """Columns of the rate-limit token buckets (``q.Rate``; added by revision a8d2c6e4f1b9)."""

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The job type, and the key for a per-key rate (``type``, or ``type`` and the key after a unit separator)."""
    tokens: Mapped[float] = mapped_column(Float)
    """Attempts that may start now, as of ``updated``."""
    updated: Mapped[float] = mapped_column(Float)
    """When ``tokens`` was counted, in seconds since the Unix epoch."""


def rate_bucket_table_args(prefix: str, schema: str | None) -> tuple[Any, ...]:
    return (
        PrimaryKeyConstraint("name", name=f"pk_{prefix}rate_bucket"),
        {"schema": schema} if schema else {},
    )


def job_blocker_table_args(prefix: str, schema: str | None) -> tuple[Any, ...]:
    """Constraints and indexes of the job blocker table."""
    job = f"{prefix}job"
    blocker = f"{prefix}job_blocker"
    ref = f"{schema}.{job}.id" if schema else f"{job}.id"
    return (
        PrimaryKeyConstraint("job_id", "blocked_by_chain_id", name=f"pk_{blocker}"),
        ForeignKeyConstraint(["job_id"], [ref], name=f"fk_{blocker}_job_id"),
        ForeignKeyConstraint(
            ["blocked_by_chain_id"], [ref], name=f"fk_{blocker}_blocked_by_chain_id"
        ),
        Index(f"{prefix}job_blocker_chain_idx", "blocked_by_chain_id"),
        {"schema": schema} if schema else {},
    )


@dataclass(frozen=True)
class Models:
    """One set of queuert tables: the mapped classes and the MetaData they live on."""

    job: type[JobColumns]
    job_blocker: type[JobBlockerColumns]
    rate_bucket: type[RateBucketColumns]
    metadata: MetaData
    table_prefix: str
    schema: str | None

    @property
    def job_table(self) -> Table:
        return self.job.__table__  # type: ignore[attr-defined,no-any-return]

    @property
    def job_blocker_table(self) -> Table:
        return self.job_blocker.__table__  # type: ignore[attr-defined,no-any-return]

    @property
    def rate_bucket_table(self) -> Table:
        return self.rate_bucket.__table__  # type: ignore[attr-defined,no-any-return]


class Base(DeclarativeBase):
    """Declarative base of the default queuert tables (``queuert_sa.metadata``)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(JobColumns, Base):
    """A job row. A chain *is* its first job: ``chain_id == id`` and ``chain_index == 0``."""

    __tablename__ = f"{DEFAULT_TABLE_PREFIX}job"
    __table_args__ = job_table_args(DEFAULT_TABLE_PREFIX, None)


class JobBlocker(JobBlockerColumns, Base):
    """A job waiting on a blocker chain (fan-in); one row per slot."""

    __tablename__ = f"{DEFAULT_TABLE_PREFIX}job_blocker"
    __table_args__ = job_blocker_table_args(DEFAULT_TABLE_PREFIX, None)


class RateBucket(RateBucketColumns, Base):
    """The token bucket of a rate-limited job type (or of one key of it)."""

    __tablename__ = f"{DEFAULT_TABLE_PREFIX}rate_bucket"
    __table_args__ = rate_bucket_table_args(DEFAULT_TABLE_PREFIX, None)


def _index_blocker_lookups(table: Table) -> None:
    """On PostgreSQL, declare ``blocked_by_chain_id``'s values distinct when the table is made.

    A completion looks up "does any job wait on this chain?" for a chain not
    known in advance; when many jobs wait on one chain, the real statistics
    make the planner read the whole table for it instead of the index. The
    migration ``b5d3e8a1c4f7`` does the same for tables made by Alembic.
    """
    event.listen(
        table,
        "after_create",
        DDL(  # type: ignore[no-untyped-call]
            "ALTER TABLE %(fullname)s ALTER COLUMN blocked_by_chain_id SET (n_distinct = -1)"
        ).execute_if(dialect="postgresql"),
    )


_index_blocker_lookups(JobBlocker.__table__)  # type: ignore[arg-type]

#: MetaData of the default tables, e.g. ``queuert_sa.metadata.create_all(engine)``.
metadata: MetaData = Base.metadata

DEFAULT_MODELS = Models(
    job=Job,
    job_blocker=JobBlocker,
    rate_bucket=RateBucket,
    metadata=metadata,
    table_prefix=DEFAULT_TABLE_PREFIX,
    schema=None,
)

_custom: dict[tuple[str, str | None], Models] = {}


def create_models(*, table_prefix: str = DEFAULT_TABLE_PREFIX, schema: str | None = None) -> Models:
    """Return queuert's mapped classes for another table prefix and/or schema.

    Calling it twice with the same arguments returns the same classes. The
    default arguments return the default models (``Job``, ``JobBlocker``).
    """
    if not table_prefix.replace("_", "").isalnum():
        raise ValueError(
            f"table_prefix {table_prefix!r} must contain only letters, digits and underscores"
        )
    if table_prefix == DEFAULT_TABLE_PREFIX and schema is None:
        return DEFAULT_MODELS
    key = (table_prefix, schema)
    if key in _custom:
        return _custom[key]

    class _Base(DeclarativeBase):
        metadata = MetaData(naming_convention=NAMING_CONVENTION)

    job_cls = type(
        "Job",
        (JobColumns, _Base),
        {
            "__tablename__": f"{table_prefix}job",
            "__table_args__": job_table_args(table_prefix, schema),
            "__module__": __name__,
        },
    )
    blocker_cls = type(
        "JobBlocker",
        (JobBlockerColumns, _Base),
        {
            "__tablename__": f"{table_prefix}job_blocker",
            "__table_args__": job_blocker_table_args(table_prefix, schema),
            "__module__": __name__,
        },
    )
    _index_blocker_lookups(blocker_cls.__table__)  # type: ignore[attr-defined]
    bucket_cls = type(
        "RateBucket",
        (RateBucketColumns, _Base),
        {
            "__tablename__": f"{table_prefix}rate_bucket",
            "__table_args__": rate_bucket_table_args(table_prefix, schema),
            "__module__": __name__,
        },
    )
    models = Models(
        job=job_cls,
        job_blocker=blocker_cls,
        rate_bucket=bucket_cls,
        metadata=_Base.metadata,
        table_prefix=table_prefix,
        schema=schema,
    )
    _custom[key] = models
    return models
