"""The PostgreSQL notify adapter: LISTEN/NOTIFY through psycopg 3.

Needs the ``postgres`` extra (``pip install 'queuert_sa[postgres]'``); import it
from here, ``from queuert_sa.notify.postgres import PostgresNotify``, so that
``queuert_sa.notify`` itself does not require psycopg.

This module owns what is particular to PostgreSQL: the connection string, the
publishing connection, ``LISTEN`` and the ``select()`` loop that reads the
listening connection. The protocol methods, the reader thread and its
reconnection, and the order of ``close()`` come from ``CrossProcessNotify``
(``_cross_process``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from queuert_sa._durations import Duration, as_duration

from ._cross_process import CrossProcessNotify

if TYPE_CHECKING:
    from . import NotifyAdapter

__all__ = ["PostgresNotify"]

# PostgreSQL identifiers (channel names) are at most NAMEDATALEN - 1 bytes.
_MAX_CHANNEL_BYTES = 63

# "postgresql+psycopg://" (SQLAlchemy) -> "postgresql://" (libpq).
_SQLALCHEMY_DRIVER = re.compile(r"^postgres(?:ql)?\+[A-Za-z0-9_]+://")

_WAKE = "wake"


def libpq_conninfo(url_or_engine: str | URL | Engine | AsyncEngine) -> str:
    """A libpq connection string for a SQLAlchemy URL or engine, or a libpq one.

    ``postgresql+psycopg://...`` loses its ``+driver``; a libpq URL or
    ``key=value`` string is returned unchanged; an engine gives its URL with the
    password (the listening connection has to log in too).
    """
    if isinstance(url_or_engine, str):
        return _SQLALCHEMY_DRIVER.sub("postgresql://", url_or_engine, count=1)
    if isinstance(url_or_engine, Engine | AsyncEngine):
        url = url_or_engine.url
    elif isinstance(url_or_engine, URL):  # pyright: ignore[reportUnnecessaryIsInstance]
        url = url_or_engine
    else:
        raise TypeError(
            "PostgresNotify needs a database URL (str or sqlalchemy URL) or a sqlalchemy "
            f"Engine/AsyncEngine, got {type(url_or_engine).__name__}."
        )
    if url.get_backend_name() != "postgresql":
        raise ValueError(
            f"PostgresNotify needs a PostgreSQL database, got {url.get_backend_name()!r}. "
            "On SQLite use InMemoryNotify (one process) or RedisNotify."
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def check_channel_prefix(channel_prefix: str, channels: list[str]) -> None:
    """Refuse a prefix that makes a channel name longer than PostgreSQL allows."""
    longest = max(channels, key=lambda channel: len(channel.encode()))
    if len(longest.encode()) > _MAX_CHANNEL_BYTES:
        limit = _MAX_CHANNEL_BYTES - (len(longest.encode()) - len(channel_prefix.encode()))
        raise ValueError(
            f"channel_prefix {channel_prefix!r} is too long: PostgreSQL channel names "
            f"have at most {_MAX_CHANNEL_BYTES} bytes ({longest!r}); use a prefix of at "
            f"most {limit} bytes."
        )


class PostgresNotify(CrossProcessNotify[psycopg.Connection[TupleRow]]):
    """Notifications through PostgreSQL LISTEN/NOTIFY, across processes and hosts.

    ::

        from queuert_sa.notify.postgres import PostgresNotify

        notify = PostgresNotify(engine)            # or a URL; close() at shutdown
        queuert = q.Queuert(engine, job_types, notify=notify)

    Every process that gives its ``Queuert`` the same database (and the same
    ``channel_prefix``) wakes the others: a worker starts a job committed in
    another process within milliseconds instead of at its next poll.

    Two connections, opened on first use, each in autocommit mode:

    * *publish* — ``notify_*`` runs ``SELECT pg_notify(channel, payload)`` on
      it. queuert calls it after the producing transaction committed, so the
      NOTIFY needs no transaction of its own. Concurrent notifications take
      turns on it.
    * *listen* — opened by the first ``listen_*`` call; ``LISTEN``s on the
      three channels and is read by one daemon thread, which calls the
      callbacks (keep them short: they delay the messages behind them).

    Channels: ``<channel_prefix>_job_scheduled`` (payload
    ``{"type": type_name, "count": n}``), ``<channel_prefix>_chain_completed``
    (payload: the chain id) and ``<channel_prefix>_job_ownership_lost``
    (payload: the job id).

    Resilience: if the database is unreachable, at start or later, one warning
    is logged per connection and outage; the listener reconnects in the
    background (0.1 s, doubling, at most 5 s apart), LISTENs again and then
    wakes every job-scheduled and chain-completed listener once, since
    messages sent meanwhile are lost (ownership-lost listeners are not called:
    a missed one is found by the attempt's next lease renewal).
    ``notify_*`` never raises: while the database is down it drops the
    notification (a hint — workers still poll). A ``listen_*`` call made while
    the database is down returns at once; the subscription takes effect when
    the connection is back.

    Needs a direct (session) connection: LISTEN does not work through a
    transaction-pooling proxy such as PgBouncer in transaction mode.

    Args:
        url_or_engine: A SQLAlchemy ``Engine``/``AsyncEngine`` or URL (the
            ``+psycopg`` driver part is dropped), or a libpq URL or
            ``key=value`` connection string.
        channel_prefix: Start of the channel names (default ``"queuert"``).
            Processes that should wake each other use the same prefix. The
            channel names must fit in 63 bytes, so the prefix has at most 44.
        application_name: Shown in ``pg_stat_activity`` as
            ``"<application_name> listen"`` and ``"<application_name> publish"``
            (default ``"queuert_sa.notify"``).
        connect_timeout: How long one connection attempt may take (default
            5 seconds; libpq counts whole seconds, at least 2). Also how long
            the first ``listen_*`` call waits for the listening connection.
        health_check_interval: After this long without traffic the listening
            connection runs ``SELECT 1``, so a connection that died silently is
            replaced (default 30 seconds). TCP keepalives are on as well.
    """

    _backend = "PostgreSQL"
    _listener_role = "listener"
    _separator = "_"
    _thread_name = "queuert-notify-postgres"

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
            # The reader may be in a connection attempt when close() wakes it.
            reader_join_s=self._connect_timeout + 2,
        )
        check_channel_prefix(channel_prefix, list(self._kinds))
        self.application_name = application_name

        self._publisher: psycopg.Connection[TupleRow] | None = None
        self._publish_lock = threading.Lock()
        # close() writes to _wake_send to end the reader's select() at once.
        self._wake_recv: socket.socket | None = None
        self._wake_send: socket.socket | None = None

    # --- publishing ---------------------------------------------------------------

    def _send(self, channel: str, payload: str) -> None:
        with self._publish_lock:
            if self._closed or not self._publish_outage.may_try():
                return
            # A connection kept from before an outage fails on first use: retry
            # once on a fresh one rather than drop the notification.
            for _ in range(2):
                reused = self._publisher is not None
                try:
                    if self._publisher is None:
                        self._publisher = self._connect("publish")
                    self._publisher.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                except Exception as exc:
                    self._drop_publisher()
                    if reused:
                        continue
                    self._publish_outage.failed(exc)
                    return
                self._publish_outage.recovered()
                return

    def _drop_publisher(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                publisher.close()

    # --- listening ----------------------------------------------------------------

    def _prepare_reader(self) -> None:
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)

    def _open_listener(self) -> psycopg.Connection[TupleRow]:
        return self._connect("listen")

    def _subscribe(self, conn: psycopg.Connection[TupleRow]) -> None:
        for channel in self._kinds:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _pump(self, conn: psycopg.Connection[TupleRow]) -> None:
        assert self._wake_recv is not None
        # One selector per connection: nothing to unregister when it is lost.
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_recv, selectors.EVENT_READ, _WAKE)
            selector.register(conn.fileno(), selectors.EVENT_READ)
            # Notifications that arrived while LISTEN ran wait in psycopg's backlog.
            self._deliver_received(conn)
            idle_until = time.monotonic() + self._health_check_s
            while not self._stop.is_set():
                events = selector.select(max(0.0, idle_until - time.monotonic()))
                if self._stop.is_set():
                    return
                if not events:
                    conn.execute("SELECT 1")
                elif any(k.data == _WAKE for k, _ in events):
                    self._drain_wake()
                self._deliver_received(conn)
                idle_until = time.monotonic() + self._health_check_s

    def _deliver_received(self, conn: psycopg.Connection[TupleRow]) -> None:
        # list() first: the callbacks run after psycopg's read, not in the middle of it.
        for notify in list(conn.notifies(timeout=0)):
            self._deliver(notify.channel, notify.payload)

    def _drain_wake(self) -> None:
        if self._wake_recv is not None:
            with contextlib.suppress(OSError):
                while self._wake_recv.recv(4096):
                    pass

    def _connect(self, role: str) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(
            self._conninfo,
            autocommit=True,
            application_name=f"{self.application_name} {role}",
            connect_timeout=self._connect_timeout,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )

    # --- closing ------------------------------------------------------------------

    def _wake_reader(self) -> None:
        if self._wake_send is not None:
            with contextlib.suppress(OSError):
                self._wake_send.send(b"\0")

    def close(self) -> None:
        """Stop the listener thread and close both connections; idempotent.

        Notifications sent after this are dropped; callbacks are not called again.
        """
        if not self._stop_reading():
            return
        for end in (self._wake_send, self._wake_recv):
            if end is not None:
                end.close()
        with self._publish_lock:
            self._drop_publisher()


if TYPE_CHECKING:
    _implements_protocol: type[NotifyAdapter] = PostgresNotify
