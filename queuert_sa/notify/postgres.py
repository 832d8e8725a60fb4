"""The PostgreSQL notify adapter: LISTEN/NOTIFY through psycopg 3.

Needs the ``postgres`` extra (``pip install 'queuert_sa[postgres]'``); import it
from here, ``from queuert_sa.notify.postgres import PostgresNotify``, so that
``queuert_sa.notify`` itself does not require psycopg.
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
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

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


class PostgresNotify:
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

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine,
        *,
        channel_prefix: str = "queuert",
        application_name: str = "queuert_sa.notify",
        connect_timeout: dt.timedelta = dt.timedelta(seconds=5),
        health_check_interval: dt.timedelta = dt.timedelta(seconds=30),
    ) -> None:
        self._conninfo = libpq_conninfo(url_or_engine)
        params = conninfo_to_dict(self._conninfo)  # refuses a malformed string now
        where = f"{params.get('host') or 'local socket'}:{params.get('port') or 5432}"
        where += f"/{params.get('dbname') or params.get('user') or ''}"
        self._where = where
        #: Channel of job-scheduled notifications.
        self.job_scheduled_channel = f"{channel_prefix}_job_scheduled"
        #: Channel of chain-completed notifications.
        self.chain_completed_channel = f"{channel_prefix}_chain_completed"
        #: Channel of job-ownership-lost notifications.
        self.job_ownership_lost_channel = f"{channel_prefix}_job_ownership_lost"
        self._kinds: dict[str, Kind] = {
            self.job_scheduled_channel: "job_scheduled",
            self.chain_completed_channel: "chain_completed",
            self.job_ownership_lost_channel: "job_ownership_lost",
        }
        longest = max(self._kinds, key=lambda channel: len(channel.encode()))
        if len(longest.encode()) > _MAX_CHANNEL_BYTES:
            limit = _MAX_CHANNEL_BYTES - (len(longest.encode()) - len(channel_prefix.encode()))
            raise ValueError(
                f"channel_prefix {channel_prefix!r} is too long: PostgreSQL channel names "
                f"have at most {_MAX_CHANNEL_BYTES} bytes ({longest!r}); use a prefix of at "
                f"most {limit} bytes."
            )
        self.application_name = application_name
        self._connect_timeout = max(2, math.ceil(connect_timeout.total_seconds()))
        self._health_check_s = health_check_interval.total_seconds()

        self._listeners = Listeners()
        self._lock = threading.Lock()  # _closed and starting the reader
        self._closed = False

        self._publisher: psycopg.Connection[TupleRow] | None = None
        self._publish_lock = threading.Lock()
        self._publish_outage = Outage(f"PostgreSQL notify publisher ({where})")

        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._first_attempt_done = threading.Event()
        self._listen_outage = Outage(f"PostgreSQL notify listener ({where})")
        self._wake_recv: socket.socket | None = None
        self._wake_send: socket.socket | None = None
        self._channel_prefix = channel_prefix

    def __repr__(self) -> str:
        return f"<PostgresNotify {self._where} prefix={self._channel_prefix!r}>"

    def __enter__(self) -> PostgresNotify:
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
        if self._closed or not payload_fits(payload):
            return
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
        """Start the reader on first use; return once its first connection attempt ended.

        After that the LISTENs are in place (or the database is down, and the
        subscription takes effect on reconnection), so a caller that listens
        and then looks for work cannot miss a job committed in between.
        """
        with self._lock:
            if self._closed:
                return
            reader = self._reader
            if reader is None:
                self._wake_recv, self._wake_send = socket.socketpair()
                self._wake_recv.setblocking(False)
                reader = self._reader = threading.Thread(
                    target=self._read_forever,
                    name=f"queuert-notify-postgres[{self._channel_prefix}]",
                    daemon=True,
                )
                reader.start()
        if threading.current_thread() is not reader:
            self._first_attempt_done.wait(self._connect_timeout + 1)

    def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                conn = self._connect("listen")
            except Exception as exc:
                self._listen_outage.failed(exc)
                self._first_attempt_done.set()
                self._stop.wait(backoff.next_delay())
                continue
            try:
                for channel in self._kinds:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
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
                with contextlib.suppress(Exception):
                    conn.close()

    def _pump(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Deliver notifications until stopped; raises when the connection is lost."""
        assert self._wake_recv is not None
        # One selector per connection: nothing to unregister when it is lost.
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_recv, selectors.EVENT_READ, _WAKE)
            selector.register(conn.fileno(), selectors.EVENT_READ)
            # Notifications that arrived while LISTEN ran wait in psycopg's backlog.
            self._deliver(conn.notifies(timeout=0))
            idle_until = time.monotonic() + self._health_check_s
            while not self._stop.is_set():
                events = selector.select(max(0.0, idle_until - time.monotonic()))
                if self._stop.is_set():
                    return
                if not events:
                    conn.execute("SELECT 1")
                elif any(k.data == _WAKE for k, _ in events):
                    self._drain_wake()
                self._deliver(conn.notifies(timeout=0))
                idle_until = time.monotonic() + self._health_check_s

    def _deliver(self, notifies: Iterable[psycopg.Notify]) -> None:
        for notify in list(notifies):
            kind = self._kinds.get(notify.channel)
            if kind is not None:
                deliver(self._listeners, kind, notify.payload)

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

    def close(self) -> None:
        """Stop the listener thread and close both connections; idempotent.

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
            if self._wake_send is not None:
                with contextlib.suppress(OSError):
                    self._wake_send.send(b"\0")
            if reader is not threading.current_thread():
                reader.join(self._connect_timeout + 2)
            for end in (self._wake_send, self._wake_recv):
                if end is not None:
                    end.close()
        with self._publish_lock:
            self._drop_publisher()


if TYPE_CHECKING:
    _implements_protocol: type[NotifyAdapter] = PostgresNotify
