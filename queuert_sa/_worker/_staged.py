"""A staged attempt's steps, run from inside the handler, and its lease renewal.

The drivers' staged ports (``attempt.prepare()``/``attempt.transaction()``)
and lease keepers run these flows: committing ``prepare()``, checking that the
attempt still owns its job, writing its outcome, renewing its lease. Same
rules as :mod:`._flow`.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Any

from queuert_sa._attempt import AttemptState
from queuert_sa._logs import get_logger, job_fields
from queuert_sa.state import leases
from queuert_sa.state import operations as ops

from . import _policy as policy
from . import _reports as reports
from . import _units as units
from ._config import WorkerCore
from ._effects import End, Flow, HoldLease, InTransaction, Run, Writer

log = get_logger("queuert_sa.worker")


def commit_prepare(core: WorkerCore, state: AttemptState, session: Any) -> Flow[None]:
    """End ``prepare()``: commit ``running`` + the lease, free the writer, start renewals."""
    ctx = core.ctx
    registration = core.handlers[state.job.type_name]
    now = ctx.clock()
    keep = policy.keep_provisional_lease(
        lease=registration.lease,
        lease_bound=core.lease_bound,
        acquired_at=state.job.last_attempt_at,
        now=now,
    )
    if not keep:
        yield Run(
            session,
            partial(
                leases.renew_lease,
                models=ctx.models,
                job_id=state.job.id,
                worker_id=core.worker_id,
                attempt=state.job.attempt,
                leased_until=now + registration.lease,
            ),
        )
    yield End(session, "commit")
    state.prepared = True
    yield End(session, "close")
    # The external work runs with no transaction open and no SQLite write lock.
    yield Writer(take=False)
    yield HoldLease(state, registration.lease)


def check_ownership(core: WorkerCore, state: AttemptState, session: Any) -> Flow[None]:
    """Lock the job's row in ``session``; raise if this attempt no longer owns it."""
    ctx = core.ctx
    row = yield Run(
        session,
        partial(ops.lock_job, models=ctx.models, caps=ctx.capabilities, job_id=state.job.id),
    )
    problem = policy.ownership_problem(
        row, job_id=state.job.id, worker_id=core.worker_id, attempt=state.job.attempt
    )
    if problem is not None:
        state.signal.set(policy.lost_reason(row))
        raise problem
    overrun = policy.lease_overrun(row, ctx.clock())
    if overrun is not None:
        # Still ours only because no other worker reaped it: this one stalled
        # past its lease (renewals failing, or the process paused).
        log.warning(
            "job %s (%s): the staged attempt outlived its lease by %.1f s; nobody took the "
            "job, so its outcome is written",
            state.job.id,
            state.job.type_name,
            overrun.total_seconds(),
            extra=job_fields(state.job, core.worker_id),
        )
        reports.lease(core, state, "job_attempt_lease_expired")


def write_outcome(core: WorkerCore, state: AttemptState, session: Any) -> Flow[None]:
    """Write a staged attempt's outcome in its owned transaction (``written`` once it commits)."""
    yield Run(session, partial(units.write_decided, ctx=core.ctx, state=state))


def renew(core: WorkerCore, state: AttemptState, lease: dt.timedelta) -> Flow[bool | None]:
    """Renew a staged attempt's lease: True renewed, False lost (signal set), None failed."""
    job = state.job
    unit = partial(
        units.renew_held,
        ctx=core.ctx,
        job_id=job.id,
        worker_id=core.worker_id,
        attempt=job.attempt,
        lease=lease,
    )
    try:
        still_ours, row = yield InTransaction(unit, "write")
    except Exception as exc:
        # The database is unreachable: try again soon; the lease may still
        # outlive the outage, and transaction() re-checks ownership anyway.
        log.warning(
            "renewing the lease of job %s failed (%s); retrying",
            job.id,
            exc,
            extra=job_fields(job, core.worker_id),
        )
        return None
    if still_ours:
        reports.lease(
            core, state, "job_attempt_lease_renewed", leased_until=core.ctx.clock() + lease
        )
        return True
    reason = policy.lost_reason(row)
    log.warning(
        "job %s: the staged attempt lost its job (%s)",
        job.id,
        reason,
        extra=job_fields(job, core.worker_id),
    )
    state.signal.set(reason)
    return False
