"""The NATS notify adapter: core NATS subjects, optional JetStream key-value wake hints.

Needs the ``nats`` extra (``pip install 'queuert_sa[nats]'``, which brings
``nats-py``); import it from here, ``from queuert_sa.notify.nats import
NatsNotify``, so that ``queuert_sa.notify`` itself does not require nats-py.

This module owns what is particular to NATS: the connection (the adapter's
own, or the caller's), one wildcard subscription read in order, ``flush()``
after subscribing and after sending, and the wake hints (``_wake_hints``).
The protocol methods, the sender and reader tasks, reconnection and closing
come from ``EventLoopNotify`` (``_event_loop``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from queuert_sa._durations import Duration, as_duration
from queuert_sa._logs import get_logger

from ._cross_process import decode_job_scheduled
from ._event_loop import EventLoopNotify
from ._wake_hints import WakeHints, new_hint_id

if TYPE_CHECKING:
    from . import AsyncNotifyAdapter

__all__ = ["NatsNotify"]

log = get_logger("queuert_sa.notify")

# Subject tokens: no whitespace, no wildcards, no empty token.
_PREFIX = re.compile(r"^[^\s.*>]+(?:\.[^\s.*>]+)*$")


class _Subscriber(Protocol):
    """``Client.subscribe`` as used here (its ``future`` parameter is not fully annotated)."""

    async def subscribe(
        self, subject: str, *, cb: Callable[[Msg], Awaitable[None]]
    ) -> NatsSubscription: ...


#: The listening connection: the client and the adapter's subscription on it.
_Listening = tuple[NatsClient, NatsSubscription]

# How often the reader looks at the connection's state (NATS reports a lost
# connection to the client, which reconnects or closes; the reader follows).
_STATE_CHECK_S = 0.1


class NatsNotify(EventLoopNotify[_Listening]):
    """Notifications through core NATS, across processes and hosts; asyncio-native.

    ::

        from queuert_sa.notify.nats import NatsNotify

        notify = NatsNotify("nats://localhost:4222", wake_hints=True)  # close() at shutdown
        queuert = q.Queuert(engine, job_types, notify=notify)          # or AsyncQueuert

    Subjects: ``<channel_prefix>.job_scheduled`` (payload
    ``{"type": type_name, "count": n}``, as for the PostgreSQL and Redis
    adapters), ``<channel_prefix>.chain_completed`` (the chain id) and
    ``<channel_prefix>.job_ownership_lost`` (the job id). Core NATS only:
    whoever is not subscribed when a message is published misses it, which is
    fine for hints (workers poll). The listener is one subscription to
    ``<channel_prefix>.*``, so messages arrive in the order they were sent.
    ``listen_*`` returns (``listening()``, in async code) once the server has
    the subscription: the adapter flushes after subscribing.

    ``notify_*`` queue the message and return at once; a task publishes them
    in order and flushes when the queue is empty. It is an
    :class:`~queuert_sa.notify.AsyncNotifyAdapter`: it runs on the event loop
    on which it is first used, or, first used from sync code (``Queuert``,
    ``Worker``), on a loop of its own on a daemon thread.

    Wake hints (``wake_hints=True``) keep N idle worker processes from all
    querying the database for one job. A producer with hints gives each
    job-scheduled message a random id, which stands for ``count`` tickets in a
    JetStream key-value bucket; a listening process tries to create the
    tickets' keys and wakes its workers once per key it created, so each job
    wakes one process (creating a key that exists fails). That costs the
    listener one key-value round trip and the producer none. Keys are
    ``<hex of the prefix>.<hex of the type name>.<id>.<n>``, so any type name
    is a valid key. If the bucket cannot be reached, or the producer has no
    hints, every listener wakes (the database sorts it out). A process wakes
    as many slots as it won tickets, so one that wins more than it has idle
    slots leaves the rest to its busy slots (which look again when they
    finish) and to polling. The bucket is created when missing, with
    ``wake_hint_ttl`` as its TTL (tickets expire with it); create it yourself
    to choose other settings.

    Resilience: if NATS is unreachable, at start or later, one warning is
    logged per connection role and outage; the adapter's own connection is
    replaced in the background (0.1 s, doubling, at most 5 s apart), and after
    an outage every job-scheduled and chain-completed listener is woken once.
    A connection passed in reconnects as the caller configured it; the adapter
    follows its state and subscribes again when it is back. ``notify_*``
    never raises; while NATS is down notifications are dropped.

    Args:
        servers_or_connection: A server URL or list of URLs (default
            ``"nats://127.0.0.1:4222"``), for which the adapter opens, owns and
            closes one connection; or a connected ``nats.aio.client.Client``,
            which ``close()`` leaves open (the adapter then runs on the event
            loop of its first use, which must be the connection's).
        channel_prefix: First subject token(s) (default ``"queuert"``).
            Processes that should wake each other use the same prefix.
        wake_hints: Use JetStream key-value wake hints (default False). Needs
            a server with JetStream enabled.
        wake_hint_bucket: The key-value bucket of the hints (default
            ``"queuert_wake_hints"``).
        wake_hint_ttl: TTL of a bucket the adapter creates (default 60 seconds).
        connect_timeout: How long one connection attempt may take (default 5
            seconds). Also how long ``listen_*`` waits for the subscription.
        health_check_interval: The adapter's own connection pings the server
            after this long (default 30 seconds), so a connection that died
            silently is replaced.
    """

    _backend = "NATS"
    _listener_role = "subscriber"
    _separator = "."
    _thread_name = "queuert-notify-nats"

    def __init__(
        self,
        servers_or_connection: str | list[str] | NatsClient = "nats://127.0.0.1:4222",
        *,
        channel_prefix: str = "queuert",
        wake_hints: bool = False,
        wake_hint_bucket: str = "queuert_wake_hints",
        wake_hint_ttl: Duration = dt.timedelta(seconds=60),
        connect_timeout: Duration = dt.timedelta(seconds=5),
        health_check_interval: Duration = dt.timedelta(seconds=30),
    ) -> None:
        connect_timeout = as_duration(connect_timeout, "connect_timeout")
        health_check_interval = as_duration(health_check_interval, "health_check_interval")
        wake_hint_ttl = as_duration(wake_hint_ttl, "wake_hint_ttl")
        if not _PREFIX.match(channel_prefix):
            raise ValueError(
                f"channel_prefix {channel_prefix!r} is not a NATS subject prefix: use tokens "
                "without spaces, '*' or '>', joined by single dots."
            )
        self._given: NatsClient | None = None
        self._servers: list[str] = []
        if isinstance(servers_or_connection, NatsClient):
            self._given = servers_or_connection
            where = "the caller's connection"
        elif isinstance(servers_or_connection, str):
            self._servers = [servers_or_connection]
            where = servers_or_connection
        elif isinstance(servers_or_connection, list):  # pyright: ignore[reportUnnecessaryIsInstance]
            self._servers = list(servers_or_connection)
            where = ",".join(self._servers)
        else:
            raise TypeError(
                "NatsNotify needs a nats:// URL, a list of them or a nats.aio.client.Client, "
                f"got {type(servers_or_connection).__name__}."
            )
        self._timeout_s = connect_timeout.total_seconds()
        super().__init__(
            where=where,
            channel_prefix=channel_prefix,
            connect_timeout_s=self._timeout_s,
            health_check_interval=health_check_interval,
        )
        self._wildcard = f"{channel_prefix}.*"
        self._owned: NatsClient | None = None
        self._connecting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._listening_on: NatsClient | None = None
        self._hints = (
            WakeHints(channel_prefix, wake_hint_bucket, wake_hint_ttl) if wake_hints else None
        )

    # --- the connection -------------------------------------------------------------

    async def _connection(self) -> NatsClient:
        """The connected client: the caller's, or the adapter's own (opened when needed)."""
        if self._given is not None:
            if not self._given.is_connected:
                raise ConnectionError("the NATS connection passed to NatsNotify is not connected")
            return self._given
        if self._owned is not None and self._owned.is_connected:
            return self._owned
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting[0] is not loop:
            self._connecting = (loop, asyncio.Lock())  # the reader and the sender may both ask
        async with self._connecting[1]:
            if self._owned is not None and self._owned.is_connected:
                return self._owned
            stale, self._owned = self._owned, None
            if stale is not None and not stale.is_closed:
                await _close_quietly(stale)
            self._owned = NatsClient()
            await self._owned.connect(
                self._servers,
                name="queuert_sa.notify",
                connect_timeout=max(1, math.ceil(self._timeout_s)),
                # The adapter replaces a lost connection on its own backoff: the
                # client neither reconnects nor retries a failed connect (beyond
                # a second immediate try, the least nats-py allows).
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                ping_interval=max(1, math.ceil(self._health_check_s)),
                max_outstanding_pings=2,
                error_cb=_log_client_error,
            )
            return self._owned

    # --- publishing -----------------------------------------------------------------

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        if self._hints is None:
            super().notify_job_scheduled(type_name, count)
            return
        # The id names the message's wake tickets (see _wake_hints).
        payload = {"type": type_name, "count": count, "hint": new_hint_id()}
        self._publish(self.job_scheduled_channel, json.dumps(payload, ensure_ascii=False))

    async def _send(self, channel: str, payload: str) -> None:
        if not self._publish_outage.may_try():
            return
        try:
            nc = await self._connection()
            await nc.publish(channel, payload.encode())
        except Exception as exc:
            self._publish_outage.failed(exc)
            return
        self._publish_outage.recovered()

    async def _sent_all(self) -> None:
        nc = self._given or self._owned
        if nc is None or not nc.is_connected:
            return
        try:
            await nc.flush(max(1, math.ceil(self._timeout_s)))
        except Exception as exc:
            self._publish_outage.failed(exc)

    # --- listening ------------------------------------------------------------------

    async def _open_listener(self) -> _Listening:
        nc = await self._connection()
        self._listening_on = nc
        subscription = await cast("_Subscriber", nc).subscribe(self._wildcard, cb=self._on_message)
        return nc, subscription

    async def _subscribe(self, conn: _Listening) -> None:
        # The SUB is processed once the server answered the PING of flush().
        await conn[0].flush(max(1, math.ceil(self._timeout_s)))
        if self._hints is not None:
            await self._hints.ready(conn[0])

    async def _pump(self, conn: _Listening) -> None:
        nc = conn[0]
        reconnects = nc.stats["reconnects"]
        while nc.is_connected and nc.stats["reconnects"] == reconnects:
            await asyncio.sleep(_STATE_CHECK_S)
        raise ConnectionError("the NATS connection was lost")

    async def _on_message(self, msg: Msg) -> None:
        payload = msg.data.decode("utf-8", "replace")
        nc = self._listening_on
        if self._hints is not None and nc is not None and msg.subject == self.job_scheduled_channel:
            scheduled = decode_job_scheduled(payload)
            hint_id = _hint_id(payload)
            if scheduled is not None and hint_id is not None:
                type_name, count = scheduled
                # Only a process that listens to the type claims its tickets.
                if self._listeners.listens_to(type_name):
                    won = await self._hints.claim(nc, type_name, count, hint_id)
                    if won > 0:
                        self._listeners.job_scheduled(type_name, won)
                return
        self._deliver(msg.subject, payload)

    async def _close_listener(self, conn: _Listening) -> None:
        await conn[1].unsubscribe()

    # --- closing --------------------------------------------------------------------

    async def _release(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            await _close_quietly(owned)


def _hint_id(payload: str) -> str | None:
    """The wake-ticket id of a job-scheduled payload (a producer with hints); None if none."""
    try:
        data = cast("object", json.loads(payload))
    except ValueError:
        return None
    hint = cast("dict[str, object]", data).get("hint") if isinstance(data, dict) else None
    return hint if isinstance(hint, str) and hint.isalnum() else None


async def _close_quietly(nc: NatsClient) -> None:
    try:
        await nc.close()
    except Exception:
        log.debug("closing a NATS connection failed", exc_info=True)


async def _log_client_error(error: Exception) -> None:
    # The adapter reports outages itself (once each); the client's own errors are details.
    log.debug("NATS client: %s: %s", type(error).__name__, error)


if TYPE_CHECKING:
    _implements_protocol: type[AsyncNotifyAdapter] = NatsNotify
