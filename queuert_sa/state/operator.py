"""What operators do to jobs that cannot go on by themselves: trigger, retry, cancel.

Triggering makes ``pending`` jobs due now. Retrying makes a ``failed`` job ``pending`` and due now, keeping its attempt
count and last error. Cancelling makes a chain's open (or failed) latest job
``cancelled``, and, for a cascade, the ``blocked`` jobs that wait for a
cancelled chain. The caller locks what it decides on first (see
:func:`.chains.lock_chain`, :func:`.operations.lock_job`); the statements here
re-check the status they expect, so a row that moved on meanwhile is left as
it is. Same rules as :mod:`.operations`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import RowMapping, bindparam, case, select, update

from queuert_sa.models import JobStatus, Models

from .capabilities import Capabilities
from .operations import Executor, database_errors

#: The statuses ``cancel_chain`` ends: the job has not completed, and was not cancelled.
CANCELLABLE = (JobStatus.BLOCKED, JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED)


def _revived(models: Models, now: dt.datetime) -> dict[str, Any]:
    """The columns a retried job gets: pending and due now; attempt and error are kept."""
    table = models.job_table
    return {
        "status": JobStatus.PENDING,
        # Bound with the column's type, so any aware ``now`` is stored as UTC.
        "scheduled_at": bindparam(None, now, type_=table.c.scheduled_at.type),
        "completed_at": None,
        "completed_by": None,
        "leased_by": None,
        "leased_until": None,
    }


def retry_job(
    executor: Executor, models: Models, *, job_id: uuid.UUID, now: dt.datetime
) -> RowMapping | None:
    """Make a failed job pending, due ``now``. The updated row, or None if it is not failed."""
    table = models.job_table
    stmt = (
        update(table)
        .where(table.c.id == job_id, table.c.status == JobStatus.FAILED)
        .values(_revived(models, now))
        .returning(*table.c)
    )
    with database_errors("retry job", models):
        return executor.execute(stmt).mappings().first()


def retry_jobs(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    type_names: Sequence[str] | None,
    failed_since: dt.datetime | None,
    limit: int | None,
    now: dt.datetime,
) -> list[str]:
    """Make every failed job matching the filter pending, due ``now``, in one statement.

    ``type_names``: the jobs' own types; ``failed_since``: failed at or after
    this time (their ``completed_at``); ``limit``: at most this many, first
    created first (by id). On PostgreSQL the rows are locked in id order
    first, so two concurrent bulk retries cannot deadlock; a row another
    transaction holds is waited for and, if it is no longer failed then, left.
    Returns the type name of each job retried.
    """
    table = models.job_table
    failed = table.alias("failed")
    chosen = select(failed.c.id).where(failed.c.status == JobStatus.FAILED)
    if type_names is not None:
        chosen = chosen.where(failed.c.type_name.in_(list(type_names)))
    if failed_since is not None:
        since = bindparam(None, failed_since, type_=failed.c.completed_at.type)
        chosen = chosen.where(failed.c.completed_at >= since)
    chosen = chosen.order_by(failed.c.id)
    if limit is not None:
        chosen = chosen.limit(limit)
    if caps.skip_locked:
        chosen = chosen.with_for_update(key_share=True)
    # A CTE, run once: as a subquery, PostgreSQL may rescan it per row updated
    # (a nested-loop semi join), and each rescan skips the rows this statement
    # already updated, so LIMIT would let through more than ``limit`` rows.
    picked = chosen.cte("picked")
    stmt = (
        update(table)
        # Checked again on the row itself: the CTE's lock may have waited for a
        # transaction that cancelled or deleted the job.
        .where(table.c.id.in_(select(picked.c.id)), table.c.status == JobStatus.FAILED)
        .values(_revived(models, now))
        .returning(table.c.type_name)
    )
    with database_errors("retry jobs", models):
        return list(executor.execute(stmt).scalars())


def lock_jobs(
    executor: Executor, models: Models, caps: Capabilities, job_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Lock these jobs' rows in id order (``FOR NO KEY UPDATE``); their statuses by id.

    Ids of no job are absent. Locked in id order, as bulk retries lock, so
    two operators acting on overlapping sets serialise instead of
    deadlocking; a job an atomic attempt holds is waited for. Without row
    locks (SQLite) the caller's write lock is the lock.
    """
    if not job_ids:
        return {}
    table = models.job_table
    stmt = (
        select(table.c.id, table.c.status)
        .where(table.c.id.in_(sorted(job_ids)))
        .order_by(table.c.id)
    )
    if caps.skip_locked:
        stmt = stmt.with_for_update(key_share=True)
    with database_errors("lock jobs", models):
        return {row.id: str(row.status) for row in executor.execute(stmt)}


def trigger_jobs(
    executor: Executor, models: Models, *, job_ids: Collection[uuid.UUID], now: dt.datetime
) -> list[RowMapping]:
    """Make these jobs due ``now`` if they are pending (one statement); the updated rows.

    A job already due keeps its ``scheduled_at`` (its place in the queue), as
    :func:`.operations.trigger_job` does for one job.
    """
    if not job_ids:
        return []
    table = models.job_table
    due = bindparam(None, now, type_=table.c.scheduled_at.type)
    stmt = (
        update(table)
        .where(table.c.id.in_(sorted(job_ids)), table.c.status == JobStatus.PENDING)
        .values(scheduled_at=case((table.c.scheduled_at > due, due), else_=table.c.scheduled_at))
        .returning(*table.c)
    )
    with database_errors("trigger jobs", models):
        return list(executor.execute(stmt).mappings())


def cancel_jobs(
    executor: Executor,
    models: Models,
    *,
    job_ids: Collection[uuid.UUID],
    statuses: Sequence[JobStatus],
    reason: str | None,
    now: dt.datetime,
) -> list[RowMapping]:
    """Make these jobs ``cancelled`` if their status is one of ``statuses``.

    ``completed_at`` is ``now``, ``cancel_reason`` the reason; the lease is
    cleared, ``completed_by``, ``attempt`` and ``last_attempt_error`` stay.
    Returns ``id``, ``chain_id`` and ``type_name`` of each job cancelled.
    """
    if not job_ids:
        return []
    table = models.job_table
    stmt = (
        update(table)
        .where(table.c.id.in_(sorted(job_ids)), table.c.status.in_(list(statuses)))
        .values(
            status=JobStatus.CANCELLED,
            completed_at=bindparam(None, now, type_=table.c.completed_at.type),
            cancel_reason=reason,
            leased_by=None,
            leased_until=None,
        )
        .returning(table.c.id, table.c.chain_id, table.c.type_name, table.c.chain_type_name)
    )
    with database_errors("cancel jobs", models):
        return list(executor.execute(stmt).mappings())


def lock_blocked_dependents(
    executor: Executor, models: Models, caps: Capabilities, chain_ids: Collection[uuid.UUID]
) -> list[RowMapping]:
    """The ``blocked`` jobs that declare one of these chains as a blocker, locked in id order.

    A blocked job is always its chain's latest (nothing ran it yet), so
    cancelling it cancels its chain. Locked as the unblocking of dependents
    locks them (``FOR NO KEY UPDATE``, id order), so a cascade and a blocker
    completing elsewhere serialise instead of deadlocking. Returns ``id``,
    ``chain_id``.
    """
    if not chain_ids:
        return []
    table, blocker = models.job_table, models.job_blocker_table
    waiting = select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id.in_(list(chain_ids)))
    stmt = (
        select(table.c.id, table.c.chain_id)
        .where(table.c.id.in_(waiting), table.c.status == JobStatus.BLOCKED)
        .order_by(table.c.id)
    )
    if caps.skip_locked:
        stmt = stmt.with_for_update(key_share=True)
    with database_errors("lock blocked dependents", models):
        return list(executor.execute(stmt).mappings())
