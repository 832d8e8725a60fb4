"""The asyncio-native Redis notify adapter: pub/sub through ``redis.asyncio``.

Needs the ``redis`` extra; import it from here,
``from queuert_sa.notify.asyncio_redis import AsyncRedisNotify``.

This module owns what is particular to Redis on asyncio: the client,
``PUBLISH``, and the pub/sub connection that subscribes, waits for Redis's
confirmation and is read with a timeout. The protocol methods, the sender and
reader tasks, reconnection and closing come from ``EventLoopNotify``
(``_event_loop``); channels and payloads are those of ``RedisNotify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

import redis.asyncio as aredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from queuert_sa._durations import Duration, as_duration

from ._event_loop import EventLoopNotify

if TYPE_CHECKING:
    from . import AsyncNotifyAdapter

__all__ = ["AsyncRedisNotify"]


class _Client(Protocol):
    """The part of ``redis.asyncio.Redis`` used here (its annotations leave ``**kwargs`` untyped)."""

    async def publish(self, channel: str, message: str) -> int: ...
    def pubsub(self) -> PubSub: ...
    async def aclose(self) -> None: ...


class _PubSubOps(Protocol):
    """The part of ``PubSub`` used here whose annotations are incomplete."""

    def ping(self) -> Awaitable[object]: ...
    async def aclose(self) -> None: ...


class AsyncRedisNotify(EventLoopNotify[PubSub]):
    """Redis pub/sub for ``AsyncQueuert``/``AsyncWorker``, without blocking the loop.

    ::

        from queuert_sa.notify.asyncio_redis import AsyncRedisNotify

        notify = AsyncRedisNotify("redis://localhost:6379/0")  # or a redis.asyncio.Redis
        aqueuert = q.AsyncQueuert(async_engine, job_types, notify=notify)
        ...
        await notify.aclose()                                  # at shutdown

    The same channels, payloads and resilience as
    :class:`~queuert_sa.notify.redis.RedisNotify` (the two wake each other).
    ``notify_*`` queues the message and returns at once; a sender task
    ``PUBLISH``\\ es them in order. The first ``listen_*`` starts a reader task
    that ``SUBSCRIBE``\\ s one pub/sub connection, waits for Redis to confirm
    and calls the callbacks on the loop (keep them short). In async code,
    ``listen_*`` returns at once and ``await notify.listening()`` waits until
    the subscription is active; ``AsyncQueuert`` and ``AsyncWorker`` do that
    for you.

    It runs on the event loop on which it is first used. First used from sync
    code it runs a loop of its own on a daemon thread.

    Resilience: if Redis is unreachable, at start or later, one warning is
    logged per connection and outage; the reader reconnects in the background
    (0.1 s, doubling, at most 5 s apart), subscribes again and then wakes
    every job-scheduled and chain-completed listener once. ``notify_*`` never
    raises; while Redis is down notifications are dropped (workers still poll).

    Args:
        client_or_url: A ``redis.asyncio.Redis`` client (used as configured
            and not closed by ``aclose()``; it belongs to the event loop it is
            used on, so use the adapter on that loop), or a URL such as
            ``redis://host:6379/0``, for which the adapter makes and owns a
            client, on its loop, that does not retry on its own.
        channel_prefix: Start of the channel names (default ``"queuert"``).
        connect_timeout: For a client made from a URL, how long connecting and
            each command may take (default 5 seconds). Also how long
            ``listening()`` waits for Redis to confirm the subscription.
        health_check_interval: After this long without traffic the reader
            sends ``PING`` (default 30 seconds).
    """

    _backend = "Redis"
    _listener_role = "subscriber"
    _separator = ":"
    _thread_name = "queuert-notify-aredis"

    def __init__(
        self,
        client_or_url: aredis.Redis | str,
        *,
        channel_prefix: str = "queuert",
        connect_timeout: Duration = dt.timedelta(seconds=5),
        health_check_interval: Duration = dt.timedelta(seconds=30),
    ) -> None:
        connect_timeout = as_duration(connect_timeout, "connect_timeout")
        health_check_interval = as_duration(health_check_interval, "health_check_interval")
        self._timeout_s = connect_timeout.total_seconds()
        self._url: str | None = None
        self._client: _Client | None = None
        if isinstance(client_or_url, str):
            self._url = client_or_url
            if urlsplit(client_or_url).scheme not in ("redis", "rediss", "unix"):
                raise ValueError(
                    f"AsyncRedisNotify needs a redis://, rediss:// or unix:// URL, got "
                    f"{client_or_url!r}."
                )
            kwargs = _url_fields(client_or_url)
        elif isinstance(client_or_url, aredis.Redis):  # pyright: ignore[reportUnnecessaryIsInstance]
            self._client = cast("_Client", client_or_url)
            kwargs = cast("dict[str, object]", client_or_url.connection_pool.connection_kwargs)
        else:
            raise TypeError(
                "AsyncRedisNotify needs a redis.asyncio.Redis client or a redis:// URL, got "
                f"{type(client_or_url).__name__}."
            )
        where = (
            kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        )
        super().__init__(
            where=f"{where}/{kwargs.get('db', 0)}",
            channel_prefix=channel_prefix,
            connect_timeout_s=self._timeout_s,
            health_check_interval=health_check_interval,
        )

    def _redis(self) -> _Client:
        """The client; one made from the URL is made on first use, on the adapter's loop."""
        if self._client is None:
            assert self._url is not None
            self._client = cast(
                "_Client",
                aredis.from_url(
                    self._url,
                    socket_connect_timeout=self._timeout_s,
                    socket_timeout=self._timeout_s,
                    retry=Retry(NoBackoff(), 0),
                ),
            )
        return self._client

    # --- publishing -----------------------------------------------------------------

    async def _send(self, channel: str, payload: str) -> None:
        if not self._publish_outage.may_try():
            return
        # A pooled connection kept from before an outage fails on first use:
        # retry once (on a fresh connection) rather than drop the notification.
        attempts = 1 if self._publish_outage.is_down else 2
        for attempt in range(1, attempts + 1):
            try:
                await self._redis().publish(channel, payload)
            except Exception as exc:
                if attempt == attempts:
                    self._publish_outage.failed(exc)
                continue
            self._publish_outage.recovered()
            return

    # --- listening ------------------------------------------------------------------

    async def _open_listener(self) -> PubSub:
        return self._redis().pubsub()

    async def _subscribe(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(*self._kinds)
        pending = set(self._kinds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("Redis did not confirm the SUBSCRIBE in time")
            message = await _read(pubsub, remaining)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                pending.discard(_text(message.get("channel")))
            else:
                self._deliver_message(message)

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + self._health_check_s
        while True:
            message = await _read(pubsub, max(0.0, idle_until - loop.time()))
            if message is not None:
                idle_until = loop.time() + self._health_check_s
                self._deliver_message(message)
            elif loop.time() >= idle_until:
                await cast("_PubSubOps", pubsub).ping()
                idle_until = loop.time() + self._health_check_s

    def _deliver_message(self, message: dict[str, object]) -> None:
        if message.get("type") == "message":
            self._deliver(_text(message.get("channel")), _text(message.get("data")))

    async def _close_listener(self, pubsub: PubSub) -> None:
        await cast("_PubSubOps", pubsub).aclose()

    # --- closing --------------------------------------------------------------------

    async def _release(self) -> None:
        if self._url is not None and self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()


def _url_fields(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return {"path": parts.path}
    db = parts.path.strip("/") or "0"
    return {"host": parts.hostname or "localhost", "port": parts.port or 6379, "db": db}


async def _read(pubsub: PubSub, timeout: float) -> dict[str, object] | None:
    return cast("dict[str, object] | None", await pubsub.get_message(timeout=timeout))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


if TYPE_CHECKING:
    _implements_protocol: type[AsyncNotifyAdapter] = AsyncRedisNotify
