"""The asyncio-native PostgreSQL notify adapter: LISTEN/NOTIFY on psycopg's ``AsyncConnection``.

Needs the ``postgres`` extra; import it from here,
``from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify``.

This module owns what is particular to PostgreSQL on asyncio: the publishing
connection and ``pg_notify``, ``LISTEN`` and reading ``notifies()``. The
protocol methods, the sender and reader tasks, reconnection and closing come
from ``EventLoopNotify`` (``_event_loop``); the connection string, the
channel-name limit and the wire format are those of ``PostgresNotify``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from queuert_sa._durations import Duration, as_duration

from ._event_loop import EventLoopNotify
from .postgres import check_channel_prefix, libpq_conninfo

if TYPE_CHECKING:
    from . import AsyncNotifyAdapter

__all__ = ["AsyncPostgresNotify"]

_Conn = psycopg.AsyncConnection[TupleRow]


class AsyncPostgresNotify(EventLoopNotify[_Conn]):
    """PostgreSQL LISTEN/NOTIFY for ``AsyncQueuert``/``AsyncWorker``, without blocking the loop.

    ::

        from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify

        notify = AsyncPostgresNotify(async_engine)     # or a URL
        aqueuert = q.AsyncQueuert(async_engine, job_types, notify=notify)
        ...
        await notify.aclose()                          # at shutdown

    The same channels, payloads and resilience as
    :class:`~queuert_sa.notify.postgres.PostgresNotify` (the two wake each
    other), on two psycopg ``AsyncConnection``\\ s opened on first use:

    * *publish* — ``notify_*`` queues the message and returns at once (it is
      called after COMMIT, on the event loop); a sender task runs
      ``SELECT pg_notify(channel, payload)`` for each, in order.
    * *listen* — opened by the first ``listen_*``; ``LISTEN``\\ s on the three
      channels and is read by a task that calls the callbacks on the loop
      (keep them short). In async code, ``listen_*`` returns at once and
      ``await notify.listening()`` waits until the subscription is active;
      ``AsyncQueuert`` and ``AsyncWorker`` do that for you.

    It runs on the event loop on which it is first used. First used from sync
    code (``Queuert``/``Worker``) it runs a loop of its own on a daemon thread,
    so one adapter may serve both kinds of client.

    Resilience: if the database is unreachable, at start or later, one
    warning is logged per connection and outage; the listener reconnects in
    the background (0.1 s, doubling, at most 5 s apart), LISTENs again and
    then wakes every job-scheduled and chain-completed listener once.
    ``notify_*`` never raises; while the database is down notifications are
    dropped (workers still poll).

    Args:
        url_or_engine, channel_prefix, application_name, connect_timeout, health_check_interval:
            As for ``PostgresNotify``. ``connect_timeout``
            (default 5 seconds) also bounds how long ``listening()`` and
            ``aclose()`` wait.
    """

    _backend = "PostgreSQL"
    _listener_role = "listener"
    _separator = "_"
    _thread_name = "queuert-notify-apostgres"

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine,
        *,
        channel_prefix: str = "queuert",
        application_name: str = "queuert_sa.notify",
        connect_timeout: Duration = dt.timedelta(seconds=5),
        health_check_interval: Duration = dt.timedelta(seconds=30),
    ) -> None:
        connect_timeout = as_duration(connect_timeout, "connect_timeout")
        health_check_interval = as_duration(health_check_interval, "health_check_interval")
        self._conninfo = libpq_conninfo(url_or_engine)
        params = conninfo_to_dict(self._conninfo)  # refuses a malformed string now
        where = f"{params.get('host') or 'local socket'}:{params.get('port') or 5432}"
        where += f"/{params.get('dbname') or params.get('user') or ''}"
        self._connect_timeout = max(2, math.ceil(connect_timeout.total_seconds()))
        super().__init__(
            where=where,
            channel_prefix=channel_prefix,
            connect_timeout_s=self._connect_timeout,
            health_check_interval=health_check_interval,
        )
        check_channel_prefix(channel_prefix, list(self._kinds))
        self.application_name = application_name
        self._publisher: _Conn | None = None

    # --- publishing -----------------------------------------------------------------

    async def _send(self, channel: str, payload: str) -> None:
        if not self._publish_outage.may_try():
            return
        # A connection kept from before an outage fails on first use: retry
        # once on a fresh one rather than drop the notification.
        for _ in range(2):
            reused = self._publisher is not None
            try:
                if self._publisher is None:
                    self._publisher = await self._connect("publish")
                await self._publisher.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            except Exception as exc:
                await self._drop_publisher()
                if reused:
                    continue
                self._publish_outage.failed(exc)
                return
            self._publish_outage.recovered()
            return

    async def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()

    # --- listening ------------------------------------------------------------------

    async def _open_listener(self) -> _Conn:
        return await self._connect("listen")

    async def _subscribe(self, conn: _Conn) -> None:
        for channel in self._kinds:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    async def _pump(self, conn: _Conn) -> None:
        while True:
            # Notifications that arrived while LISTEN ran wait in psycopg's backlog
            # and come first; after a quiet health-check interval, check the line.
            received = False
            generator = conn.notifies(timeout=self._health_check_s)
            async with contextlib.aclosing(generator):
                async for notify in generator:
                    received = True
                    self._deliver(notify.channel, notify.payload)
            if not received:
                await conn.execute("SELECT 1")

    async def _close_listener(self, conn: _Conn) -> None:
        await conn.close()

    async def _connect(self, role: str) -> _Conn:
        return await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=f"{self.application_name} {role}",
            connect_timeout=self._connect_timeout,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )

    # --- closing --------------------------------------------------------------------

    async def _release(self) -> None:
        await self._drop_publisher()


if TYPE_CHECKING:
    _implements_protocol: type[AsyncNotifyAdapter] = AsyncPostgresNotify
