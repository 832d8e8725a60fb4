"""Fleet-wide concurrency limits in the attempt flow: ``@worker.handler(t, max_running=N)``.

The acquiring transaction takes the next due job as always; when its type has
a limit, :func:`queuert_sa.state.limits.may_run` decides in the same
transaction whether one more attempt of that type fits
(:func:`queuert_sa._worker._acquire.acquire`). If not, the
transaction is rolled back (the job untouched: pending, attempt count kept)
and the slot takes a job of another type: a type at its limit never holds a
slot up. The type is left out of this worker's acquisitions for a short
while (:data:`RECHECK`), so idle slots do not ask again and again.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

from queuert_sa._errors import WorkerConfigError
from queuert_sa._rate import Rate

#: How long a type found at its limit is left out of a worker's acquisitions.
RECHECK = dt.timedelta(milliseconds=250)


def check_max_running(type_name: str, value: object, batch: int) -> int | None:
    """``max_running=``: None (no limit) or a whole number of attempts, at least 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WorkerConfigError(
            f"max_running of the handler for {type_name!r} must be a whole number of attempts "
            f"(at least 1) or None for no limit, not {value!r}"
        )
    if batch > 1:
        raise WorkerConfigError(
            f"max_running= and batch= cannot be combined on the handler for {type_name!r}: a "
            "group takes many jobs in one statement. Drop one of them."
        )
    return value


def check_rate(type_name: str, value: object, batch: int) -> Rate | None:
    """``rate=``: None (no limit) or a :class:`~queuert_sa.Rate`."""
    if value is None:
        return None
    if not isinstance(value, Rate):
        raise WorkerConfigError(
            f"rate of the handler for {type_name!r} takes q.Rate(count, per=...), not {value!r}"
        )
    if batch > 1:
        raise WorkerConfigError(
            f"rate= and batch= cannot be combined on the handler for {type_name!r}: a group "
            "takes many jobs in one statement. Drop one of them."
        )
    return value


class Limits:
    """A worker's limited types, and which of them were found full, until when."""

    def __init__(self) -> None:
        self._full_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def full_now(self) -> frozenset[str]:
        """The types left out at this moment (for looking; :meth:`open_types` to acquire)."""
        if not self._full_until:
            return frozenset()
        now = time.monotonic()
        with self._lock:
            return frozenset(n for n, until in self._full_until.items() if until > now)

    def open_types(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Of ``names``, those this caller may acquire now.

        When a type's wait is over, one caller (one slot) gets it and looks;
        the other slots leave it out a little longer, until that slot ran a job
        of it (:meth:`mark_free`) or found it full again: one look per worker
        at each moment a type may have room, not one per slot.
        """
        if not self._full_until:
            return names
        now = time.monotonic()
        found: list[str] = []
        with self._lock:
            for name in names:
                until = self._full_until.get(name)
                if until is None:
                    found.append(name)
                elif until <= now:
                    self._full_until[name] = now + RECHECK.total_seconds()
                    found.append(name)
        return tuple(found)

    def mark_full(self, type_name: str, seconds: float | None = None) -> None:
        """Leave ``type_name`` out for ``seconds`` (default :data:`RECHECK`)."""
        wait = RECHECK.total_seconds() if seconds is None else seconds
        with self._lock:
            self._full_until[type_name] = time.monotonic() + wait

    def mark_free(self, type_name: str) -> None:
        """An attempt of ``type_name`` ended here: a slot of it may be free again."""
        if type_name in self._full_until:
            with self._lock:
                self._full_until.pop(type_name, None)

    def recheck_at(self, now: dt.datetime) -> dt.datetime | None:
        """When the first full type is looked at again (None if none is full)."""
        if not self._full_until:
            return None
        moment = time.monotonic()
        with self._lock:
            coming = [until for until in self._full_until.values() if until > moment]
        if not coming:
            return None
        return now + dt.timedelta(seconds=min(coming) - moment)
