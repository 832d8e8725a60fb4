"""What the cross-process adapters (PostgreSQL, Redis) have in common.

Both read their backend on one background thread and hand each message to the
callbacks registered in a :class:`Listeners` (``Listeners.deliver`` decodes
it); both reconnect on the same :class:`Backoff` and report an outage once
through :class:`Outage`; both use one wire format per message, so a reader of
either backend sees the same payloads:

* ``job_scheduled`` — ``{"type": type_name, "count": n}`` (JSON);
* ``chain_completed`` — the chain id;
* ``job_ownership_lost`` — the job id.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar, cast

log = logging.getLogger("queuert_sa.notify")

_K = TypeVar("_K")
_V = TypeVar("_V")

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; Redis has no such
#: limit, but one format for both keeps payloads portable.
MAX_PAYLOAD_BYTES = 7999

#: The messages of the protocol; each adapter gives each its own channel,
#: ``<channel_prefix><separator><kind>``.
Kind = Literal["job_scheduled", "chain_completed", "job_ownership_lost"]

#: First and longest delay between reconnection attempts (seconds).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0


def encode_job_scheduled(type_name: str, count: int) -> str:
    """``{"type": ..., "count": ...}`` — the job-scheduled payload."""
    return json.dumps({"type": type_name, "count": count}, ensure_ascii=False)


def decode_job_scheduled(payload: str) -> tuple[str, int] | None:
    """The (type name, count) of a job-scheduled payload; None if it is not one."""
    try:
        data = cast("object", json.loads(payload))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    fields = cast("dict[str, object]", data)
    type_name = fields.get("type")
    count = fields.get("count")
    if not isinstance(type_name, str) or not isinstance(count, int) or isinstance(count, bool):
        return None
    return type_name, count


def decode_id(payload: str) -> uuid.UUID | None:
    """The id of a chain-completed (chain id) or ownership-lost (job id) payload; None if none."""
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None


def payload_fits(payload: str) -> bool:
    if len(payload.encode()) <= MAX_PAYLOAD_BYTES:
        return True
    log.warning(
        "notification dropped: its payload is %d bytes, the limit is %d (is a job type "
        "name that long?); workers still find the job by polling",
        len(payload.encode()),
        MAX_PAYLOAD_BYTES,
    )
    return False


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

    def deliver(self, kind: Kind, payload: str) -> None:
        """Decode a message that arrived on ``kind``'s channel and dispatch it.

        A payload that does not decode (another program on the channel) is ignored.
        """
        if kind == "job_scheduled":
            scheduled = decode_job_scheduled(payload)
            if scheduled is not None:
                self.job_scheduled(*scheduled)
            return
        some_id = decode_id(payload)
        if some_id is None:
            return
        if kind == "chain_completed":
            self.chain_completed(some_id)
        else:
            self.job_ownership_lost(some_id)

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


class Backoff:
    """Delays between reconnection attempts: 0.1 s, doubling, at most 5 s, ±10 %."""

    def __init__(self, initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_MAX_S) -> None:
        self._initial = initial
        self._cap = cap
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay * random.uniform(0.9, 1.1)

    def reset(self) -> None:
        self._next = self._initial


class Outage:
    """Up/down state of one connection; logs each outage once, not each failure.

    ``may_try()`` gates callers that should not hammer a backend that is down
    (publishers): after a failure the next attempt waits for the backoff delay,
    and calls in between return False at once.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self._backoff = Backoff()

    @property
    def is_down(self) -> bool:
        return self._down

    def may_try(self) -> bool:
        with self._lock:
            return not self._down or time.monotonic() >= self._retry_at

    def failed(self, error: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + self._backoff.next_delay()
        if first:
            log.warning(
                "%s is unavailable (%s: %s); notifications are dropped until it is back, "
                "workers keep polling; reconnecting in the background",
                self.what,
                type(error).__name__,
                str(error).strip(),
            )
        else:
            log.debug("%s still unavailable: %s", self.what, error)

    def recovered(self) -> bool:
        """Mark the connection up; True if it was down (the outage is over)."""
        with self._lock:
            was_down = self._down
            self._down = False
            self._backoff.reset()
        if was_down:
            log.info("%s is back", self.what)
        return was_down
