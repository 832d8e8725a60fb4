"""The Redis notify adapter: pub/sub through redis-py (sync).

Needs the ``redis`` extra (``pip install 'queuert_sa[redis]'``); import it from
here, ``from queuert_sa.notify.redis import RedisNotify``, so that
``queuert_sa.notify`` itself does not require redis-py.

This module owns what is particular to Redis: the client, ``PUBLISH``, and the
pub/sub connection that subscribes, waits for Redis's confirmation and is read
with a timeout (a control channel wakes it on ``close()``). The protocol
methods, the reader thread and its reconnection, and the order of ``close()``
come from ``CrossProcessNotify`` (``_cross_process``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Protocol, cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from queuert_sa._durations import Duration, as_duration

from ._cross_process import CrossProcessNotify

if TYPE_CHECKING:
    from . import NotifyAdapter

__all__ = ["RedisNotify"]


class _Client(Protocol):
    """The part of ``redis.Redis`` used here (its own annotations leave ``**kwargs`` untyped)."""

    def publish(self, channel: str, message: str) -> int: ...
    def pubsub(self) -> PubSub: ...
    def close(self) -> None: ...


# How long the reader blocks in one read; close() wakes it sooner through the
# control channel, so this only bounds close() when Redis is unreachable.
_READ_TIMEOUT_S = 1.0


class RedisNotify(CrossProcessNotify[PubSub]):
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

    _backend = "Redis"
    _listener_role = "subscriber"
    _separator = ":"
    _thread_name = "queuert-notify-redis"

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        channel_prefix: str = "queuert",
        connect_timeout: Duration = dt.timedelta(seconds=5),
        health_check_interval: Duration = dt.timedelta(seconds=30),
    ) -> None:
        connect_timeout = as_duration(connect_timeout, "connect_timeout")
        health_check_interval = as_duration(health_check_interval, "health_check_interval")
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
        super().__init__(
            where=f"{where}/{kwargs.get('db', 0)}",
            channel_prefix=channel_prefix,
            connect_timeout_s=timeout_s,
            health_check_interval=health_check_interval,
            # The reader may be waiting for a SUBSCRIBE confirmation or in one read.
            reader_join_s=timeout_s + _READ_TIMEOUT_S + 1,
        )
        self._control_channel = f"{channel_prefix}:notify-control:{uuid.uuid4().hex}"

    # --- publishing ---------------------------------------------------------------

    def _send(self, channel: str, payload: str) -> None:
        if not self._publish_outage.may_try():
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

    def _open_listener(self) -> PubSub:
        return self._client.pubsub()

    def _channels(self) -> tuple[str, ...]:
        return (*self._kinds, self._control_channel)

    def _subscribe(self, pubsub: PubSub) -> None:
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
                self._deliver_message(message)

    def _pump(self, pubsub: PubSub) -> None:
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
                self._deliver_message(message)
            elif time.monotonic() >= idle_until:
                pubsub.ping()
                idle_until = time.monotonic() + self._health_check_s

    def _deliver_message(self, message: dict[str, object]) -> None:
        if message.get("type") == "message":
            self._deliver(_text(message.get("channel")), _text(message.get("data")))

    # --- closing ------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if not self._listen_outage.is_down:
            with contextlib.suppress(Exception):
                self._client.publish(self._control_channel, "close")

    def close(self) -> None:
        """Stop the reader thread and close its connection; idempotent.

        A client made from a URL is closed too; a client passed in is not.
        Notifications sent after this are dropped; callbacks are not called again.
        """
        if self._stop_reading() and self._owns_client:
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
