"""A job's life in SQL, and the conventions every state module follows.

The job operations: insert jobs, read one, acquire, complete, continue a
chain, give back unattempted jobs, trigger, lock, and the transaction controls (lock wait, transaction time, SQLite's
write lock). Chains, blockers, deduplication, removal and listings have their
own modules beside this one.

Each operation takes what it executes on (an :data:`Executor`: the caller's
``Session``, or a ``Connection``) first, then keyword arguments, and ``now``
when time matters. Operations never commit or roll back: the caller owns the
transaction. Driver errors are translated into :mod:`queuert_sa` errors at this
boundary, by :func:`database_errors`. The hot operations (insert jobs,
acquire, complete, lock, renew) run their statement through :mod:`._exec`,
which chooses between the driver's cursor and SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Collection, Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    RowMapping,
    Table,
    bindparam,
    case,
    func,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from queuert_sa._errors import (
    DatabaseError,
    DatabaseUnavailableError,
    SchemaMissingError,
    TransactionConflictError,
)
from queuert_sa.models import JobStatus, Models

from . import _exec, _statements
from .capabilities import Capabilities, has_transaction_timeout

Executor = Session | Connection

_MISSING_TABLE_MARKERS = ("no such table", "does not exist")

#: PostgreSQL deadlock_detected, serialization_failure.
_CONFLICT_SQLSTATES = ("40P01", "40001")


@contextmanager
def database_errors(operation: str, models: Models | None = None) -> Generator[None]:
    """Translate SQLAlchemy/driver errors raised inside into queuert errors.

    With ``models``, an error about one of *queuert's* tables missing becomes
    :class:`SchemaMissingError` (an application table missing does not).
    """
    try:
        yield
    except sa_exc.DBAPIError as exc:
        text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
        reason = _driver_message(exc)
        ours = () if models is None else (models.job_table.name, models.job_blocker_table.name)
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            raise DatabaseUnavailableError(
                f"{operation}: the database connection failed ({reason}). Check that the "
                "database is reachable; workers retry on their own.",
                operation=operation,
            ) from exc
        if any(m in text for m in _MISSING_TABLE_MARKERS) and any(t in text for t in ours):
            raise SchemaMissingError(
                f"{operation}: queuert's tables are missing ({reason}). Run the Alembic "
                "branch 'queuert' (alembic upgrade heads) or queuert_sa.metadata.create_all().",
                operation=operation,
            ) from exc
        if getattr(exc.orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
            raise TransactionConflictError(
                f"{operation}: the database aborted the transaction because of a concurrent "
                f"one ({reason}); nothing was written. Run the transaction again.",
                operation=operation,
            ) from exc
        if isinstance(exc, sa_exc.OperationalError):
            raise DatabaseUnavailableError(
                f"{operation}: the database failed the operation ({reason}).",
                operation=operation,
            ) from exc
        raise DatabaseError(f"{operation} failed: {reason}", operation=operation) from exc


def _driver_message(exc: sa_exc.DBAPIError) -> str:
    """The driver's message on one line: PostgreSQL's ``LINE n:`` context goes, DETAIL stays."""
    lines = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    kept = [
        line.strip()
        for line in lines
        if not line.startswith("LINE ") and not set(line.strip()) <= {"^", " "}
    ]
    return " ".join(kept)


@dataclass(kw_only=True)
class NewJob:
    """A job row about to be inserted (all values already validated).

    Not frozen, though nothing changes one (``dataclasses.replace`` makes a
    changed copy): a frozen dataclass sets each field through
    ``object.__setattr__``, three times the cost of building one, for each job
    of a batched start.
    """

    id: uuid.UUID
    type_name: str
    chain_id: uuid.UUID
    chain_type_name: str
    chain_index: int
    input: Any
    status: JobStatus
    created_at: dt.datetime
    scheduled_at: dt.datetime
    attempt: int = 0
    deduplication_key: str | None = None
    trace_context: str | None = None
    priority: int = 0
    chain_trace_context: str | None = None

    def row(self) -> dict[str, Any]:
        """Column values for the INSERT (shallow: ``dataclasses.asdict`` deep-copies
        every input, which cost more than the INSERT itself)."""
        return dict(self.__dict__)


def _job(models: Models) -> Table:
    return models.job_table


_NEW_JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(NewJob))


def insert_jobs(executor: Executor, models: Models, jobs: Sequence[NewJob]) -> None:
    """Insert new jobs in one statement (one round trip for any batch size)."""
    if not jobs:
        return
    with database_errors("insert jobs", models):
        _exec.insert_rows(
            executor, models, _job(models), _NEW_JOB_COLUMNS, [job.__dict__ for job in jobs]
        )


def job_places(
    executor: Executor, models: Models, job_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[uuid.UUID, int]]:
    """Which of these ids are jobs already: id -> (its chain, its index in the chain)."""
    table = _job(models)
    stmt = select(table.c.id, table.c.chain_id, table.c.chain_index).where(
        table.c.id.in_(list(job_ids))
    )
    with database_errors("look up job ids", models):
        return {row.id: (row.chain_id, row.chain_index) for row in executor.execute(stmt)}


def get_job(executor: Executor, models: Models, job_id: uuid.UUID) -> RowMapping | None:
    """One job row by id."""
    table = _job(models)
    with database_errors("read job", models):
        return executor.execute(select(table).where(table.c.id == job_id)).mappings().first()


def acquire_job(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    type_names: Sequence[str],
    worker_id: str,
    lease_until: dt.datetime,
    now: dt.datetime,
    exclude_ids: Collection[uuid.UUID] = (),
    timeouts: Mapping[str, dt.timedelta] | None = None,
) -> Mapping[Any, Any] | None:
    """Take the first due pending job of these types: status ``running``, ``attempt + 1``.

    First by ``priority DESC, scheduled_at, id`` (the acquisition index's order).
    PostgreSQL skips rows other acquirers hold (``FOR UPDATE SKIP LOCKED``);
    SQLite relies on the caller holding the write lock (``BEGIN IMMEDIATE``).
    ``exclude_ids`` are never taken. With ``timeouts`` (per type name), the
    server ends the acquiring transaction if it idles or a statement runs
    longer than the acquired job's timeout (see :func:`limit_transaction_time`);
    PostgreSQL only, and in the same round trip.
    """
    limits = (
        tuple(sorted((name, _ms(value)) for name, value in timeouts.items()))
        if timeouts and caps.server_timeouts
        else ()
    )
    rows = _acquire(
        executor, models, caps, limits, type_names, worker_id, lease_until, now, exclude_ids, None
    )
    return rows[0] if rows else None


def acquire_jobs(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    type_names: Sequence[str],
    limit: int,
    worker_id: str,
    lease_until: dt.datetime,
    now: dt.datetime,
    exclude_ids: Collection[uuid.UUID] = (),
) -> list[Mapping[Any, Any]]:
    """:func:`acquire_job` for up to ``limit`` jobs in one statement, in acquisition order.

    For a group of attempts sharing one transaction; the transaction's time
    limits, if any, were set when its first job was acquired.
    """
    rows = _acquire(
        executor, models, caps, (), type_names, worker_id, lease_until, now, exclude_ids, limit
    )
    return sorted(rows, key=lambda r: (-r["priority"], _as_utc(r["scheduled_at"]), r["id"]))


def _acquire(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    limits: tuple[tuple[str, int], ...],
    type_names: Sequence[str],
    worker_id: str,
    lease_until: dt.datetime,
    now: dt.datetime,
    exclude_ids: Collection[uuid.UUID],
    limit: int | None,
) -> Sequence[Mapping[Any, Any]]:
    params: dict[str, Any] = {
        "now": now,
        "worker_id": worker_id,
        "lease_until": lease_until,
        "type_names": list(type_names),
        "limit": limit,
    }
    if exclude_ids:
        params["exclude_ids"] = list(exclude_ids)
    names = tuple(type_names)
    many = limit is not None
    with database_errors("acquire job", models):
        # Connecting may fail here first: inside the translation, as the statement is.
        whole = bool(limits) and has_transaction_timeout(caps, _dialect(executor))
        return _exec.fetch(
            executor,
            models,
            _statements.acquire(
                models,
                caps.skip_locked,
                bool(exclude_ids),
                limits,
                _heads_of(names, many),
                many,
                whole_transaction=whole,
            ),
            params,
            # The cursor takes no expanding parameters: its form names the
            # types in the statement, and excluding ids stays with SQLAlchemy.
            key=None
            if exclude_ids
            else ("acquire", models, caps.skip_locked, limits, names, many, whole),
            driver_statement=lambda: _statements.acquire(
                models, caps.skip_locked, False, limits, names, many, whole
            ),
        )


def _heads_of(names: tuple[str, ...], many: bool) -> tuple[str, ...] | None:
    # Several types: the statement names them, to read each type's head of the index.
    return names if len(names) > 1 and not many else None


def _dialect(executor: Executor) -> Dialect:
    # The session's connection: the acquire runs on it next, so connecting is no extra cost.
    return executor.connection().dialect if isinstance(executor, Session) else executor.dialect


def _ms(value: dt.timedelta) -> int:
    return max(int(value.total_seconds() * 1000), 1)


def next_due_at(
    executor: Executor, models: Models, *, type_names: Sequence[str]
) -> dt.datetime | None:
    """Earliest ``scheduled_at`` among pending jobs of these types (due or not)."""
    table = _job(models)
    stmt = select(func.min(table.c.scheduled_at)).where(
        table.c.type_name.in_(type_names), table.c.status == JobStatus.PENDING
    )
    with database_errors("find next due job", models):
        value = executor.execute(stmt).scalar()
    if value is None:
        return None
    # Aggregates lose the column type on SQLite (text comes back).
    return _as_utc(value)


def _as_utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def complete_job(
    executor: Executor,
    models: Models,
    *,
    job_id: uuid.UUID,
    output: Any,
    worker_id: str | None,
    now: dt.datetime,
) -> bool:
    """Mark a job completed with ``output`` (``None`` for a job that continued).

    Returns whether any job declares this job's chain as a blocker.
    """
    params = {"job_id": job_id, "output": output, "worker_id": worker_id, "now": now}
    with database_errors("complete job", models):
        rows = _exec.fetch(
            executor, models, _statements.complete(models), params, key=("complete", models)
        )
    return bool(rows and rows[0]["has_dependents"])


def complete_jobs(
    executor: Executor,
    models: Models,
    *,
    outputs: Sequence[tuple[uuid.UUID, Any]],
    worker_id: str | None,
    now: dt.datetime,
) -> None:
    """:func:`complete_job` for each ``(job id, output)``, in one round trip."""
    shared = {
        "status": JobStatus.COMPLETED,
        "completed_at": now,
        "completed_by": worker_id,
        "leased_by": None,
        "leased_until": None,
        "last_attempt_error": None,
    }
    with database_errors("complete jobs", models):
        _exec.update_rows(
            executor,
            models,
            _job(models),
            key="id",
            per_row=("output",),
            shared=shared,
            rows=[{"id": job_id, "output": output} for job_id, output in outputs],
        )


def return_jobs(executor: Executor, models: Models, *, job_ids: Collection[uuid.UUID]) -> None:
    """Give back jobs acquired in this transaction but never attempted: pending, as they were.

    The acquisition's ``attempt + 1`` is undone; their place in the queue is kept.
    """
    if not job_ids:
        return
    table = _job(models)
    stmt = (
        update(table)
        .where(table.c.id.in_(list(job_ids)), table.c.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.PENDING,
            attempt=table.c.attempt - 1,
            leased_by=None,
            leased_until=None,
        )
    )
    with database_errors("return jobs", models):
        executor.execute(stmt)


def insert_continuation(
    executor: Executor, models: Models, caps: Capabilities, job: NewJob
) -> bool:
    """Insert the next job of a chain unless one exists at that ``chain_index``.

    Returns True if this call created it. Racing inserts at the same index
    yield one job: the unique ``(chain_id, chain_index)`` index decides.
    """
    table = _job(models)
    stmt = (
        caps.insert(table)
        .values(job.row())
        .on_conflict_do_nothing(index_elements=[table.c.chain_id, table.c.chain_index])
        # RETURNING, not rowcount: drivers report -1 for INSERT rowcounts.
        .returning(table.c.id)
    )
    with database_errors("continue chain", models):
        return executor.execute(stmt).first() is not None


def trigger_job(
    executor: Executor, models: Models, *, job_id: uuid.UUID, now: dt.datetime
) -> RowMapping | None:
    """Make a pending job due now. Returns the updated row, or None if it is not pending.

    A job already due keeps its ``scheduled_at`` (its place in the queue).
    """
    table = _job(models)
    # Bound with the column's type, so any aware ``now`` is stored as UTC.
    due = bindparam(None, now, type_=table.c.scheduled_at.type)
    stmt = (
        update(table)
        .where(table.c.id == job_id, table.c.status == JobStatus.PENDING)
        .values(scheduled_at=case((table.c.scheduled_at > due, due), else_=table.c.scheduled_at))
        .returning(*table.c)
    )
    with database_errors("trigger job", models):
        return executor.execute(stmt).mappings().first()


def lock_job(
    executor: Executor, models: Models, caps: Capabilities, job_id: uuid.UUID
) -> Mapping[Any, Any] | None:
    """Read a job and lock its row until the transaction ends (``FOR UPDATE``).

    On SQLite the caller's write transaction (``BEGIN IMMEDIATE``) is the lock.
    """
    with database_errors("lock job", models):
        rows = _exec.fetch(
            executor,
            models,
            _statements.lock(models, caps.skip_locked),
            {"job_id": job_id},
            key=("lock", models, caps.skip_locked),
        )
    return rows[0] if rows else None


_LIMIT_TRANSACTION_TIME = text(
    "SELECT set_config('idle_in_transaction_session_timeout', :ms, true), "
    "set_config('statement_timeout', :ms, true)"
)
_LIMIT_WHOLE_TRANSACTION_TIME = text(
    "SELECT set_config('idle_in_transaction_session_timeout', :ms, true), "
    "set_config('statement_timeout', :ms, true), set_config('transaction_timeout', :ms, true)"
)


def limit_transaction_time(executor: Executor, caps: Capabilities, timeout: dt.timedelta) -> None:
    """Have the server end this transaction if it idles or one statement runs past ``timeout``.

    On PostgreSQL 17 and later also once the transaction as a whole has run
    ``timeout`` from here (``transaction_timeout``), however short its
    statements. PostgreSQL only (``SET LOCAL``, so it ends with the
    transaction); a no-op where the server has no such settings.
    """
    if not caps.server_timeouts:
        return
    ms = f"{max(int(timeout.total_seconds() * 1000), 1)}ms"
    with database_errors("limit transaction time"):
        whole = has_transaction_timeout(caps, _dialect(executor))
        # set_config(..., true) is SET LOCAL, in one round trip.
        executor.execute(
            _LIMIT_WHOLE_TRANSACTION_TIME if whole else _LIMIT_TRANSACTION_TIME, {"ms": ms}
        )


def take_write_lock(executor: Executor, models: Models, caps: Capabilities) -> None:
    """On a single-writer database, make the current transaction the writer now.

    SQLite starts transactions as readers; a transaction that reads, then
    writes after another writer committed fails (``SQLITE_BUSY_SNAPSHOT``), and
    a check-then-insert (deduplication) could act on a stale read. A write that
    matches no row takes the write lock first, so what follows reads the latest
    data and cannot be interleaved. No-op on PostgreSQL.
    """
    if not caps.single_writer:
        return
    table = _job(models)
    with database_errors("take the write lock", models):
        executor.execute(update(table).where(text("1 = 0")).values(id=table.c.id))
