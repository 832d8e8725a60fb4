"""The pass that keeps a worker's recurring schedules (see :mod:`._recurring`).

Every worker that declares a schedule keeps it: when it starts, when it
drains, and once per poll interval, one transaction starts the schedule's
ticks up to two poll intervals ahead and cancels the ticks that were missed
(:mod:`queuert_sa._ticks`). Deduplication in the database makes the chain of
each tick exactly one, however many workers and processes keep the
schedule; there is no leader and no second system.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from queuert_sa._logs import get_logger
from queuert_sa._ticks import Kept, keep_schedules

from ._effects import Flow, InTransaction

if TYPE_CHECKING:
    from ._config import WorkerCore

log = get_logger("queuert_sa.worker")


def keep(core: WorkerCore) -> Flow[Kept | None]:
    """One pass over the worker's schedules (one write transaction); None if it has none
    or if it failed (logged: jobs are not held up by a schedule)."""
    schedules = core.schedules
    if not schedules:
        return None
    unit = partial(
        keep_schedules,
        ctx=core.ctx,
        schedules=schedules,
        now=core.ctx.clock(),
        horizon=2 * core.poll_interval,
    )
    try:
        kept: Kept = yield InTransaction(unit, "write")
    except Exception as exc:
        # The jobs go on: the next pass (one poll interval on) starts what this one did not.
        log.warning(
            "worker %s: the pass over its %d schedule(s) failed (%s); retrying in %s",
            core.worker_id,
            len(schedules),
            exc,
            core.poll_interval,
        )
        return None
    for schedule, tick, chain_id in kept.started:
        log.debug(
            "schedule %s: started chain %s for the tick at %s",
            schedule.name,
            chain_id,
            tick.isoformat(),
        )
    for schedule, chain_id, reason in kept.cancelled:
        log.warning("schedule %s: cancelled chain %s (%s)", schedule.name, chain_id, reason)
    return kept
