"""Recurring schedules: when a schedule's ticks fall, and the deduplication key of each.

A :class:`Schedule` is declared on a worker (``worker.recurring(...)``). Each
tick becomes one chain of its job type, started ahead of its time with
``run_at=tick`` and ``dedup=q.Dedup(schedule.key(tick), scope="any")``: however
many workers keep the schedule, the database lets exactly one chain per tick
in. Cron expressions are evaluated by `cronsim <https://pypi.org/project/cronsim/>`_
in the schedule's time zone, with Debian cron's handling of daylight saving
time: a time skipped when clocks go forward runs at the jump, a time that
occurs twice when they go back runs once (the first time).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from cronsim import CronSim, CronSimError

from ._durations import Duration, as_duration
from ._errors import WorkerConfigError
from ._job_types import JobType

#: How many ticks a schedule starts ahead at most in one pass (an ``every=1s`` schedule
#: with a long poll interval pre-starts one poll interval's worth).
MAX_AHEAD = 100

#: The longest schedule name (it is part of a deduplication key of at most 255 characters).
MAX_NAME_LENGTH = 100

#: The deduplication key prefix of every tick.
KEY_PREFIX = "schedule:"


@dataclass(frozen=True, eq=False)
class Schedule:
    """A recurring schedule: one chain of ``job_type`` per tick. See ``worker.recurring``.

    Attributes:
        name: Unique per job type; part of every tick's deduplication key, so
            renaming a schedule starts a new series.
        job_type: The entry type each tick starts.
        cron: A five-field cron expression (``"0 3 * * *"``), or None with ``every``.
        every: A fixed period instead of ``cron``: ticks at whole multiples of it
            since the Unix epoch (so every process agrees on them).
        tz: The zone ``cron`` is read in (default UTC). Ignored by ``every``.
        input: The input of each tick's chain, or a function of the tick (an aware
            datetime in ``tz``) returning it.
        missed: ``"once"`` (default): ticks missed while no worker ran are caught
            up with one run, the latest; ``"skip"``: missed ticks are cancelled.
        grace: How late a tick may start before it counts as missed.
        priority: The chains' priority (default: the type's).
    """

    name: str
    job_type: JobType[Any, Any]
    cron: str | None
    every: dt.timedelta | None
    tz: dt.tzinfo
    input: Any
    missed: Literal["once", "skip"]
    grace: dt.timedelta
    priority: int | None = None
    _cron: str = field(default="", repr=False)

    @property
    def description(self) -> str:
        """``cron "0 3 * * *" in Europe/Berlin`` or ``every 0:00:30``."""
        if self.cron is not None:
            return f'cron "{self.cron}" in {self.tz}'
        return f"every {self.every}"

    @property
    def key_prefix(self) -> str:
        """The start of every tick's deduplication key."""
        return f"{KEY_PREFIX}{self.name}:"

    def key(self, tick: dt.datetime) -> str:
        """The deduplication key of ``tick``: the schedule's name and the tick in UTC."""
        return f"{self.key_prefix}{tick.astimezone(dt.UTC).isoformat()}"

    def input_for(self, tick: dt.datetime) -> Any:
        """The input of ``tick``'s chain."""
        return self.input(tick) if callable(self.input) else self.input

    def ticks_after(self, moment: dt.datetime) -> Iterator[dt.datetime]:
        """The ticks strictly after ``moment`` (aware), in order, in the schedule's zone."""
        if self.every is not None:
            period = self.every.total_seconds()
            start = moment.astimezone(dt.UTC).timestamp()
            index = math.floor(start / period) + 1
            while True:
                yield dt.datetime.fromtimestamp(index * period, dt.UTC)
                index += 1
        # cronsim yields the ticks after the minute holding ``moment``: all after ``moment``.
        for tick in CronSim(self._cron, moment.astimezone(self.tz)):
            if tick > moment:
                yield tick

    def next_tick(self, moment: dt.datetime) -> dt.datetime:
        """The first tick after ``moment``."""
        return next(self.ticks_after(moment))

    def ahead(self, now: dt.datetime, horizon: dt.timedelta) -> list[dt.datetime]:
        """The ticks a pass at ``now`` starts: the next one, and every one up to ``now + horizon``."""
        found: list[dt.datetime] = []
        for tick in self.ticks_after(now):
            if found and (tick > now + horizon or len(found) >= MAX_AHEAD):
                break
            found.append(tick)
        return found


def make_schedule(
    name: str,
    job_type: JobType[Any, Any],
    *,
    cron: str | None,
    every: Duration | None,
    tz: dt.tzinfo | None,
    input: Any | Callable[[dt.datetime], Any],
    missed: str,
    grace: Duration,
    priority: int | None,
) -> Schedule:
    """A checked :class:`Schedule`; :class:`WorkerConfigError` saying what to fix otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:  # pyright: ignore[reportUnnecessaryIsInstance]
        raise WorkerConfigError(
            f"A schedule's name is a non-empty string of at most {MAX_NAME_LENGTH} "
            f"characters, got {name!r:.60}."
        )
    if (cron is None) == (every is None):
        raise WorkerConfigError(
            f"Schedule {name!r}: give cron= (e.g. '0 3 * * *') or every= (a timedelta), not "
            f"{'both' if cron is not None else 'neither'}."
        )
    if missed not in ("once", "skip"):
        raise WorkerConfigError(
            f"Schedule {name!r}: missed= is 'once' (catch up with one run) or 'skip', "
            f"got {missed!r}."
        )
    period: dt.timedelta | None = None
    if every is not None:
        period = as_duration(every, "every")
        if period < dt.timedelta(seconds=1):
            raise WorkerConfigError(
                f"Schedule {name!r}: every= must be at least one second, got {period}."
            )
        if tz is not None:
            raise WorkerConfigError(
                f"Schedule {name!r}: tz= applies to cron= only (every= counts from the epoch)."
            )
    expression = ""
    if cron is not None:
        expression = " ".join(cron.split())
        try:
            CronSim(expression, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        except CronSimError as exc:
            raise WorkerConfigError(
                f"Schedule {name!r}: {cron!r} is not a cron expression ({exc}); expected five "
                "fields, minute hour day-of-month month day-of-week, e.g. '0 3 * * *'."
            ) from None
    if tz is not None and not isinstance(tz, dt.tzinfo):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise WorkerConfigError(
            f"Schedule {name!r}: tz= takes a tzinfo such as zoneinfo.ZoneInfo('Europe/Berlin'), "
            f"got {tz!r:.60}."
        )
    job_type.require_entry()
    if not callable(input):
        job_type.encode_input(input)  # refused now, not at the first tick
    return Schedule(
        name=name,
        job_type=job_type,
        cron=expression or None,
        every=period,
        tz=tz or dt.UTC,
        input=input,
        missed=missed,  # type: ignore[arg-type]
        grace=as_duration(grace, "grace"),
        priority=priority,
        _cron=expression,
    )
