"""Multi-statement units the worker flows run in one session (sync code).

Each is a plain function of a ``Session`` (or connection) that never
commits: the thread driver calls it, the asyncio driver runs it through
``run_sync``. Single statements are called from the flows directly.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa import _transitions as transitions
from queuert_sa._attempt import AttemptState
from queuert_sa._context import Context
from queuert_sa.state import leases
from queuert_sa.state import operations as ops


def write_decided(session: Session, ctx: Context, state: AttemptState) -> None:
    """Flush the handler's pending writes (their errors are theirs), then write the outcome."""
    session.flush()
    assert state.decision is not None
    transitions.write_outcome(session, ctx, state.job, state.decision, state.worker_id)


def renew_held(
    session: Session,
    ctx: Context,
    *,
    job_id: uuid.UUID,
    worker_id: str,
    attempt: int,
    lease: dt.timedelta,
) -> tuple[bool, Mapping[Any, Any] | None]:
    """Extend a staged attempt's lease; (still ours, else the job's row as it is now)."""
    # An application transaction holding this job's row must not stall the
    # renewals of every other job: bounded wait, then retry soon (a lock
    # timeout is not a lost lease).
    leases.limit_lock_wait(session, ctx.capabilities, lease / 8)
    ours = leases.renew_lease(
        session,
        ctx.models,
        job_id=job_id,
        worker_id=worker_id,
        attempt=attempt,
        leased_until=ctx.clock() + lease,
    )
    return ours, None if ours else ops.get_job(session, ctx.models, job_id)
