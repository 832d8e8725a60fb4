"""Who listens to what, for the cross-process adapters, and calling them.

:class:`Listeners` holds the callbacks registered by ``listen_*`` (by job
type, by chain id, and for ownership-lost messages) and calls them with
messages already decoded; it knows neither a backend nor the wire format
(both are in ``_cross_process``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from queuert_sa._logs import get_logger

log = get_logger("queuert_sa.notify")

_K = TypeVar("_K")
_V = TypeVar("_V")


class _Subscription:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class Listeners:
    """Callbacks by job type, by chain id, and for ownership-lost messages.

    A message is dispatched to a snapshot of the callbacks registered for it.
    Callbacks run on the adapter's reader thread, one message after another, in
    the order of registration. A callback that raises is logged and the others
    (and later messages) are still delivered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduled: dict[str, dict[object, Callable[[str, int], None]]] = {}
        self._completed: dict[uuid.UUID, dict[object, Callable[[uuid.UUID], None]]] = {}
        self._ownership: dict[object, Callable[[uuid.UUID], None]] = {}

    def add_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> _Subscription:
        names = list(dict.fromkeys(type_names))
        token = object()
        with self._lock:
            for name in names:
                self._scheduled.setdefault(name, {})[token] = callback

        def release() -> None:
            with self._lock:
                for name in names:
                    self._forget(self._scheduled, name, token)

        return _Subscription(release)

    def add_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> _Subscription:
        token = object()
        with self._lock:
            self._completed.setdefault(chain_id, {})[token] = callback

        def release() -> None:
            with self._lock:
                self._forget(self._completed, chain_id, token)

        return _Subscription(release)

    def add_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> _Subscription:
        token = object()
        with self._lock:
            self._ownership[token] = callback

        def release() -> None:
            with self._lock:
                self._ownership.pop(token, None)

        return _Subscription(release)

    @staticmethod
    def _forget(table: dict[_K, dict[object, _V]], key: _K, token: object) -> None:
        callbacks = table.get(key)
        if callbacks is not None:
            callbacks.pop(token, None)
            if not callbacks:
                del table[key]

    def listens_to(self, type_name: str) -> bool:
        """Whether any callback listens to job-scheduled messages of ``type_name``."""
        with self._lock:
            return bool(self._scheduled.get(type_name))

    def job_scheduled(self, type_name: str, count: int) -> None:
        with self._lock:
            callbacks = list(self._scheduled.get(type_name, {}).values())
        for callback in callbacks:
            _call(callback, type_name, count)

    def chain_completed(self, chain_id: uuid.UUID) -> None:
        with self._lock:
            callbacks = list(self._completed.get(chain_id, {}).values())
        for callback in callbacks:
            _call(callback, chain_id)

    def job_ownership_lost(self, job_id: uuid.UUID) -> None:
        with self._lock:
            callbacks = list(self._ownership.values())
        for callback in callbacks:
            _call(callback, job_id)

    def wake_after_outage(self) -> None:
        """Wake the listeners that may have missed a message during an outage.

        Job-scheduled listeners are called with count 1 and chain-completed
        listeners with their chain id: a spurious wake-up costs a worker one
        look for work and ``await_chain`` one read of the chain; a missed one
        costs up to a poll interval.

        Ownership-lost listeners are *not* called. Their message names a job,
        and the adapter does not know which jobs a listener's worker holds, so
        there is nothing truthful to send; a made-up id would be ignored. A
        missed ownership-lost message costs at most the attempt's next lease
        renewal (half its lease), which finds the loss, and
        ``attempt.transaction()`` re-checks ownership before every write.
        """
        with self._lock:
            scheduled = [
                (name, callback)
                for name, callbacks in self._scheduled.items()
                for callback in callbacks.values()
            ]
            completed = [
                (chain_id, callback)
                for chain_id, callbacks in self._completed.items()
                for callback in callbacks.values()
            ]
        for name, on_scheduled in scheduled:
            _call(on_scheduled, name, 1)
        for chain_id, on_completed in completed:
            _call(on_completed, chain_id)

    def clear(self) -> None:
        with self._lock:
            self._scheduled.clear()
            self._completed.clear()
            self._ownership.clear()


def _call(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("notify listener %r failed", callback)
