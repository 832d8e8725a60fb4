"""Acquiring the next job in the attempt flow, within the fleet-wide ``max_running`` limits.

See :mod:`._limits` for what a limit does, and :mod:`queuert_sa.state.limits`
for how the database decides.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from queuert_sa.state import limits as ops_limits
from queuert_sa.state import operations as ops

from ._effects import End, Flow, Run

if TYPE_CHECKING:
    from ._config import WorkerCore


def acquire(
    core: WorkerCore, session: Any, exclude: Collection[uuid.UUID], now: dt.datetime
) -> Flow[Any]:
    """The next due job this worker may run: the acquired row, or None if there is none."""
    ctx = core.ctx
    limits: Mapping[str, int] = core.max_running
    types: tuple[str, ...] = core.acquired_types
    while types:
        row = yield Run(
            session,
            partial(
                ops.acquire_job,
                models=ctx.models,
                caps=ctx.capabilities,
                type_names=types,
                worker_id=core.worker_id,
                # Provisional for both modes; a staged prepare() renews or keeps it.
                lease_until=now + core.lease_bound,
                now=now,
                exclude_ids=exclude,
                timeouts=core.atomic_timeouts,
            ),
        )
        if row is None:
            return None
        name: str = row["type_name"]
        limit = limits.get(name)
        if limit is None:
            return row
        check = partial(
            ops_limits.may_run,
            models=ctx.models,
            caps=ctx.capabilities,
            job_id=row["id"],
            type_name=name,
            max_running=limit,
        )
        if (yield Run(session, check)):
            return row
        yield End(session, "rollback")  # the job as it was: pending, its attempt count kept
        core.limits.mark_full(name)
        core.report_limit_wait(name, limit)
        types = tuple(t for t in types if t != name)
    return None  # every type of the worker is at its limit
