"""Keeping a recurring schedule: start its coming ticks, cancel the missed and the obsolete.

One transaction per pass of a worker, for all its schedules. Every tick's
chain is started with ``dedup=Dedup(schedule.key(tick), scope="any")``, so
concurrent passes of many workers (and a pass that repeats itself) start each
tick once: deduplication serialises them in the database. A pending tick
whose time is more than ``grace`` past was missed (no worker ran it): with
``missed="once"`` the latest of them runs and the others are cancelled; with
``missed="skip"`` all of them are cancelled. A pending tick in the future that
the schedule no longer has (its cron changed) is cancelled too.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from . import _operator as operator
from . import _transitions as transitions
from ._context import Context
from ._entities import Dedup
from ._job_types import ChainStart
from ._schedules import Schedule
from .state import ticks as ops_ticks


@dataclass
class Kept:
    """What a pass did: chains started, and ticks cancelled (with why)."""

    started: list[tuple[Schedule, dt.datetime, uuid.UUID]] = field(
        default_factory=list[tuple[Schedule, dt.datetime, uuid.UUID]]
    )
    cancelled: list[tuple[Schedule, uuid.UUID, str]] = field(
        default_factory=list[tuple[Schedule, uuid.UUID, str]]
    )


def keep_schedules(
    session: Session,
    ctx: Context,
    schedules: Sequence[Schedule],
    *,
    now: dt.datetime,
    horizon: dt.timedelta,
) -> Kept:
    """Start every schedule's ticks up to ``now + horizon``; cancel missed and obsolete ones."""
    kept = Kept()
    for schedule in schedules:
        coming = schedule.ahead(now, horizon)
        wanted = {schedule.key(tick) for tick in coming}
        pending = ops_ticks.pending_ticks(
            session,
            ctx.models,
            type_name=schedule.job_type.name,
            key_prefix=schedule.key_prefix,
        )
        missed = [row for row in pending if row["scheduled_at"] < now - schedule.grace]
        if schedule.missed == "once":
            missed = missed[:-1]  # the latest missed tick runs (the rows are by time)
        reasons = {row["id"]: f"missed tick of schedule {schedule.name!r}" for row in missed}
        for row in pending:
            if row["scheduled_at"] > now and row["deduplication_key"] not in wanted:
                reasons[row["id"]] = f"schedule {schedule.name!r} changed: tick no longer due"
        for chain_id, reason in reasons.items():
            if operator.cancel_chain(session, ctx, chain_id, reason=reason, cascade=False):
                kept.cancelled.append((schedule, chain_id, reason))
        starts = [
            ChainStart(
                schedule.job_type,
                schedule.input_for(tick.astimezone(schedule.tz)),
                run_at=tick,
                dedup=Dedup(schedule.key(tick), scope="any"),
                priority=schedule.priority,
            )
            for tick in coming
        ]
        for tick, chain in zip(coming, transitions.start_chains(session, ctx, starts), strict=True):
            if not chain.deduplicated:
                kept.started.append((schedule, tick, chain.id))
    return kept
