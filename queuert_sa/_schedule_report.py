"""What ``queuert-sa schedules`` and the dashboard show of a worker's schedules.

For each schedule: how it recurs, its next tick, and its latest tick chains
(read with one statement per schedule, through the open-deduplication index).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from ._context import Context
from ._schedules import Schedule
from .models import JobStatus
from .state import chains as ops_chains
from .state import ticks as ops_ticks


@dataclass(frozen=True)
class TickRun:
    """One tick's chain: the tick, the chain, and the status of its first job."""

    tick: dt.datetime
    chain_id: uuid.UUID


@dataclass(frozen=True)
class ScheduleState:
    schedule: Schedule
    next_tick: dt.datetime
    last: TickRun | None
    """The latest tick at or before now that has a chain."""
    last_status: JobStatus | None
    pending: int
    """Tick chains started ahead and not run yet."""


def schedule_states(
    session: Session, ctx: Context, schedules: Sequence[Schedule], now: dt.datetime
) -> list[ScheduleState]:
    """The state of each schedule at ``now``."""
    found: list[ScheduleState] = []
    for schedule in schedules:
        rows = ops_ticks.last_ticks(
            session,
            ctx.models,
            type_name=schedule.job_type.name,
            key_prefix=schedule.key_prefix,
            limit=20,
        )
        past = [row for row in rows if row["scheduled_at"] <= now]
        last = past[0] if past else None
        status = None
        if last is not None:  # a chain's status is its latest job's
            pair = ops_chains.get_chain(session, ctx.models, last["id"])
            status = JobStatus(pair[1]["status"]) if pair is not None else None
        found.append(
            ScheduleState(
                schedule=schedule,
                next_tick=schedule.next_tick(now),
                last=None if last is None else TickRun(last["scheduled_at"], last["id"]),
                last_status=status,
                pending=sum(1 for row in rows if row["scheduled_at"] > now),
            )
        )
    return found
