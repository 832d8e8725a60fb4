"""Leases: a staged attempt's claim on its job, renewed while it runs and reaped when it lapses.

Same rules as :mod:`.operations`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    RowMapping,
    String,
    and_,
    bindparam,
    case,
    cast,
    literal,
    or_,
    select,
    text,
    update,
)

from queuert_sa.models import JobStatus, Models

from . import _exec, _statements
from .capabilities import Capabilities
from .operations import Executor, database_errors


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
            executor, models, _statements.renew(models), params, key=("renew", models)
        )
    return bool(rows)


def has_expired_lease(
    executor: Executor, models: Models, *, type_names: Sequence[str], now: dt.datetime
) -> bool:
    """Whether any running job of these types has an expired lease (a read, no lock)."""
    table = models.job_table
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
    limits: Mapping[str, int] | None = None,
) -> RowMapping | None:
    """Return one running job whose lease expired to ``pending`` (keeping ``attempt``).

    Only committed ``running`` rows are candidates: an atomic attempt's row is
    ``running`` inside its own open transaction only, and locked, so it is never
    reaped. ``limits``: the retry limit of each type that has one; a job that
    has had that many attempts becomes ``failed`` instead (its worker died or
    stalled on every one: the job may be what kills it). Returns the reaped
    row's ``id``, ``chain_id``, ``type_name``, ``attempt`` and ``status``, or None.
    """
    table = models.job_table
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
    values: dict[str, Any] = {"status": JobStatus.PENDING}
    if limits:
        spent = or_(
            *(
                and_(table.c.type_name == literal(name), table.c.attempt >= limit)
                for name, limit in limits.items()
            )
        )
        when = bindparam(None, now, type_=table.c.completed_at.type)
        error = (
            literal("the lease of attempt ", String())
            + cast(table.c.attempt, String())
            + literal(" expired (its worker died or stalled) and no attempts are left", String())
        )
        values = {
            "status": case(
                (spent, literal(JobStatus.FAILED.value)), else_=literal(JobStatus.PENDING.value)
            ),
            "completed_at": case((spent, when), else_=table.c.completed_at),
            "last_attempt_error": case((spent, error), else_=table.c.last_attempt_error),
        }
    stmt = (
        update(table)
        .where(table.c.id == candidate.scalar_subquery())
        .values(**values, leased_by=None, leased_until=None)
        .returning(
            table.c.id,
            table.c.chain_id,
            table.c.type_name,
            table.c.chain_type_name,
            table.c.attempt,
            table.c.status,
        )
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
