"""What an operator does to work that cannot go on by itself: trigger, retry, cancel chains.

Units of work on the caller's ``Session``, as in :mod:`._transitions`: they
lock what they decide on, run state-layer operations, never commit, and leave
their notifications to the caller's COMMIT (``hooks.on_commit``), so a
rolled-back retry wakes nobody and a rolled-back cancel tells nobody.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from . import _observing as observing
from . import hooks
from ._context import Context
from ._entities import Job
from ._errors import (
    ChainNotFoundError,
    JobNotFoundError,
    JobNotRetryableError,
    JobsNotTriggerableError,
)
from ._snapshots import job_snapshot
from ._transitions import lost_after_commit, wake_after_commit
from .models import JobStatus
from .notify import NotifyAdapter
from .state import chains as ops_chains
from .state import operations as ops
from .state import operator as ops_operator


def retry_job(session: Session, ctx: Context, job_id: uuid.UUID) -> Job[Any]:
    """Make a failed job pending and due now; wake workers after COMMIT. The job as updated.

    The row is locked first (``FOR UPDATE`` on PostgreSQL, the write lock on
    SQLite), so a concurrent cancel or delete of it is waited for, and then
    seen. Raises :class:`JobNotFoundError` or :class:`JobNotRetryableError`.
    """
    models, caps = ctx.models, ctx.capabilities
    ops.take_write_lock(session, models, caps)
    current = ops.lock_job(session, models, caps, job_id)
    if current is None:
        raise JobNotFoundError(job_id)
    if current["status"] != JobStatus.FAILED:
        raise JobNotRetryableError(job_id, status=str(current["status"]))
    row = ops_operator.retry_job(session, models, job_id=job_id, now=ctx.clock())
    assert row is not None, "the locked failed job changed under its lock"
    wake_after_commit(session, ctx, Counter({row["type_name"]: 1}))
    return job_snapshot(ctx.job_types, row)


def trigger_jobs(session: Session, ctx: Context, job_ids: Sequence[uuid.UUID]) -> list[Job[Any]]:
    """Make pending jobs due now, all or nothing; wake workers after COMMIT. The jobs as updated.

    Every row is locked first and checked before anything is written, so a
    refusal (:class:`JobsNotTriggerableError`, naming every id that is no job
    or not pending) leaves the caller's transaction as it was.
    """
    if not job_ids:
        return []
    models, caps = ctx.models, ctx.capabilities
    ops.take_write_lock(session, models, caps)
    statuses = ops_operator.lock_jobs(session, models, caps, job_ids)
    missing = [job_id for job_id in job_ids if job_id not in statuses]
    refused = {
        job_id: statuses[job_id]
        for job_id in job_ids
        if job_id in statuses and statuses[job_id] != JobStatus.PENDING
    }
    if missing or refused:
        raise JobsNotTriggerableError(missing=missing, not_triggerable=refused)
    rows = ops_operator.trigger_jobs(session, models, job_ids=job_ids, now=ctx.clock())
    assert len(rows) == len(job_ids), "a locked pending job changed under its lock"
    wake_after_commit(session, ctx, Counter(row["type_name"] for row in rows))
    for row in rows:
        ctx.observers.after_commit(session, "job_triggered", job=observing.job_info(row))
    by_id = {row["id"]: row for row in rows}
    return [job_snapshot(ctx.job_types, by_id[job_id]) for job_id in job_ids]


def retry_jobs(
    session: Session,
    ctx: Context,
    *,
    type_names: Sequence[str] | None,
    failed_since: dt.datetime | None,
    limit: int | None,
) -> int:
    """Make every failed job matching the filter pending, due now (one statement); how many."""
    models, caps = ctx.models, ctx.capabilities
    ops.take_write_lock(session, models, caps)
    retried = ops_operator.retry_jobs(
        session,
        models,
        caps,
        type_names=type_names,
        failed_since=failed_since,
        limit=limit,
        now=ctx.clock(),
    )
    wake_after_commit(session, ctx, Counter(retried))
    return len(retried)


def _notify_ended(notify: NotifyAdapter, chain_ids: Sequence[uuid.UUID]) -> None:
    for chain_id in chain_ids:
        notify.notify_chain_completed(chain_id)


def cancel_chain(
    session: Session, ctx: Context, chain_id: uuid.UUID, *, reason: str | None, cascade: bool
) -> list[uuid.UUID]:
    """Cancel a chain (and with ``cascade`` the chains blocked on it); the chains cancelled.

    The chain's latest job is locked first: an atomic attempt holding it is
    waited out, and if it continued the chain its continuation is what gets
    cancelled. Then, for a cascade, the blocked dependents of every chain
    cancelled (or found cancelled), level by level, each level locked in id
    order. After COMMIT, the staged attempt running a cancelled job learns it
    lost it, and the chains' waiters (``await_chain``) are told.
    """
    models, caps = ctx.models, ctx.capabilities
    ops.take_write_lock(session, models, caps)
    found = ops_chains.lock_chain(session, models, caps, chain_id)
    if found is None:
        raise ChainNotFoundError(chain_id)
    root, latest = found
    now = ctx.clock()
    cancelled: list[uuid.UUID] = []
    chain_types = {chain_id: root["type_name"]}
    frontier: list[uuid.UUID] = []
    if latest["status"] in ops_operator.CANCELLABLE:
        ops_operator.cancel_jobs(
            session,
            models,
            job_ids=[latest["id"]],
            statuses=ops_operator.CANCELLABLE,
            reason=reason,
            now=now,
        )
        if latest["status"] == JobStatus.RUNNING:
            # The lock waited out any atomic attempt: a staged one holds this job.
            lost_after_commit(session, ctx, latest["id"])
        cancelled.append(chain_id)
        frontier.append(chain_id)
    elif latest["status"] == JobStatus.CANCELLED:
        # Cancelled before: a cascade still reaches the chains blocked on it.
        frontier.append(chain_id)
    seen = {chain_id}
    while cascade and frontier:
        waiting = ops_operator.lock_blocked_dependents(session, models, caps, frontier)
        job_ids = [row["id"] for row in waiting if row["chain_id"] not in seen]
        rows = ops_operator.cancel_jobs(
            session,
            models,
            job_ids=job_ids,
            statuses=(JobStatus.BLOCKED,),
            reason=reason,
            now=now,
        )
        chain_types.update((row["chain_id"], row["chain_type_name"]) for row in rows)
        frontier = sorted({row["chain_id"] for row in rows} - seen)
        seen.update(frontier)
        cancelled += frontier
    if cancelled:
        hooks.on_commit(session, partial(_notify_ended, ctx.notify, list(cancelled)))
        for cancelled_id in cancelled:
            ctx.observers.after_commit(
                session,
                "chain_cancelled",
                chain_id=cancelled_id,
                type_name=chain_types[cancelled_id],
                reason=reason,
            )
    return cancelled
