"""Notify adapters survive their backend going away: Redis or NATS killed, PostgreSQL backend ended.

Each scenario runs on the thread-based adapter and on its asyncio-native twin
(through its sync face here; ``test_notify_asyncio`` has the loop's view).

While the backend is down, ``notify_*`` must not raise and one warning is
logged per connection; when it is back the listener subscribes again, wakes
every job-scheduled and chain-completed listener once (messages sent meanwhile
are lost) and delivers again. Ownership-lost listeners are not called on
recovery: their message names a job, and the adapter has none to name.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from queuert_sa.notify import NotifyAdapter
from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify
from queuert_sa.notify.asyncio_redis import AsyncRedisNotify
from queuert_sa.notify.nats import NatsNotify
from queuert_sa.notify.postgres import PostgresNotify
from queuert_sa.notify.redis import RedisNotify

from .conftest import service_unavailable
from .test_notify_conformance import Inbox, eventually, postgres_conninfo, unique_prefix

__all__ = ["postgres_conninfo"]  # a fixture, imported to be used here

RECOVERY_TIMEOUT_S = 10.0

redis_classes = pytest.mark.parametrize("redis_cls", [RedisNotify, AsyncRedisNotify])
postgres_classes = pytest.mark.parametrize("pg_cls", [PostgresNotify, AsyncPostgresNotify])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delivered_again(producer: NotifyAdapter, inbox: Inbox, type_name: str, count: int) -> bool:
    """Notify repeatedly until the listener hears it: a notification sent before
    the listener resubscribed is lost, which is allowed."""

    def attempt() -> bool:
        producer.notify_job_scheduled(type_name, count)
        return inbox.wait_for(type_name, count, timeout=0.2)

    return eventually(attempt, timeout=RECOVERY_TIMEOUT_S)


def ownership_delivered_but_not_made_up(producer: NotifyAdapter, lost: Inbox) -> bool:
    """After recovery (``delivered_again`` returned): the ownership listener heard no
    made-up message during the wake-up, and hears a real one again.

    The wake-up ran on the reader thread before the message ``delivered_again``
    waited for, so a made-up call would be in ``lost.calls`` already."""
    if lost.calls:
        return False
    job_id = uuid.uuid4()
    producer.notify_job_ownership_lost(job_id)
    return lost.wait_for(job_id) and lost.calls == [(job_id,)]


def failures_logged(caplog: pytest.LogCaptureFixture, connection: str) -> int:
    """How many failed attempts of ``connection`` were logged, at any level."""
    return sum(
        connection in r.getMessage() and "unavailable" in r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.notify"
    )


def fail_repeatedly(caplog: pytest.LogCaptureFixture, producer: NotifyAdapter, reader: str) -> None:
    """Keep the backend down until the reader and the publisher each failed three times."""
    assert eventually(lambda: failures_logged(caplog, reader) >= 3, RECOVERY_TIMEOUT_S)

    def publish() -> bool:
        producer.notify_job_scheduled("t", 5)  # must not raise
        return failures_logged(caplog, "publisher") >= 3

    # A NATS publisher first fails on a flush timeout (seconds), then on each reconnect.
    assert eventually(publish, RECOVERY_TIMEOUT_S)


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.notify" and r.levelno == logging.WARNING
    ]


class RedisServer:
    """A private ``redis-server`` on a fixed port that a test can kill and restart."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tmp_path
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            assert eventually(lambda: self._pings(client), timeout=5), "redis-server did not start"
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server", "the binary is not on PATH")
    server = RedisServer(tmp_path)
    yield server
    server.kill()


@redis_classes
def test_redis_down_at_start_then_up(
    redis_cls: type[RedisNotify | AsyncRedisNotify],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prefix = unique_prefix()
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    with (
        redis_cls(redis_server.url, channel_prefix=prefix) as listener,
        redis_cls(redis_server.url, channel_prefix=prefix) as producer,
    ):
        inbox, lost = Inbox(), Inbox()
        started = time.monotonic()
        listener.listen_job_scheduled(["t"], inbox)
        listener.listen_job_ownership_lost(lost)
        for _ in range(20):
            producer.notify_job_scheduled("t", 1)
            producer.notify_job_ownership_lost(uuid.uuid4())
        assert time.monotonic() - started < 2, (
            "listen/notify must not wait for a server that is down"
        )
        fail_repeatedly(caplog, producer, "subscriber")

        redis_server.start()
        assert inbox.wait_for("t", 1, timeout=RECOVERY_TIMEOUT_S), "no wake-up on connection"
        assert delivered_again(producer, inbox, "t", 7)
        assert ownership_delivered_but_not_made_up(producer, lost)

    warnings = outage_warnings(caplog)
    assert len(warnings) == 2, warnings  # one for the subscriber, one for the publisher
    assert any("subscriber" in w for w in warnings)
    assert any("publisher" in w for w in warnings)


@redis_classes
def test_redis_killed_and_restarted(
    redis_cls: type[RedisNotify | AsyncRedisNotify],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_server.start()
    prefix = unique_prefix()
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    with (
        redis_cls(redis_server.url, channel_prefix=prefix) as listener,
        redis_cls(redis_server.url, channel_prefix=prefix) as producer,
    ):
        inbox, chain_inbox, lost = Inbox(), Inbox(), Inbox()
        chain_id = uuid.uuid4()
        listener.listen_job_scheduled(["t"], inbox)
        listener.listen_chain_completed(chain_id, chain_inbox)
        listener.listen_job_ownership_lost(lost)
        producer.notify_job_scheduled("t", 3)
        assert inbox.wait_for("t", 3)

        redis_server.kill()
        producer.notify_chain_completed(chain_id)  # must not raise
        producer.notify_job_ownership_lost(uuid.uuid4())  # must not raise
        fail_repeatedly(caplog, producer, "subscriber")
        redis_server.start()

        # Back: every listener is woken once (what was sent meanwhile is lost) ...
        assert inbox.wait_for("t", 1, timeout=RECOVERY_TIMEOUT_S)
        assert chain_inbox.wait_for(chain_id)
        # ... and new notifications arrive again.
        assert delivered_again(producer, inbox, "t", 7)
        assert ownership_delivered_but_not_made_up(producer, lost)

    warnings = outage_warnings(caplog)
    assert len(warnings) == 2, warnings  # once per connection, not once per failure


@postgres_classes
def test_postgres_listener_reconnects_after_its_backend_is_terminated(
    pg_cls: type[PostgresNotify | AsyncPostgresNotify],
    postgres_conninfo: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"qt-notify-{uuid.uuid4().hex[:8]}"
    prefix = unique_prefix()
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    with (
        pg_cls(postgres_conninfo, channel_prefix=prefix, application_name=name) as listener,
        pg_cls(postgres_conninfo, channel_prefix=prefix) as producer,
    ):
        inbox, chain_inbox, lost = Inbox(), Inbox(), Inbox()
        chain_id = uuid.uuid4()
        listener.listen_job_scheduled(["t"], inbox)
        listener.listen_chain_completed(chain_id, chain_inbox)
        listener.listen_job_ownership_lost(lost)
        producer.notify_job_scheduled("t", 3)
        assert inbox.wait_for("t", 3)

        with psycopg.connect(postgres_conninfo, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"{name} listen",),
            ).fetchall()
        assert ended == [(True,)]

        assert inbox.wait_for("t", 1, timeout=RECOVERY_TIMEOUT_S), "no wake-up after reconnecting"
        assert chain_inbox.wait_for(chain_id)
        assert delivered_again(producer, inbox, "t", 7)
        assert ownership_delivered_but_not_made_up(producer, lost)

    warnings = outage_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "listener" in warnings[0]


@postgres_classes
def test_postgres_down_at_start_does_not_block_or_raise(
    pg_cls: type[PostgresNotify | AsyncPostgresNotify], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()
    with pg_cls(url, channel_prefix=unique_prefix()) as notify:
        notify.listen_job_scheduled(["t"], Inbox())
        notify.listen_chain_completed(uuid.uuid4(), Inbox())
        notify.listen_job_ownership_lost(Inbox())
        for _ in range(20):
            notify.notify_job_scheduled("t", 1)
            notify.notify_chain_completed(uuid.uuid4())
            notify.notify_job_ownership_lost(uuid.uuid4())
        assert time.monotonic() - started < 2
        fail_repeatedly(caplog, notify, "listener")
    warnings = outage_warnings(caplog)
    assert len(warnings) == 2, warnings  # listener and publisher, once each


@postgres_classes
def test_postgres_publisher_replaces_a_dead_connection_without_losing_a_notification(
    pg_cls: type[PostgresNotify | AsyncPostgresNotify],
    postgres_conninfo: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"qt-notify-{uuid.uuid4().hex[:8]}"
    prefix = unique_prefix()
    caplog.set_level(logging.WARNING, logger="queuert_sa.notify")
    with (
        pg_cls(postgres_conninfo, channel_prefix=prefix) as listener,
        pg_cls(postgres_conninfo, channel_prefix=prefix, application_name=name) as producer,
    ):
        inbox = Inbox()
        listener.listen_job_scheduled(["t"], inbox)
        producer.notify_job_scheduled("t", 1)
        assert inbox.wait_for("t", 1)

        with psycopg.connect(postgres_conninfo, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"{name} publish",),
            ).fetchall()
        assert ended == [(True,)]

        producer.notify_job_scheduled("t", 2)  # once: on a fresh connection, not dropped
        assert inbox.wait_for("t", 2)
    assert outage_warnings(caplog) == []


# --- NatsNotify -------------------------------------------------------------------------


class NatsServer:
    """A private ``nats-server`` (JetStream on) on a fixed port that a test can kill and restart."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._dir = tmp_path / "nats"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self._process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self._dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert eventually(self._greets, timeout=10), "nats-server did not start"

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.settimeout(1)
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def kill(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        service_unavailable("nats-server", "the binary is not on PATH")
    server = NatsServer(tmp_path)
    yield server
    server.kill()


nats_hints = pytest.mark.parametrize("hints", [False, True], ids=["plain", "hints"])


@nats_hints
def test_nats_down_at_start_then_up(
    hints: bool, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    with (
        NatsNotify(nats_server.url, channel_prefix=prefix, wake_hints=hints) as listener,
        NatsNotify(nats_server.url, channel_prefix=prefix, wake_hints=hints) as producer,
    ):
        inbox, lost = Inbox(), Inbox()
        started = time.monotonic()
        listener.listen_job_scheduled(["t"], inbox)
        listener.listen_job_ownership_lost(lost)
        for _ in range(20):
            producer.notify_job_scheduled("t", 1)
            producer.notify_job_ownership_lost(uuid.uuid4())
        assert time.monotonic() - started < 2, (
            "listen/notify must not wait for a server that is down"
        )
        fail_repeatedly(caplog, producer, "subscriber")

        nats_server.start()
        assert inbox.wait_for("t", 1, timeout=RECOVERY_TIMEOUT_S), "no wake-up on connection"
        assert delivered_again(producer, inbox, "t", 7)
        assert ownership_delivered_but_not_made_up(producer, lost)

    warnings = outage_warnings(caplog)
    assert len(warnings) == 2, warnings  # one for the subscriber, one for the publisher
    assert any("subscriber" in w for w in warnings)
    assert any("publisher" in w for w in warnings)


@nats_hints
def test_nats_killed_and_restarted(
    hints: bool, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    nats_server.start()
    prefix = unique_prefix()
    caplog.set_level(logging.DEBUG, logger="queuert_sa.notify")
    with (
        NatsNotify(nats_server.url, channel_prefix=prefix, wake_hints=hints) as listener,
        NatsNotify(nats_server.url, channel_prefix=prefix, wake_hints=hints) as producer,
    ):
        inbox, chain_inbox, lost = Inbox(), Inbox(), Inbox()
        chain_id = uuid.uuid4()
        listener.listen_job_scheduled(["t"], inbox)
        listener.listen_chain_completed(chain_id, chain_inbox)
        listener.listen_job_ownership_lost(lost)
        producer.notify_job_scheduled("t", 3)
        assert inbox.wait_for("t", 3)

        nats_server.kill()
        producer.notify_chain_completed(chain_id)  # must not raise
        producer.notify_job_ownership_lost(uuid.uuid4())  # must not raise
        fail_repeatedly(caplog, producer, "subscriber")
        nats_server.start()

        # Back: every listener is woken once (what was sent meanwhile is lost) ...
        assert inbox.wait_for("t", 1, timeout=RECOVERY_TIMEOUT_S)
        assert chain_inbox.wait_for(chain_id)
        # ... and new notifications arrive again.
        assert delivered_again(producer, inbox, "t", 7)
        assert ownership_delivered_but_not_made_up(producer, lost)

    warnings = outage_warnings(caplog)
    assert len(warnings) == 2, warnings  # once per connection role, not once per failure
