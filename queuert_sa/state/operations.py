"""Every SQL statement queuert executes, as plain sync functions.

Each operation takes what it executes on (the caller's ``Session``, or a
``Connection``) first, then keyword arguments, and ``now`` when time matters.
Operations never commit or roll back: the caller owns the transaction. Driver
errors are translated into :mod:`queuert_sa` errors here, at the boundary. The
hot ones (insert jobs, acquire, complete, lock, renew) run their statement
through :mod:`._exec`, which chooses between the driver's cursor and SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import Collection, Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    RowMapping,
    Select,
    String,
    Table,
    Update,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
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

from . import _exec
from .capabilities import Capabilities

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
        ours = () if models is None else (models.job_table.name, models.job_blocker_table.name)
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            raise DatabaseUnavailableError(
                f"{operation}: the database connection failed ({exc.orig}). Check that the "
                "database is reachable; workers retry on their own.",
                operation=operation,
            ) from exc
        if any(m in text for m in _MISSING_TABLE_MARKERS) and any(t in text for t in ours):
            raise SchemaMissingError(
                f"{operation}: queuert's tables are missing ({exc.orig}). Run the Alembic "
                "branch 'queuert' (alembic upgrade heads) or queuert_sa.metadata.create_all().",
                operation=operation,
            ) from exc
        if getattr(exc.orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
            raise TransactionConflictError(
                f"{operation}: the database aborted the transaction because of a concurrent "
                f"one ({exc.orig}); nothing was written. Run the transaction again.",
                operation=operation,
            ) from exc
        if isinstance(exc, sa_exc.OperationalError):
            raise DatabaseUnavailableError(
                f"{operation}: the database failed the operation ({exc.orig}).",
                operation=operation,
            ) from exc
        raise DatabaseError(f"{operation} failed: {exc.orig}", operation=operation) from exc


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """A job row about to be inserted (all values already validated)."""

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

    def row(self) -> dict[str, Any]:
        """Column values for the INSERT (shallow: ``dataclasses.asdict`` deep-copies
        every input, which cost more than the INSERT itself)."""
        return dict(self.__dict__)


#: The status a pending job has, as a SQL literal: partial indexes are defined
#: with it, and a bound parameter would not let every planner match them.
_PENDING: ColumnElement[str] = literal_column("'pending'", String())


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


def get_job(executor: Executor, models: Models, job_id: uuid.UUID) -> RowMapping | None:
    """One job row by id."""
    table = _job(models)
    with database_errors("read job", models):
        return executor.execute(select(table).where(table.c.id == job_id)).mappings().first()


def get_chain(
    executor: Executor, models: Models, chain_id: uuid.UUID
) -> tuple[RowMapping, RowMapping] | None:
    """(first job, latest job) of a chain in one round trip; ``None`` if no such chain."""
    table = _job(models)
    latest_index = (
        select(func.max(table.c.chain_index)).where(table.c.chain_id == chain_id).scalar_subquery()
    )
    stmt = (
        select(table)
        .where(
            table.c.chain_id == chain_id,
            or_(table.c.chain_index == 0, table.c.chain_index == latest_index),
        )
        .order_by(table.c.chain_index)
    )
    with database_errors("read chain", models):
        rows = executor.execute(stmt).mappings().all()
    if not rows or rows[0]["chain_index"] != 0 or rows[0]["id"] != chain_id:
        return None
    return rows[0], rows[-1]


@functools.cache
def _acquire_statement(
    models: Models,
    skip_locked: bool,
    with_exclude: bool,
    timeouts: tuple[tuple[str, int], ...],
    type_names: tuple[str, ...] | None = None,
) -> Update:
    # Built once per worker shape: constructing the statement (and its cache
    # key) costs more Python time than the server spends running it. With
    # ``type_names`` they are part of the statement (the driver-level form
    # has no expanding parameters).
    table = _job(models)
    conditions = [
        table.c.type_name.in_(bindparam("type_names", expanding=True))
        if type_names is None
        else table.c.type_name.in_([literal(name, String()) for name in type_names]),
        table.c.status == _PENDING,
        table.c.scheduled_at <= bindparam("now", type_=table.c.scheduled_at.type),
    ]
    if with_exclude:
        conditions.append(
            table.c.id.not_in(bindparam("exclude_ids", expanding=True, type_=table.c.id.type))
        )
    candidate = (
        select(table.c.id).where(*conditions).order_by(table.c.scheduled_at, table.c.id).limit(1)
    )
    if skip_locked:
        candidate = candidate.with_for_update(skip_locked=True, key_share=True)
    returning: list[Any] = list(table.c)
    for setting in ("idle_in_transaction_session_timeout", "statement_timeout") if timeouts else ():
        # SET LOCAL of the attempt's timeout, in the acquiring round trip (it
        # runs once, for the row acquired; other types keep the current value).
        value = case(
            *((table.c.type_name == literal(name), literal(f"{ms}ms")) for name, ms in timeouts),
            else_=func.current_setting(setting),
        )
        returning.append(func.set_config(setting, value, True).label(f"_{setting}"))
    base = (
        update(table)
        .where(table.c.id == candidate.scalar_subquery())
        .values(
            status=JobStatus.RUNNING,
            attempt=table.c.attempt + 1,
            last_attempt_at=bindparam("now", type_=table.c.last_attempt_at.type),
            leased_by=bindparam("worker_id", type_=table.c.leased_by.type),
            leased_until=bindparam("lease_until", type_=table.c.leased_until.type),
        )
    )
    return cast("Update", base.returning(*returning))  # pyright: ignore[reportUnknownMemberType]


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
    """Take the oldest due pending job of these types: status ``running``, ``attempt + 1``.

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
    params: dict[str, Any] = {
        "now": now,
        "worker_id": worker_id,
        "lease_until": lease_until,
        "type_names": list(type_names),
    }
    if exclude_ids:
        params["exclude_ids"] = list(exclude_ids)
    names = tuple(type_names)
    with database_errors("acquire job", models):
        rows = _exec.fetch(
            executor,
            models,
            _acquire_statement(models, caps.skip_locked, bool(exclude_ids), limits),
            params,
            # The cursor takes no expanding parameters: its form names the
            # types in the statement, and excluding ids stays with SQLAlchemy.
            key=None if exclude_ids else ("acquire", models, caps.skip_locked, limits, names),
            driver_statement=lambda: _acquire_statement(
                models, caps.skip_locked, False, limits, names
            ),
        )
    return rows[0] if rows else None


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


@functools.cache
def _complete_statement(models: Models) -> Update:
    table = _job(models)
    blocker = models.job_blocker_table
    # Whether any job declares this chain as a blocker: most chains have no
    # dependents, and then the unblocking step is skipped (no extra round trip).
    dependents = select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id == table.c.chain_id)
    return (
        update(table)
        .where(table.c.id == bindparam("job_id", type_=table.c.id.type))
        .values(
            status=JobStatus.COMPLETED,
            output=bindparam("output", type_=table.c.output.type),
            completed_at=bindparam("now", type_=table.c.completed_at.type),
            completed_by=bindparam("worker_id", type_=table.c.completed_by.type),
            leased_by=None,
            leased_until=None,
            last_attempt_error=None,
        )
        .returning(dependents.exists().label("has_dependents"))
    )


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
            executor, models, _complete_statement(models), params, key=("complete", models)
        )
    return bool(rows and rows[0]["has_dependents"])


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


def reschedule_job(
    executor: Executor,
    models: Models,
    *,
    job_id: uuid.UUID,
    scheduled_at: dt.datetime,
    error: str | None,
    now: dt.datetime,
) -> None:
    """Return a running job to ``pending`` at ``scheduled_at`` (clamped to ``now``)."""
    table = _job(models)
    stmt = (
        update(table)
        .where(table.c.id == job_id)
        .values(
            status=JobStatus.PENDING,
            scheduled_at=max(scheduled_at, now),
            last_attempt_error=error,
            leased_by=None,
            leased_until=None,
        )
    )
    with database_errors("reschedule job", models):
        executor.execute(stmt)


def record_failed_attempt(
    executor: Executor,
    models: Models,
    *,
    job_id: uuid.UUID,
    scheduled_at: dt.datetime,
    error: str,
    now: dt.datetime,
) -> bool:
    """Count an attempt whose transaction could not commit (the job is pending again).

    The attempt's own increment was rolled back with it; this records it with
    the error and the backoff, unless the job has moved on meanwhile (the
    COMMIT may have succeeded after all). Returns True if the job was updated.
    """
    table = _job(models)
    stmt = (
        update(table)
        .where(table.c.id == job_id, table.c.status == JobStatus.PENDING)
        .values(
            attempt=table.c.attempt + 1,
            last_attempt_at=now,
            scheduled_at=max(scheduled_at, now),
            last_attempt_error=error,
        )
    )
    with database_errors("record failed attempt", models):
        result = cast(CursorResult[Any], executor.execute(stmt))
    return result.rowcount == 1


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
            _lock_statement(models, caps.skip_locked),
            {"job_id": job_id},
            key=("lock", models, caps.skip_locked),
        )
    return rows[0] if rows else None


@functools.cache
def _lock_statement(models: Models, skip_locked: bool) -> Select[Any]:
    table = _job(models)
    stmt = select(table).where(table.c.id == bindparam("job_id", type_=table.c.id.type))
    if skip_locked:
        stmt = stmt.with_for_update(key_share=True)
    return stmt


def renew_lease(
    executor: Executor,
    models: Models,
    *,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    leased_until: dt.datetime,
) -> bool:
    """Extend a running job's lease if this attempt still holds it; False if it does not.

    The attempt number is part of ownership: after a reap, the same worker may
    take the job again as a later attempt, and the stale attempt must not renew.
    """
    params = {
        "job_id": job_id,
        "worker_id": worker_id,
        "attempt_number": attempt,
        "new_leased_until": leased_until,
    }
    with database_errors("renew lease", models):
        rows = _exec.fetch(
            executor, models, _renew_statement(models), params, key=("renew", models)
        )
    return bool(rows)


@functools.cache
def _renew_statement(models: Models) -> Update:
    table = _job(models)
    return (
        update(table)
        .where(
            table.c.id == bindparam("job_id", type_=table.c.id.type),
            table.c.leased_by == bindparam("worker_id", type_=table.c.leased_by.type),
            table.c.attempt == bindparam("attempt_number", type_=table.c.attempt.type),
            table.c.status == JobStatus.RUNNING,
        )
        .values(leased_until=bindparam("new_leased_until", type_=table.c.leased_until.type))
        .returning(table.c.id)
    )


def has_expired_lease(
    executor: Executor, models: Models, *, type_names: Sequence[str], now: dt.datetime
) -> bool:
    """Whether any running job of these types has an expired lease (a read, no lock)."""
    table = _job(models)
    stmt = (
        select(table.c.id)
        .where(
            table.c.type_name.in_(type_names),
            table.c.status == JobStatus.RUNNING,
            table.c.leased_until.is_not(None),
            table.c.leased_until <= now,
        )
        .limit(1)
    )
    with database_errors("look for expired leases", models):
        return executor.execute(stmt).first() is not None


def reap_expired_lease(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    type_names: Sequence[str],
    exclude_ids: Collection[uuid.UUID],
    now: dt.datetime,
) -> RowMapping | None:
    """Return one running job whose lease expired to ``pending`` (keeping ``attempt``).

    Only committed ``running`` rows are candidates: an atomic attempt's row is
    ``running`` inside its own open transaction only, and locked, so it is never
    reaped. Returns the reaped row's ``id`` and ``type_name``, or None.
    """
    table = _job(models)
    conditions = [
        table.c.type_name.in_(type_names),
        table.c.status == JobStatus.RUNNING,
        table.c.leased_until.is_not(None),
        table.c.leased_until <= now,
    ]
    if exclude_ids:
        conditions.append(table.c.id.not_in(exclude_ids))
    candidate = select(table.c.id).where(*conditions).order_by(table.c.leased_until).limit(1)
    if caps.skip_locked:
        candidate = candidate.with_for_update(skip_locked=True, key_share=True)
    stmt = (
        update(table)
        .where(table.c.id == candidate.scalar_subquery())
        .values(status=JobStatus.PENDING, leased_by=None, leased_until=None)
        .returning(table.c.id, table.c.type_name, table.c.attempt)
    )
    with database_errors("reap expired lease", models):
        return executor.execute(stmt).mappings().first()


_LIMIT_LOCK_WAIT = text("SELECT set_config('lock_timeout', :ms, true)")


def limit_lock_wait(executor: Executor, caps: Capabilities, timeout: dt.timedelta) -> None:
    """Make this transaction give up waiting for a row lock after ``timeout`` (PostgreSQL)."""
    if not caps.server_timeouts:
        return
    with database_errors("limit lock wait"):
        executor.execute(
            _LIMIT_LOCK_WAIT, {"ms": f"{max(int(timeout.total_seconds() * 1000), 1)}ms"}
        )


_LIMIT_TRANSACTION_TIME = text(
    "SELECT set_config('idle_in_transaction_session_timeout', :ms, true), "
    "set_config('statement_timeout', :ms, true)"
)


def limit_transaction_time(executor: Executor, caps: Capabilities, timeout: dt.timedelta) -> None:
    """Have the server end this transaction if it idles or one statement runs past ``timeout``.

    PostgreSQL only (``SET LOCAL``, so it ends with the transaction); a no-op
    where the server has no such settings.
    """
    if not caps.server_timeouts:
        return
    ms = f"{max(int(timeout.total_seconds() * 1000), 1)}ms"
    with database_errors("limit transaction time"):
        # set_config(..., true) is SET LOCAL, in one round trip.
        executor.execute(_LIMIT_TRANSACTION_TIME, {"ms": ms})


def lock_chain(
    executor: Executor, models: Models, caps: Capabilities, chain_id: uuid.UUID
) -> tuple[RowMapping, RowMapping] | None:
    """(first job, latest job) of a chain, the latest locked until the transaction ends.

    The lock waits for an atomic attempt holding that job to finish. None if
    there is no such chain.
    """
    table = _job(models)
    latest = (
        select(table)
        .where(table.c.chain_id == chain_id)
        .order_by(table.c.chain_index.desc())
        .limit(1)
    )
    if caps.skip_locked:
        latest = latest.with_for_update(key_share=True)
    root = select(table).where(table.c.id == chain_id, table.c.chain_index == 0)
    newest = select(func.max(table.c.chain_index)).where(table.c.chain_id == chain_id)
    with database_errors("lock chain", models):
        latest_row = executor.execute(latest).mappings().first()
        # Waiting for the lock, the chain may have moved on (an attempt
        # continued it): read again until the locked job is the newest.
        for _ in range(100):
            if latest_row is None:
                return None
            if executor.execute(newest).scalar() == latest_row["chain_index"]:
                break
            latest_row = executor.execute(latest).mappings().first()
        if latest_row is None:
            return None
        root_row = (
            latest_row
            if latest_row["chain_index"] == 0
            else executor.execute(root).mappings().first()
        )
    if root_row is None or root_row["id"] != chain_id:
        return None
    return root_row, latest_row


def read_blocker_chains(
    executor: Executor, models: Models, caps: Capabilities, chain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, bool]]:
    """For each existing chain: (its type, whether it is completed), locking its latest job.

    The lock makes "is it completed?" and the attaching of a dependent one
    step: a blocker completing at this moment either finishes first (and is
    seen completed) or waits for the caller's commit (and then sees the
    dependent and unblocks it). A chain that moved on while we waited for the
    lock is read again.
    """
    table = _job(models)
    ids = list(chain_ids)
    roots = select(table.c.id, table.c.type_name).where(
        table.c.id.in_(ids), table.c.chain_index == 0
    )
    inner = table.alias("newer")
    latest = (
        select(table.c.chain_id, table.c.chain_index, table.c.status)
        .where(
            table.c.chain_id.in_(ids),
            table.c.chain_index
            == select(func.max(inner.c.chain_index))
            .where(inner.c.chain_id == table.c.chain_id)
            .scalar_subquery(),
        )
        .order_by(table.c.id)
    )
    if caps.skip_locked:
        latest = latest.with_for_update(key_share=True)
    newest = (
        select(table.c.chain_id, func.max(table.c.chain_index))
        .where(table.c.chain_id.in_(ids))
        .group_by(table.c.chain_id)
    )
    locked: dict[uuid.UUID, tuple[int, bool]] = {}
    with database_errors("read blocker chains", models):
        types: dict[uuid.UUID, str] = {row.id: row.type_name for row in executor.execute(roots)}
        for _ in range(100):
            locked = {
                row.chain_id: (row.chain_index, row.status == JobStatus.COMPLETED)
                for row in executor.execute(latest)
            }
            current = {row[0]: row[1] for row in executor.execute(newest)}
            if all(locked[c][0] == i for c, i in current.items() if c in locked):
                break
    return {
        chain_id: (type_name, locked[chain_id][1])
        for chain_id, type_name in types.items()
        if chain_id in locked
    }


def insert_blockers(
    executor: Executor, models: Models, rows: Sequence[tuple[uuid.UUID, uuid.UUID, int]]
) -> None:
    """Attach blocker chains to jobs: ``(job_id, blocked_by_chain_id, slot index)`` rows."""
    if not rows:
        return
    table = models.job_blocker_table
    with database_errors("attach blockers", models):
        executor.execute(
            table.insert(),
            [{"job_id": j, "blocked_by_chain_id": c, "index": i} for j, c, i in rows],
        )


def blocker_chain_ids(executor: Executor, models: Models, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The chains a job waits for, in slot order."""
    table = models.job_blocker_table
    stmt = (
        select(table.c.blocked_by_chain_id).where(table.c.job_id == job_id).order_by(table.c.index)
    )
    with database_errors("read blockers", models):
        return list(executor.execute(stmt).scalars())


@functools.cache
def _unblock_statements(models: Models, row_locks: bool) -> tuple[Select[Any], Update]:
    # Built once per set of tables: constructing these correlated statements
    # costs more than running them.
    job = _job(models)
    blocker = models.job_blocker_table
    chain_id = bindparam("chain_id", type_=job.c.chain_id.type)
    dependents = select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id == chain_id)
    lock = (
        select(job.c.id)
        .where(job.c.id.in_(dependents), job.c.status == JobStatus.BLOCKED)
        .order_by(job.c.id)
    )
    if row_locks:
        lock = lock.with_for_update(key_share=True)
    slot = blocker.alias("slot")
    last = job.alias("last")
    newer = job.alias("newer")
    slot_done = (
        select(last.c.id)
        .where(
            last.c.chain_id == slot.c.blocked_by_chain_id,
            last.c.status == JobStatus.COMPLETED,
            # Correlated to ``last`` (the enclosing query's table), not to
            # ``slot``: a subquery two levels down would not correlate to it and
            # would take the maximum over every blocker chain.
            last.c.chain_index
            == select(func.max(newer.c.chain_index))
            .where(newer.c.chain_id == last.c.chain_id)
            .scalar_subquery(),
        )
        .exists()
    )
    open_slot = select(slot.c.job_id).where(slot.c.job_id == job.c.id, ~slot_done).exists()
    now = bindparam("now", type_=job.c.scheduled_at.type)
    ids = bindparam("ids", expanding=True, type_=job.c.id.type)
    unblock = (
        update(job)
        .where(job.c.id.in_(ids), job.c.status == JobStatus.BLOCKED, ~open_slot)
        .values(
            status=JobStatus.PENDING,
            scheduled_at=case((job.c.scheduled_at < now, now), else_=job.c.scheduled_at),
        )
        .returning(job.c.id, job.c.type_name)
    )
    return lock, unblock


def unblock_dependents(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    chain_id: uuid.UUID,
    now: dt.datetime,
) -> list[RowMapping]:
    """After ``chain_id`` completed: make pending every blocked job whose blockers are all done.

    Returns ``id`` and ``type_name`` of the jobs unblocked. The dependents are
    locked first, so two blockers completing in parallel transactions cannot
    both miss each other: the second waits, then sees the first committed.
    """
    lock, unblock = _unblock_statements(models, caps.skip_locked)
    with database_errors("unblock dependents", models):
        ids = list(executor.execute(lock, {"chain_id": chain_id}).scalars())
        if not ids:
            return []
        return list(executor.execute(unblock, {"ids": ids, "now": now}).mappings())
