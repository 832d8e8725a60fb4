"""The Redis notify adapter: pub/sub through redis-py (sync).

Needs the ``redis`` extra (``pip install 'queuert_sa[redis]'``); import it from
here, ``from queuert_sa.notify.redis import RedisNotify``, so that
``queuert_sa.notify`` itself does not require redis-py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from ._cross_process import (
    Backoff,
    Kind,
    Outage,
    deliver,
    encode_job_scheduled,
    payload_fits,
)
from ._listeners import Listeners

if TYPE_CHECKING:
    from . import NotifyAdapter, Subscription

__all__ = ["RedisNotify"]


class _Client(Protocol):
    """The part of ``redis.Redis`` used here (its own annotations leave ``**kwargs`` untyped)."""

    def publish(self, channel: str, message: str) -> int: ...
    def pubsub(self) -> PubSub: ...
    def close(self) -> None: ...


# How long the reader blocks in one read; close() wakes it sooner through the
# control channel, so this only bounds close() when Redis is unreachable.
_READ_TIMEOUT_S = 1.0


class RedisNotify:
    """Notifications through Redis pub/sub, across processes and hosts.

    ::

        from queuert_sa.notify.redis import RedisNotify

        notify = RedisNotify("redis://localhost:6379/0")   # or a redis.Redis; close() at shutdown
        queuert = q.Queuert(engine, job_types, notify=notify)

    For applications that have Redis anyway, or whose database is SQLite (which
    has no LISTEN/NOTIFY) but whose workers run in other processes.

    ``notify_*`` is a ``PUBLISH`` through the client's connection pool. The
    first ``listen_*`` call opens one pub/sub connection, ``SUBSCRIBE``s to its
    channels and waits for Redis to confirm; one daemon thread reads it and
    calls the callbacks (keep them short: they delay the messages behind them).

    Channels: ``<channel_prefix>:job_scheduled`` (payload
    ``{"type": type_name, "count": n}``, the same format as
    ``PostgresNotify``), ``<channel_prefix>:chain_completed`` (payload: the
    chain id) and ``<channel_prefix>:job_ownership_lost`` (payload: the job
    id), plus a private control channel per adapter used to wake its reader on
    ``close()``.

    Every listening process receives the count of a job-scheduled message and
    wakes up to that many of its idle slots; there is no shared "wake budget"
    across processes, so with several worker processes a batch may wake more
    slots than there are jobs (the extra ones find nothing and sleep again).
    Measured, that costs no latency and about one empty look for work per job
    and idle process; see "Does a wake budget matter?" in ``docs/notify.md``.

    Resilience: if Redis is unreachable, at start or later, one warning is
    logged per connection and outage; the reader reconnects in the background
    (0.1 s, doubling, at most 5 s apart), subscribes again and then wakes every
    job-scheduled and chain-completed listener once, since messages published
    meanwhile are lost (ownership-lost listeners are not called: a missed one
    is found by the attempt's next lease renewal). ``notify_*``
    never raises: while Redis is down it drops the notification (a hint —
    workers still poll). A ``listen_*`` call made while Redis is down returns
    at once; the subscription takes effect when Redis is back.

    Args:
        client_or_url: A ``redis.Redis`` client (used as configured, its retry
            policy included, and not closed by ``close()``), or a URL such as
            ``redis://host:6379/0``; for a URL the adapter makes and owns a
            client that does not retry on its own (the adapter's backoff does).
        channel_prefix: Start of the channel names (default ``"queuert"``).
            Processes that should wake each other use the same prefix.
        connect_timeout: For a client made from a URL, how long connecting and
            each command may take (default 5 seconds). Also how long the first
            ``listen_*`` call waits for Redis to confirm the subscription.
        health_check_interval: After this long without traffic the reader
            sends ``PING``, so a connection that died silently is replaced
            (default 30 seconds).
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        channel_prefix: str = "queuert",
        connect_timeout: dt.timedelta = dt.timedelta(seconds=5),
        health_check_interval: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        timeout_s = connect_timeout.total_seconds()
        if isinstance(client_or_url, str):
            client = redis.from_url(
                client_or_url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        elif isinstance(client_or_url, redis.Redis):  # pyright: ignore[reportUnnecessaryIsInstance]
            client = client_or_url
            self._owns_client = False
        else:
            raise TypeError(
                "RedisNotify needs a redis.Redis client or a redis:// URL, got "
                f"{type(client_or_url).__name__}."
            )
        self._client = cast("_Client", client)
        kwargs = client.connection_pool.connection_kwargs
        where = (
            kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        )
        self._where = f"{where}/{kwargs.get('db', 0)}"
        self._channel_prefix = channel_prefix
        #: Channel of job-scheduled notifications.
        self.job_scheduled_channel = f"{channel_prefix}:job_scheduled"
        #: Channel of chain-completed notifications.
        self.chain_completed_channel = f"{channel_prefix}:chain_completed"
        #: Channel of job-ownership-lost notifications.
        self.job_ownership_lost_channel = f"{channel_prefix}:job_ownership_lost"
        self._kinds: dict[str, Kind] = {
            self.job_scheduled_channel: "job_scheduled",
            self.chain_completed_channel: "chain_completed",
            self.job_ownership_lost_channel: "job_ownership_lost",
        }
        self._control_channel = f"{channel_prefix}:notify-control:{uuid.uuid4().hex}"
        self._connect_timeout_s = timeout_s
        self._health_check_s = health_check_interval.total_seconds()

        self._listeners = Listeners()
        self._lock = threading.Lock()  # _closed and starting the reader
        self._closed = False
        self._publish_outage = Outage(f"Redis notify publisher ({self._where})")

        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_attempt_done = threading.Event()
        self._listen_outage = Outage(f"Redis notify subscriber ({self._where})")

    def __repr__(self) -> str:
        return f"<RedisNotify {self._where} prefix={self._channel_prefix!r}>"

    def __enter__(self) -> RedisNotify:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- publishing ---------------------------------------------------------------

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        self._publish(self.job_scheduled_channel, encode_job_scheduled(type_name, count))

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        self._publish(self.chain_completed_channel, str(chain_id))

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        self._publish(self.job_ownership_lost_channel, str(job_id))

    def _publish(self, channel: str, payload: str) -> None:
        if self._closed or not payload_fits(payload) or not self._publish_outage.may_try():
            return
        # A pooled connection kept from before an outage fails on first use:
        # retry once (on a fresh connection) rather than drop the notification.
        attempts = 1 if self._publish_outage.is_down else 2
        for attempt in range(1, attempts + 1):
            try:
                self._client.publish(channel, payload)
            except Exception as exc:
                if attempt == attempts:
                    self._publish_outage.failed(exc)
                continue
            self._publish_outage.recovered()
            return

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
        """Start the reader on first use; return once its first subscription attempt ended.

        After that Redis has confirmed the SUBSCRIBE (or is down, and the
        subscription takes effect on reconnection), so a caller that listens
        and then looks for work cannot miss a job committed in between.
        """
        with self._lock:
            if self._closed:
                return
            reader = self._reader
            if reader is None:
                reader = self._reader = threading.Thread(
                    target=self._read_forever,
                    name=f"queuert-notify-redis[{self._channel_prefix}]",
                    daemon=True,
                )
                reader.start()
        if threading.current_thread() is not reader:
            self._first_attempt_done.wait(self._connect_timeout_s + 1)

    def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                self._subscribe(pubsub)
                backoff.reset()
                was_down = self._listen_outage.recovered()
                self._first_attempt_done.set()
                if was_down:
                    self._listeners.wake_after_outage()
                self._pump(pubsub)
            except Exception as exc:
                if not self._stop.is_set():
                    self._listen_outage.failed(exc)
                    self._first_attempt_done.set()
                    self._stop.wait(backoff.next_delay())
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _channels(self) -> tuple[str, ...]:
        return (*self._kinds, self._control_channel)

    def _subscribe(self, pubsub: PubSub) -> None:
        """SUBSCRIBE and wait until Redis confirmed every channel."""
        pubsub.subscribe(*self._channels())
        pending = set(self._channels())
        deadline = time.monotonic() + self._connect_timeout_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Redis did not confirm the SUBSCRIBE in time")
            message = _read(pubsub, remaining)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                pending.discard(_text(message.get("channel")))
            else:
                self._deliver(message)

    def _pump(self, pubsub: PubSub) -> None:
        """Deliver messages until stopped; raises when the connection is lost."""
        idle_until = time.monotonic() + self._health_check_s
        while not self._stop.is_set():
            message = _read(pubsub, min(_READ_TIMEOUT_S, max(0.0, idle_until - time.monotonic())))
            if message is not None:
                idle_until = time.monotonic() + self._health_check_s
                if (
                    message.get("type") == "subscribe"
                    and _text(message.get("channel")) == self._control_channel
                ):
                    # redis-py reconnected and resubscribed on its own (a client
                    # with retries): messages may have been lost meanwhile.
                    self._listeners.wake_after_outage()
                self._deliver(message)
            elif time.monotonic() >= idle_until:
                pubsub.ping()
                idle_until = time.monotonic() + self._health_check_s

    def _deliver(self, message: dict[str, object]) -> None:
        if message.get("type") != "message":
            return
        kind = self._kinds.get(_text(message.get("channel")))
        if kind is not None:
            deliver(self._listeners, kind, _text(message.get("data")))

    # --- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader thread and close its connection; idempotent.

        A client made from a URL is closed too; a client passed in is not.
        Notifications sent after this are dropped; callbacks are not called again.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reader = self._reader
        self._listeners.clear()
        self._stop.set()
        self._first_attempt_done.set()  # a listen_* waiting for the reader returns now
        if reader is not None:
            if not self._listen_outage.is_down:
                with contextlib.suppress(Exception):
                    self._client.publish(self._control_channel, "close")
            if reader is not threading.current_thread():
                reader.join(self._connect_timeout_s + _READ_TIMEOUT_S + 1)
        if self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()


def _read(pubsub: PubSub, timeout: float) -> dict[str, object] | None:
    return cast("dict[str, object] | None", pubsub.get_message(timeout=timeout))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


if TYPE_CHECKING:
    _implements_protocol: type[NotifyAdapter] = RedisNotify
