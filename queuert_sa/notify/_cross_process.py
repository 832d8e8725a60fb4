"""What the cross-process adapters (PostgreSQL, Redis) have in common.

:class:`CrossProcessNotify`, the base of both, holds the six protocol
methods, the context manager, the reader thread and the start of ``close()``;
each adapter adds only its connections, how it sends one message and how its
reader subscribes and reads. The reader hands each message to the callbacks
registered in a :class:`Listeners` (:func:`deliver` decodes it;
``_listeners`` holds the callbacks); both adapters reconnect on the same
:class:`Backoff` and report an outage once through :class:`Outage`; both use
one wire format per message, so a reader of either backend sees the same
payloads:

* ``job_scheduled`` — ``{"type": type_name, "count": n}`` (JSON);
* ``chain_completed`` — the chain id;
* ``job_ownership_lost`` — the job id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar, Generic, Literal, Protocol, Self, TypeVar, cast

from queuert_sa._logs import get_logger

from ._listeners import Listeners

if TYPE_CHECKING:
    from . import Subscription

log = get_logger("queuert_sa.notify")

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


def deliver(listeners: Listeners, kind: Kind, payload: str) -> None:
    """Decode a message that arrived on ``kind``'s channel and dispatch it.

    A payload that does not decode (another program on the channel) is ignored.
    """
    if kind == "job_scheduled":
        scheduled = decode_job_scheduled(payload)
        if scheduled is not None:
            listeners.job_scheduled(*scheduled)
        return
    some_id = decode_id(payload)
    if some_id is None:
        return
    if kind == "chain_completed":
        listeners.chain_completed(some_id)
    else:
        listeners.job_ownership_lost(some_id)


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

    def __init__(
        self,
        what: str,
        operation: str = "",
        listeners: list[Callable[[str, BaseException], None]] | None = None,
    ) -> None:
        self.what = what
        self.operation = operation
        self._listeners = listeners if listeners is not None else []
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
        for listener in self._listeners:
            try:
                listener(self.operation, error)
            except Exception:
                log.debug("a notify error listener failed", exc_info=True)
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


class _Closeable(Protocol):
    def close(self) -> None: ...


_Conn = TypeVar("_Conn", bound=_Closeable)


class CrossProcessNotify(ABC, Generic[_Conn]):
    """The six protocol methods, the reader thread and ``close()`` of both adapters.

    The reader thread starts with the first ``listen_*``, reconnects on
    :class:`Backoff` and wakes the listeners after an outage. A subclass adds
    the backend: sending one message (:meth:`_send`), the listening connection
    ``_Conn`` (:meth:`_open_listener`, :meth:`_subscribe`, :meth:`_pump`,
    :meth:`_wake_reader`) and ``close()``, which calls :meth:`_stop_reading`
    and then releases its connections.
    """

    # Per backend: its name and the listening connection's name in log messages,
    # what joins prefix and kind in channel names, and the reader thread's name.
    _backend: ClassVar[str]
    _listener_role: ClassVar[str]
    _separator: ClassVar[str]
    _thread_name: ClassVar[str]

    def __init__(
        self,
        *,
        where: str,
        channel_prefix: str,
        connect_timeout_s: float,
        health_check_interval: dt.timedelta,
        reader_join_s: float,
    ) -> None:
        self._where = where
        self._channel_prefix = channel_prefix
        #: Channel of job-scheduled notifications.
        self.job_scheduled_channel = f"{channel_prefix}{self._separator}job_scheduled"
        #: Channel of chain-completed notifications.
        self.chain_completed_channel = f"{channel_prefix}{self._separator}chain_completed"
        #: Channel of job-ownership-lost notifications.
        self.job_ownership_lost_channel = f"{channel_prefix}{self._separator}job_ownership_lost"
        self._kinds: dict[str, Kind] = {
            self.job_scheduled_channel: "job_scheduled",
            self.chain_completed_channel: "chain_completed",
            self.job_ownership_lost_channel: "job_ownership_lost",
        }
        self._connect_timeout_s = connect_timeout_s  # also bounds the first listen_*'s wait
        self._health_check_s = health_check_interval.total_seconds()
        self._reader_join_s = reader_join_s  # how long close() waits for the reader

        self._listeners = Listeners()
        self._lock = threading.Lock()  # _closed and starting the reader
        self._closed = False
        self.error_listeners: list[Callable[[str, BaseException], None]] = []
        """Called with (operation, error) on each failed publish or listen (the client's
        observers' ``notify_error``)."""
        self._publish_outage = Outage(
            f"{self._backend} notify publisher ({where})", "publish", self.error_listeners
        )
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_attempt_done = threading.Event()
        self._listen_outage = Outage(
            f"{self._backend} notify {self._listener_role} ({where})",
            "listen",
            self.error_listeners,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where} prefix={self._channel_prefix!r}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None: ...

    # --- publishing ---------------------------------------------------------------

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        self._publish(self.job_scheduled_channel, encode_job_scheduled(type_name, count))

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        self._publish(self.chain_completed_channel, str(chain_id))

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        self._publish(self.job_ownership_lost_channel, str(job_id))

    def _publish(self, channel: str, payload: str) -> None:
        if not self._closed and payload_fits(payload):
            self._send(channel, payload)

    @abstractmethod
    def _send(self, channel: str, payload: str) -> None:
        """Send one message, or drop it while the backend is down; never raises."""

    # --- listening ----------------------------------------------------------------

    def listen_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> Subscription:
        subscription = self._listeners.add_job_scheduled(type_names, callback)
        self._start_reading()
        return subscription

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> Subscription:
        subscription = self._listeners.add_chain_completed(chain_id, callback)
        self._start_reading()
        return subscription

    def listen_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> Subscription:
        subscription = self._listeners.add_job_ownership_lost(callback)
        self._start_reading()
        return subscription

    def _start_reading(self) -> None:
        """Start the reader on first use; return once its first attempt to subscribe ended.

        After that the backend has the subscription (or is down, and the
        subscription takes effect on reconnection), so a caller that listens
        and then looks for work cannot miss a job committed in between.
        """
        with self._lock:
            if self._closed:
                return
            reader = self._reader
            if reader is None:
                self._prepare_reader()
                reader = self._reader = threading.Thread(
                    target=self._read_forever,
                    name=f"{self._thread_name}[{self._channel_prefix}]",
                    daemon=True,
                )
                reader.start()
        if threading.current_thread() is not reader:
            self._first_attempt_done.wait(self._connect_timeout_s + 1)

    def _prepare_reader(self) -> None:
        """Called once, under the lock, just before the reader thread starts."""

    def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            conn: _Conn | None = None
            try:
                conn = self._open_listener()
                self._subscribe(conn)
                backoff.reset()
                was_down = self._listen_outage.recovered()
                self._first_attempt_done.set()
                if was_down:
                    self._listeners.wake_after_outage()
                self._pump(conn)
            except Exception as exc:
                if not self._stop.is_set():
                    self._listen_outage.failed(exc)
                    self._first_attempt_done.set()
                    self._stop.wait(backoff.next_delay())
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    @abstractmethod
    def _open_listener(self) -> _Conn:
        """A new listening connection; the reader closes it."""

    @abstractmethod
    def _subscribe(self, conn: _Conn, /) -> None:
        """Subscribe ``conn`` to the channels; return once the backend confirmed it."""

    @abstractmethod
    def _pump(self, conn: _Conn, /) -> None:
        """Deliver messages until stopped; raise when the connection is lost."""

    def _deliver(self, channel: str, payload: str) -> None:
        kind = self._kinds.get(channel)
        if kind is not None:
            deliver(self._listeners, kind, payload)

    # --- closing ------------------------------------------------------------------

    def _stop_reading(self) -> bool:
        """Mark closed, drop the listeners, stop the reader; False if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            reader = self._reader
        self._listeners.clear()
        self._stop.set()
        self._first_attempt_done.set()  # a listen_* waiting for the reader returns now
        if reader is not None:
            self._wake_reader()
            if reader is not threading.current_thread():
                reader.join(self._reader_join_s)
        return True

    @abstractmethod
    def _wake_reader(self) -> None:
        """Make a reader blocked in :meth:`_pump` see the stop now (best effort)."""
