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

from . import _reports as reports
from ._effects import End, Flow, InTransaction, Run, Wait

if TYPE_CHECKING:
    from ._config import WorkerCore


def acquire(
    core: WorkerCore, session: Any, exclude: Collection[uuid.UUID], now: dt.datetime
) -> Flow[Any]:
    """The next due job this worker may run: the acquired row, or None if there is none."""
    ctx = core.ctx
    limits: Mapping[str, int] = core.max_running
    types: tuple[str, ...] = core.limits.open_types(tuple(core.handlers))
    delayed = 0
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
            if (yield from _within_rate(core, session, row, now)):
                return row
            delayed += 1
            if _per_key(core, name) and delayed < KEYED_DELAYS_PER_PASS:
                continue  # another key's job may have a token now
            types = tuple(t for t in types if t != name)
            continue
        check = partial(
            ops_limits.may_run,
            models=ctx.models,
            caps=ctx.capabilities,
            job_id=row["id"],
            type_name=name,
            max_running=limit,
        )
        if (yield Run(session, check)):
            if (yield from _within_rate(core, session, row, now)):
                return row
            delayed += 1
            if _per_key(core, name) and delayed < KEYED_DELAYS_PER_PASS:
                continue
            types = tuple(t for t in types if t != name)
            continue
        yield End(session, "rollback")  # the job as it was: pending, its attempt count kept
        core.limits.mark_full(name)
        reports.limit_reached(core, name, limit)
        types = tuple(t for t in types if t != name)
    return None  # every type of the worker is at its limit


#: A token due within this many seconds is waited for, holding the acquired job.
ON_TIME_S = 0.02

#: How many jobs of a per-key rate one pass may delay before it leaves the type be: the
#: due jobs of keys without a token are moved to their key's next token, a few per pass.
KEYED_DELAYS_PER_PASS = 16


def _per_key(core: WorkerCore, type_name: str) -> bool:
    rate = core.handlers[type_name].rate
    return rate is not None and rate.key is not None


def _within_rate(core: WorkerCore, session: Any, row: Any, now: dt.datetime) -> Flow[bool]:
    """Take a token for the acquired job; without one, delay the job (committed) and say False.

    PostgreSQL: the token is taken in a short transaction of its own (its
    bucket row lock must not last the attempt); it is spent even if the
    attempt then fails, as a call to a rate-limited service would be. SQLite:
    in the attempt's transaction (one writer at a time anyway).
    """
    ctx = core.ctx
    name: str = row["type_name"]
    rate = core.handlers[name].rate
    if rate is None:
        return True
    bucket = rate.bucket(name, row["input"])
    single_writer = ctx.capabilities.single_writer

    def take() -> Run | InTransaction:
        unit = partial(
            ops_limits.take_token,
            models=ctx.models,
            caps=ctx.capabilities,
            name=bucket,
            burst=rate.burst,
            per_second=rate.per_second,
            now=ctx.clock().timestamp(),  # now, not when the acquisition began
        )
        return Run(session, unit) if single_writer else InTransaction(unit, "plain")

    wait: float = yield take()
    if 0 < wait <= ON_TIME_S:
        # A token is due in a moment: wait for it with the job in hand, so that it is
        # taken on time (a token taken late is lost to the rate).
        yield Wait(wait, "stop")
        wait = yield take()
    if wait <= 0:
        return True
    yield End(session, "rollback")  # the attempt, as if never taken
    early = max(0.0, wait - ON_TIME_S / 2)  # due a moment before the token, then waited for
    until = ctx.clock() + dt.timedelta(seconds=early)
    yield Run(
        session, partial(ops_limits.delay_job, models=ctx.models, job_id=row["id"], until=until)
    )
    yield End(session, "commit")
    if rate.key is None:
        core.limits.mark_full(name, early)  # one slot looks again a moment before the token
    reports.rate_limited(core, name, wait)
    return False
