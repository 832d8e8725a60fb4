"""The in-memory twins a test injects: a clock it moves, a notify adapter that records."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from dataclasses import dataclass
from typing import Literal

from queuert_sa.notify import InMemoryNotify

#: Where a :class:`FrozenClock` starts unless told: a fixed instant, so runs repeat.
DEFAULT_START = dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC)


class FrozenClock:
    """A clock that stands still until the test moves it: pass it as ``clock=``.

    ``Queuert(engine, job_types, clock=clock)`` makes every decision of the
    client and its workers (when a job is due, retries, leases, schedules) read
    this clock, so a test moves time instead of sleeping::

        clock.advance(30)                       # seconds, or a timedelta
        assert worker.drain() == 1              # the retry 30 s ahead is due now

    Args:
        start: The first reading, an aware datetime. Defaults to
            ``DEFAULT_START`` (2030-01-01 09:00 UTC).
        step: How far each reading moves the clock afterwards (an advancing
            clock: every ``now`` differs). Defaults to 0: frozen.
    """

    def __init__(self, start: dt.datetime | None = None, *, step: dt.timedelta | float = 0) -> None:
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None:
            raise ValueError(
                "FrozenClock needs an aware datetime (e.g. datetime(2030, 1, 1, tzinfo=UTC)): "
                "queuert's clock reads UTC"
            )
        self._lock = threading.Lock()
        self._now = start.astimezone(dt.UTC)
        self._step = _delta(step, "step")

    def __call__(self) -> dt.datetime:
        with self._lock:
            now = self._now
            self._now += self._step
            return now

    @property
    def now(self) -> dt.datetime:
        """The next reading, without moving the clock."""
        with self._lock:
            return self._now

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        """Move the clock forward by ``delta`` (a timedelta or seconds); return the new now."""
        step = _delta(delta, "advance()")
        if step < dt.timedelta(0):
            raise ValueError("advance() moves the clock forward; use set() to go back in time")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: dt.datetime) -> None:
        """Put the clock at ``when`` (an aware datetime), forward or back."""
        if when.tzinfo is None:
            raise ValueError("FrozenClock.set() needs an aware datetime")
        with self._lock:
            self._now = when.astimezone(dt.UTC)

    def __repr__(self) -> str:
        return f"<FrozenClock {self.now.isoformat()}>"


def _delta(value: dt.timedelta | float, what: str) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"{what} takes a timedelta or a number of seconds, got {value!r}")
    return dt.timedelta(seconds=value)


@dataclass(frozen=True)
class NotifyEvent:
    """One notification a :class:`RecordingNotify` sent, in order."""

    kind: Literal["job_scheduled", "chain_completed", "job_ownership_lost"]
    type_name: str | None = None
    """The job type (``job_scheduled``)."""
    count: int | None = None
    """How many jobs of the type were scheduled (``job_scheduled``)."""
    chain_id: uuid.UUID | None = None
    """The chain that completed (``chain_completed``)."""
    job_id: uuid.UUID | None = None
    """The job whose attempt lost its lease (``job_ownership_lost``)."""


class RecordingNotify(InMemoryNotify):
    """An :class:`~queuert_sa.InMemoryNotify` that also keeps every notification sent.

    It delivers as the in-memory adapter does (workers of the same process wake
    at once) and lists what was sent in ``events``, so a test asserts what a
    cross-process adapter would have carried: nothing for a rolled-back
    transaction, one ``job_scheduled`` per committed start.
    """

    def __init__(self) -> None:
        super().__init__()
        self._events_lock = threading.Lock()
        self._events: list[NotifyEvent] = []

    @property
    def events(self) -> list[NotifyEvent]:
        """Every notification so far, in order (a copy)."""
        with self._events_lock:
            return list(self._events)

    def of(self, kind: str) -> list[NotifyEvent]:
        """The notifications of one kind, in order."""
        return [e for e in self.events if e.kind == kind]

    def clear(self) -> None:
        """Forget the notifications so far."""
        with self._events_lock:
            self._events.clear()

    def _keep(self, event: NotifyEvent) -> None:
        if self._closed:  # a closed adapter sends nothing
            return
        with self._events_lock:
            self._events.append(event)

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        self._keep(NotifyEvent("job_scheduled", type_name=type_name, count=count))
        super().notify_job_scheduled(type_name, count)

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        self._keep(NotifyEvent("chain_completed", chain_id=chain_id))
        super().notify_chain_completed(chain_id)

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        self._keep(NotifyEvent("job_ownership_lost", job_id=job_id))
        super().notify_job_ownership_lost(job_id)
