"""The in-process notify adapter: listeners in a dict, callbacks called inline."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable

from queuert_sa._logs import get_logger

log = get_logger("queuert_sa.notify")


class _Listener:
    def __init__(self, unsubscribe: Callable[[], None]) -> None:
        self._unsubscribe: Callable[[], None] | None = unsubscribe

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


class InMemoryNotify:
    """Notifications within one process (threads of one interpreter).

    The default adapter of ``Queuert``: a worker in the same process as the
    producer wakes as soon as the producer's transaction commits. Workers in
    other processes still find the job by polling; give them a cross-process
    adapter to wake them instantly.

    ``sent`` counts delivered notifications per kind, which tests use to assert
    that a rolled-back transaction sent nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scheduled: dict[str, set[Callable[[str, int], None]]] = defaultdict(set)
        self._completed: dict[uuid.UUID, set[Callable[[uuid.UUID], None]]] = defaultdict(set)
        self._ownership: set[Callable[[uuid.UUID], None]] = set()
        self._closed = False
        self.sent: dict[str, int] = {
            "job_scheduled": 0,
            "chain_completed": 0,
            "job_ownership_lost": 0,
        }

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        with self._lock:
            if self._closed:
                return
            self.sent["job_scheduled"] += 1
            callbacks = list(self._scheduled.get(type_name, ()))
        for callback in callbacks:
            try:
                callback(type_name, count)
            except Exception:
                log.exception("notify listener %r failed", callback)

    def listen_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> _Listener:
        names = list(type_names)
        with self._lock:
            for name in names:
                self._scheduled[name].add(callback)

        def unsubscribe() -> None:
            with self._lock:
                for name in names:
                    self._scheduled[name].discard(callback)

        return _Listener(unsubscribe)

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        with self._lock:
            if self._closed:
                return
            self.sent["chain_completed"] += 1
            callbacks = list(self._completed.get(chain_id, ()))
        for callback in callbacks:
            try:
                callback(chain_id)
            except Exception:
                log.exception("notify listener %r failed", callback)

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> _Listener:
        with self._lock:
            self._completed[chain_id].add(callback)

        def unsubscribe() -> None:
            with self._lock:
                listeners = self._completed.get(chain_id)
                if listeners is not None:
                    listeners.discard(callback)
                    if not listeners:
                        del self._completed[chain_id]

        return _Listener(unsubscribe)

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        with self._lock:
            if self._closed:
                return
            self.sent["job_ownership_lost"] += 1
            callbacks = list(self._ownership)
        for callback in callbacks:
            try:
                callback(job_id)
            except Exception:
                log.exception("notify listener %r failed", callback)

    def listen_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> _Listener:
        with self._lock:
            self._ownership.add(callback)

        def unsubscribe() -> None:
            with self._lock:
                self._ownership.discard(callback)

        return _Listener(unsubscribe)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._scheduled.clear()
            self._completed.clear()
            self._ownership.clear()
