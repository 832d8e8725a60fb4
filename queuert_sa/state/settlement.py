"""How a failed attempt is settled in SQL: retried later, or failed for good.

An attempt that raised is either rescheduled (``pending`` again at a later
``scheduled_at``) or, when it may not run again (its retry limit, ``Fail``),
made ``failed``: terminal, with its error and attempt count kept. Which of the
two is decided by the worker's policy; these operations only write it. Like
every state operation they take ``now`` and never commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, cast

from sqlalchemy import CursorResult, update

from queuert_sa.models import JobStatus, Models

from .operations import Executor, database_errors


def _outcome(scheduled_at: dt.datetime | None, now: dt.datetime) -> dict[str, Any]:
    """The columns of a settled attempt: pending at ``scheduled_at``, or failed (None)."""
    if scheduled_at is None:
        return {"status": JobStatus.FAILED, "completed_at": now}
    return {"status": JobStatus.PENDING, "scheduled_at": max(scheduled_at, now)}


def reschedule_job(
    executor: Executor,
    models: Models,
    *,
    job_id: uuid.UUID,
    scheduled_at: dt.datetime | None,
    error: str | None,
    now: dt.datetime,
) -> None:
    """Settle a running job's failed attempt: ``pending`` at ``scheduled_at`` (clamped to
    ``now``), or ``failed`` when ``scheduled_at`` is None."""
    table = models.job_table
    stmt = (
        update(table)
        .where(table.c.id == job_id)
        .values(
            **_outcome(scheduled_at, now),
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
    scheduled_at: dt.datetime | None,
    error: str,
    now: dt.datetime,
) -> bool:
    """Count an attempt whose transaction could not commit (the job is pending again).

    The attempt's own increment was rolled back with it; this records it with
    the error and the backoff (or makes the job ``failed``: ``scheduled_at``
    None), unless the job has moved on meanwhile (the COMMIT may have
    succeeded after all). Returns True if the job was updated.
    """
    table = models.job_table
    stmt = (
        update(table)
        .where(table.c.id == job_id, table.c.status == JobStatus.PENDING)
        .values(
            **_outcome(scheduled_at, now),
            attempt=table.c.attempt + 1,
            last_attempt_at=now,
            last_attempt_error=error,
        )
    )
    with database_errors("record failed attempt", models):
        result = cast(CursorResult[Any], executor.execute(stmt))
    return result.rowcount == 1
