"""Recurring schedules on a worker: ``worker.recurring(...)`` (the pass that keeps them
is :func:`queuert_sa._worker._keep.keep`).

Every worker that declares a schedule keeps it: once per poll interval (and
when it starts, and when it drains), one transaction starts the schedule's
ticks up to two poll intervals ahead and cancels the ticks that were missed
(see :mod:`queuert_sa._ticks`). Deduplication in the database makes the
chain of each tick exactly one, however many workers and processes keep the
schedule; there is no leader and no second system.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from queuert_sa._durations import Duration
from queuert_sa._errors import WorkerConfigError
from queuert_sa._job_types import JobType
from queuert_sa._schedules import Schedule, make_schedule

if TYPE_CHECKING:
    from ._config import WorkerCore

InT = TypeVar("InT")

#: How late a tick may start before it counts as missed, unless the schedule says.
DEFAULT_GRACE = dt.timedelta(minutes=5)


class Recurring:
    """The schedules a worker keeps (a base of the workers)."""

    def _init_recurring(self) -> None:
        self._schedules: dict[tuple[str, str], Schedule] = {}
        self._schedules_next = 0.0
        self._schedules_lock = threading.Lock()

    def recurring(
        self,
        name: str,
        job_type: JobType[InT, Any],
        *,
        cron: str | None = None,
        every: Duration | None = None,
        tz: dt.tzinfo | None = None,
        input: InT | Callable[[dt.datetime], InT],
        missed: Literal["once", "skip"] = "once",
        grace: Duration = DEFAULT_GRACE,
        priority: int | None = None,
    ) -> Schedule:
        """Start one chain of ``job_type`` per tick of a schedule, however many workers keep it.

        Declare it next to the handlers, on every worker that should keep it
        (any one is enough; more are safe)::

            worker.recurring("nightly-report", report, cron="0 3 * * *",
                             tz=ZoneInfo("Europe/Berlin"), input={"kind": "daily"})
            worker.recurring("refresh-rates", refresh, every=dt.timedelta(minutes=5),
                             input=lambda tick: {"at": tick.isoformat()})

        Args:
            name: The schedule's name, unique per job type (at most 100
                characters); it is part of each tick's deduplication key.
            job_type: An entry type; each tick starts a chain of it.
            cron: Five cron fields (minute hour day-of-month month
                day-of-week), read in ``tz``. Daylight saving time as Debian's
                cron: a time skipped when clocks go forward runs at the jump,
                one that occurs twice when they go back runs once.
            every: Instead of ``cron``, a period of at least one second;
                ticks fall on whole multiples of it since the Unix epoch.
            tz: The time zone of ``cron`` (a ``zoneinfo.ZoneInfo``); UTC if
                None.
            input: Each chain's input, or a function of the tick (an aware
                datetime in ``tz``) that returns it.
            missed: A tick still pending more than ``grace`` after its time
                was missed (no worker ran). ``"once"``: the latest missed tick
                runs, older ones are cancelled; ``"skip"``: all are cancelled.
            grace: See ``missed``. Default five minutes.
            priority: The chains' priority; default the type's.

        Each tick's chain is started ahead of its time (``run_at=tick``),
        up to two poll intervals ahead, with ``q.Dedup(key, scope="any")``
        where the key is the schedule's name and the tick in UTC. Raises
        :class:`WorkerConfigError` for a bad cron expression, name or option.
        """
        core: WorkerCore = self  # type: ignore[assignment]
        resolved = core.ctx.job_types.resolve(job_type)
        schedule = make_schedule(
            name,
            resolved,
            cron=cron,
            every=every,
            tz=tz,
            input=input,
            missed=missed,
            grace=grace,
            priority=priority,
        )
        with self._schedules_lock:
            if (resolved.name, name) in self._schedules:
                raise WorkerConfigError(
                    f"Schedule {name!r} of {resolved.name!r} is declared twice on this worker."
                )
            self._schedules[(resolved.name, name)] = schedule
            self._schedules_next = 0.0
        return schedule

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules this worker keeps, in the order they were declared."""
        with self._schedules_lock:
            return list(self._schedules.values())

    def schedules_due(self, poll_interval: dt.timedelta) -> bool:
        """True once per ``poll_interval`` for one slot: the worker's schedule pass."""
        if not self._schedules:
            return False
        now = time.monotonic()
        with self._schedules_lock:
            if now < self._schedules_next:
                return False
            self._schedules_next = now + poll_interval.total_seconds()
        return True
