"""One conformance suite for every notify adapter: in-memory, PostgreSQL, Redis, NATS.

The asyncio-native adapters (``AsyncPostgresNotify``, ``AsyncRedisNotify``,
``NatsNotify`` with and without wake hints) run it through their sync face
(a loop of their own on a thread); ``test_notify_asyncio`` runs the promises
again from an event loop.

Each test states a promise of the ``NotifyAdapter`` protocol and runs on every
adapter. Remote adapters are tested as two instances (a producer and a
listener), which is how processes use them; one test runs the producer in a
separate process.

Absence of a delivery is checked without sleeping: each adapter delivers one
message after another on one thread, in the order they were sent, so once a
later "sentinel" message has arrived, an earlier message that should not have
been delivered would have arrived already.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url

from queuert_sa.notify import InMemoryNotify, NotifyAdapter
from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify
from queuert_sa.notify.asyncio_redis import AsyncRedisNotify
from queuert_sa.notify.nats import NatsNotify
from queuert_sa.notify.postgres import PostgresNotify, libpq_conninfo
from queuert_sa.notify.redis import RedisNotify
from queuert_sa.testing import RecordingNotify

from .conftest import NATS_URL, POSTGRES_URL, REDIS_URL, service_unavailable

ROOT = Path(__file__).resolve().parent.parent

#: How long a delivery may take before the test fails (generous: CI machines).
DELIVERY_TIMEOUT_S = 5.0


class Inbox:
    """A listener callback that records its calls; ``wait_for`` blocks until one arrived."""

    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[object, ...]] = []
        self._cond = threading.Condition()
        self._fail = fail

    def __call__(self, *args: object) -> None:
        with self._cond:
            self.calls.append(args)
            self._cond.notify_all()
        if self._fail:
            raise RuntimeError("this listener fails on purpose")

    def wait_for(self, *call: object, timeout: float = DELIVERY_TIMEOUT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: call in self.calls, timeout)


@pytest.fixture(scope="session")
def postgres_conninfo() -> str:
    """libpq connection string of the test server; skips (or fails, in CI) when it is down."""
    conninfo = libpq_conninfo(POSTGRES_URL)
    try:
        psycopg.connect(conninfo, connect_timeout=3).close()
    except psycopg.Error as exc:
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    return conninfo


def eventually(condition: Callable[[], bool], timeout: float = DELIVERY_TIMEOUT_S) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        pause.wait(0.05)
    return condition()


def unique_prefix() -> str:
    """Channel prefix of one test: concurrent runs on one server do not hear each other."""
    return f"qt_{uuid.uuid4().hex[:12]}"


@dataclass
class Backend:
    """Makes adapters of one kind that talk to each other (same server and prefix)."""

    kind: str
    make_on: Callable[[str], NotifyAdapter]
    prefix: str
    made: list[NotifyAdapter] = field(default_factory=list[NotifyAdapter])

    @property
    def remote(self) -> bool:
        return self.kind not in ("memory", "recording")

    def make(self) -> NotifyAdapter:
        return self.make_on(self.prefix)

    def pair(self) -> tuple[NotifyAdapter, NotifyAdapter]:
        """(producer, listener): two instances, as in two processes; one for in-memory.

        With wake hints, listening processes share out each job: a listener of
        an earlier pair would take the hint of a later one. Each pair then
        has a prefix of its own (which later ``make()`` calls join).
        """
        if self.kind == "nats-hints":
            self.prefix = unique_prefix()
        producer = self.make()
        return producer, (self.make() if self.remote else producer)


#: Every adapter kind of the suite; the remote ones talk through a server.
KINDS = [
    "memory",
    "recording",
    "postgres",
    "redis",
    "postgres-async",
    "redis-async",
    "nats",
    "nats-hints",
]
REMOTE_KINDS = KINDS[2:]


def make_adapter(kind: str, request: pytest.FixtureRequest, prefix: str) -> NotifyAdapter:
    """An adapter of ``kind`` on the test servers, on channel ``prefix``."""
    if kind == "memory":
        return InMemoryNotify()
    if kind == "recording":
        return RecordingNotify()
    if kind.startswith("postgres"):
        conninfo: str = request.getfixturevalue("postgres_conninfo")
        cls = AsyncPostgresNotify if kind.endswith("-async") else PostgresNotify
        return cls(conninfo, channel_prefix=prefix)
    if kind.startswith("redis"):
        url: str = request.getfixturevalue("redis_url")
        if kind.endswith("-async"):
            return AsyncRedisNotify(url, channel_prefix=prefix)
        return RedisNotify(url, channel_prefix=prefix)
    nats_url: str = request.getfixturevalue("nats_url")
    return NatsNotify(nats_url, channel_prefix=prefix, wake_hints=kind == "nats-hints")


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind: str = request.param
    prefix = unique_prefix()
    made: list[NotifyAdapter] = []

    def make(on_prefix: str) -> NotifyAdapter:
        adapter = make_adapter(kind, request, on_prefix)
        made.append(adapter)
        return adapter

    yield Backend(kind, make, prefix, made)
    for adapter in made:
        adapter.close()


remote_only = pytest.mark.parametrize("backend", REMOTE_KINDS, indirect=True)


def test_job_scheduled_reaches_listeners_of_that_type_only_with_its_count(
    backend: Backend,
) -> None:
    producer, listener = backend.pair()
    mail, charge = Inbox(), Inbox()
    listener.listen_job_scheduled(["send-mail"], mail)
    listener.listen_job_scheduled(["charge"], charge)

    producer.notify_job_scheduled("charge", 3)
    producer.notify_job_scheduled("send-mail", 5)
    producer.notify_job_scheduled("charge", 1)  # sentinel: everything before it is delivered

    assert mail.wait_for("send-mail", 5)
    assert charge.wait_for("charge", 1)
    assert mail.calls == [("send-mail", 5)]
    assert charge.calls == [("charge", 3), ("charge", 1)]


def test_every_listener_of_a_type_is_called_and_one_listener_may_cover_several_types(
    backend: Backend,
) -> None:
    producer, listener = backend.pair()
    odd_name = 'mail/ünïcode "quoted" 🚀'
    both, first, second = Inbox(), Inbox(), Inbox()
    listener.listen_job_scheduled(["a", odd_name], both)
    listener.listen_job_scheduled(["a"], first)
    listener.listen_job_scheduled(["a"], second)

    producer.notify_job_scheduled(odd_name, 2)
    producer.notify_job_scheduled("a", 1)

    for inbox in (both, first, second):
        assert inbox.wait_for("a", 1)
    assert both.calls == [(odd_name, 2), ("a", 1)]
    assert first.calls == second.calls == [("a", 1)]


def test_subscription_is_active_when_listen_returns(backend: Backend) -> None:
    """Listen, then notify at once: received — the worker's "listen, then look" relies on it."""
    for _ in range(3):  # a fresh listener each time: its first listen opens the connection
        producer, listener = backend.pair()
        producer.notify_job_scheduled("warm-up", 1)  # the producer's connection is open: fast
        scheduled, completed = Inbox(), Inbox()
        listener.listen_job_scheduled(["t"], scheduled)
        producer.notify_job_scheduled("t", 1)
        assert scheduled.wait_for("t", 1)

        chain_id = uuid.uuid4()
        listener.listen_chain_completed(chain_id, completed)
        producer.notify_chain_completed(chain_id)
        assert completed.wait_for(chain_id)

    # The worker's first listen may be the ownership one (AsyncWorker): it opens the connection.
    producer, listener = backend.pair()
    producer.notify_job_scheduled("warm-up", 1)
    lost = Inbox()
    job_id = uuid.uuid4()
    listener.listen_job_ownership_lost(lost)
    producer.notify_job_ownership_lost(job_id)
    assert lost.wait_for(job_id)


def test_closed_subscription_receives_nothing_more(backend: Backend) -> None:
    producer, listener = backend.pair()
    closing, staying = Inbox(), Inbox()
    subscription = listener.listen_job_scheduled(["t"], closing)
    listener.listen_job_scheduled(["t"], staying)
    producer.notify_job_scheduled("t", 7)
    assert closing.wait_for("t", 7)

    subscription.close()
    subscription.close()  # idempotent
    producer.notify_job_scheduled("t", 1)
    producer.notify_job_scheduled("t", 2)

    assert staying.wait_for("t", 2)
    assert closing.calls == [("t", 7)]


def test_chain_completed_reaches_the_listeners_of_that_chain_only(backend: Backend) -> None:
    producer, listener = backend.pair()
    chain_1, chain_2 = uuid.uuid4(), uuid.uuid4()
    first, second, jobs = Inbox(), Inbox(), Inbox()
    listener.listen_chain_completed(chain_1, first)
    listener.listen_chain_completed(chain_2, second)
    listener.listen_job_scheduled(["t"], jobs)

    producer.notify_chain_completed(chain_2)
    producer.notify_chain_completed(chain_1)
    producer.notify_job_scheduled("t", 4)  # sentinel

    assert jobs.wait_for("t", 4)
    assert first.calls == [(chain_1,)]
    assert second.calls == [(chain_2,)]
    assert jobs.calls == [("t", 4)]


def test_job_ownership_lost_reaches_every_ownership_listener_with_every_job_id(
    backend: Backend,
) -> None:
    """One listener per worker hears every job's message (it ignores jobs it does not hold)."""
    producer, listener = backend.pair()
    # Remote: another instance, as a second worker process, hears them too.
    other = backend.make() if backend.remote else listener
    first, second, third = Inbox(), Inbox(), Inbox()
    listener.listen_job_ownership_lost(first)
    listener.listen_job_ownership_lost(second)
    other.listen_job_ownership_lost(third)
    job_1, job_2 = uuid.uuid4(), uuid.uuid4()

    producer.notify_job_ownership_lost(job_1)
    producer.notify_job_ownership_lost(job_2)

    for inbox in (first, second, third):
        assert inbox.wait_for(job_2)
        assert inbox.calls == [(job_1,), (job_2,)]


def test_each_message_reaches_only_the_listeners_of_its_kind(backend: Backend) -> None:
    """A chain id, a job id and a type name may look alike; each message has its own listeners."""
    producer, listener = backend.pair()
    same_id, sentinel = uuid.uuid4(), uuid.uuid4()
    lost, completed, jobs, last = Inbox(), Inbox(), Inbox(), Inbox()
    listener.listen_job_ownership_lost(lost)
    listener.listen_chain_completed(same_id, completed)
    listener.listen_job_scheduled([str(same_id)], jobs)
    listener.listen_chain_completed(sentinel, last)

    producer.notify_chain_completed(same_id)
    producer.notify_job_scheduled(str(same_id), 1)
    producer.notify_job_ownership_lost(same_id)
    producer.notify_chain_completed(sentinel)

    assert last.wait_for(sentinel)
    assert lost.calls == [(same_id,)]
    assert completed.calls == [(same_id,)]
    assert jobs.calls == [(str(same_id), 1)]


def test_closed_ownership_subscription_receives_nothing_more(backend: Backend) -> None:
    producer, listener = backend.pair()
    closing, staying = Inbox(), Inbox()
    subscription = listener.listen_job_ownership_lost(closing)
    listener.listen_job_ownership_lost(staying)
    job_1, job_2, job_3 = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    producer.notify_job_ownership_lost(job_1)
    assert closing.wait_for(job_1)

    subscription.close()
    subscription.close()  # idempotent
    producer.notify_job_ownership_lost(job_2)
    producer.notify_job_ownership_lost(job_3)

    assert staying.wait_for(job_3)
    assert closing.calls == [(job_1,)]
    assert staying.calls == [(job_1,), (job_2,), (job_3,)]


def test_a_listener_that_raises_does_not_stop_later_deliveries(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    producer, listener = backend.pair()
    failing, healthy = Inbox(fail=True), Inbox()
    listener.listen_job_scheduled(["t"], failing)
    listener.listen_job_scheduled(["t"], healthy)
    chain_id = uuid.uuid4()
    failing_chain = Inbox(fail=True)
    listener.listen_chain_completed(chain_id, failing_chain)
    failing_lost, healthy_lost = Inbox(fail=True), Inbox()
    listener.listen_job_ownership_lost(failing_lost)
    listener.listen_job_ownership_lost(healthy_lost)
    job_id = uuid.uuid4()

    with caplog.at_level(logging.ERROR, logger="queuert_sa.notify"):
        producer.notify_job_scheduled("t", 1)
        producer.notify_chain_completed(chain_id)
        producer.notify_job_ownership_lost(job_id)
        producer.notify_job_scheduled("t", 2)
        assert healthy.wait_for("t", 2)
        assert failing.wait_for("t", 2)

    assert failing.calls == [("t", 1), ("t", 2)]
    assert healthy.calls == [("t", 1), ("t", 2)]
    assert failing_chain.calls == [(chain_id,)]
    assert failing_lost.calls == healthy_lost.calls == [(job_id,)]
    assert (
        sum("listener" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
        == 4
    )


def test_close_is_idempotent_stops_delivery_and_later_calls_do_not_raise(
    backend: Backend,
) -> None:
    producer, listener = backend.pair()
    producer.notify_job_scheduled("nobody", 1)  # the producer's threads, if any, run now
    threads_before = {t for t in threading.enumerate() if backend.prefix in t.name}
    inbox = Inbox()
    listener.listen_job_scheduled(["t"], inbox)
    producer.notify_job_scheduled("t", 1)
    assert inbox.wait_for("t", 1)

    listener.close()
    listener.close()
    listener.notify_job_scheduled("t", 2)
    listener.notify_chain_completed(uuid.uuid4())
    listener.notify_job_ownership_lost(uuid.uuid4())
    listener.listen_job_scheduled(["t"], inbox).close()
    listener.listen_chain_completed(uuid.uuid4(), inbox).close()
    listener.listen_job_ownership_lost(inbox).close()

    if backend.remote:
        # The closed listener's thread is gone; a live instance still hears the producer.
        assert not [
            t for t in threading.enumerate() if backend.prefix in t.name and t not in threads_before
        ]
        sentinel = Inbox()
        backend.make().listen_job_scheduled(["t"], sentinel)
        producer.notify_job_scheduled("t", 3)
        assert sentinel.wait_for("t", 3)
    assert inbox.calls == [("t", 1)]


@remote_only
def test_a_producer_in_another_process_wakes_the_listener(backend: Backend) -> None:
    listener = backend.make()
    scheduled, completed, lost = Inbox(), Inbox(), Inbox()
    chain_id, job_id = uuid.uuid4(), uuid.uuid4()
    listener.listen_job_scheduled(["send-mail"], scheduled)
    listener.listen_chain_completed(chain_id, completed)
    listener.listen_job_ownership_lost(lost)

    make = {
        "postgres": "from queuert_sa.notify.postgres import PostgresNotify as A; target = env['PG']",
        "postgres-async": (
            "from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify as A;"
            " target = env['PG']"
        ),
        "redis": "from queuert_sa.notify.redis import RedisNotify as A; target = env['REDIS']",
        "redis-async": (
            "from queuert_sa.notify.asyncio_redis import AsyncRedisNotify as A;"
            " target = env['REDIS']"
        ),
        "nats": "from queuert_sa.notify.nats import NatsNotify as A; target = env['NATS']",
        "nats-hints": (
            "from queuert_sa.notify.nats import NatsNotify; import functools;"
            " A = functools.partial(NatsNotify, wake_hints=True); target = env['NATS']"
        ),
    }[backend.kind]
    script = "\n".join(
        [
            "import os, uuid",
            "env = os.environ",
            make,
            "with A(target, channel_prefix=env['PREFIX']) as notify:",
            "    notify.notify_job_scheduled('send-mail', 3)",
            "    notify.notify_chain_completed(uuid.UUID(env['CHAIN']))",
            "    notify.notify_job_ownership_lost(uuid.UUID(env['JOB']))",
        ]
    )
    env = {
        **os.environ,
        "PREFIX": backend.prefix,
        "CHAIN": str(chain_id),
        "JOB": str(job_id),
        "PYTHONPATH": str(ROOT),
        "PG": POSTGRES_URL,
        "REDIS": REDIS_URL,
        "NATS": NATS_URL,
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)

    assert scheduled.wait_for("send-mail", 3)
    assert completed.wait_for(chain_id)
    assert lost.wait_for(job_id)


@remote_only
def test_oversized_notification_is_dropped_without_raising(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    producer, listener = backend.pair()
    inbox = Inbox()
    listener.listen_job_scheduled(["x" * 9000, "t"], inbox)
    with caplog.at_level(logging.WARNING, logger="queuert_sa.notify"):
        producer.notify_job_scheduled("x" * 9000, 1)
    producer.notify_job_scheduled("t", 1)
    assert inbox.wait_for("t", 1)
    assert inbox.calls == [("t", 1)]
    assert any("payload" in r.getMessage() for r in caplog.records)


# --- PostgresNotify specifics -------------------------------------------------------


def test_postgres_accepts_sqlalchemy_urls_engines_and_libpq_strings(
    postgres_conninfo: str,
) -> None:
    prefix = unique_prefix()
    engine = create_engine(POSTGRES_URL)
    sources: list[object] = [POSTGRES_URL, make_url(POSTGRES_URL), engine, postgres_conninfo]
    listener = PostgresNotify(postgres_conninfo, channel_prefix=prefix)
    inbox = Inbox()
    try:
        listener.listen_job_scheduled(["t"], inbox)
        for count, source in enumerate(sources, start=1):
            with PostgresNotify(source, channel_prefix=prefix) as producer:  # type: ignore[arg-type]
                producer.notify_job_scheduled("t", count)
            assert inbox.wait_for("t", count), source
    finally:
        listener.close()
        engine.dispose()


def test_postgres_conninfo_conversion_and_refusals() -> None:
    assert (
        libpq_conninfo("postgresql+psycopg://u:p%40ss@h:5433/db?sslmode=disable")
        == "postgresql://u:p%40ss@h:5433/db?sslmode=disable"
    )
    assert libpq_conninfo("host=h dbname=db") == "host=h dbname=db"
    engine = create_engine("postgresql+psycopg://u:secret@h/db")
    assert libpq_conninfo(engine) == "postgresql://u:secret@h/db"
    engine.dispose()
    with pytest.raises(ValueError, match="PostgreSQL"):
        libpq_conninfo(make_url("sqlite:///x.db"))
    with pytest.raises(ValueError, match=r"too long.*at most 44 bytes"):
        PostgresNotify("postgresql://h/db", channel_prefix="p" * 45)
    notify = PostgresNotify("postgresql://h/db", channel_prefix="p" * 44)  # connects on first use
    assert len(notify.job_ownership_lost_channel) == 63
    notify.close()


def test_postgres_close_releases_its_connections(postgres_conninfo: str) -> None:
    name = f"qt-notify-{uuid.uuid4().hex[:8]}"
    notify = PostgresNotify(
        postgres_conninfo, channel_prefix=unique_prefix(), application_name=name
    )
    inbox = Inbox()
    notify.listen_job_scheduled(["t"], inbox)
    notify.notify_job_scheduled("t", 1)
    assert inbox.wait_for("t", 1)

    def sessions() -> list[str]:
        with psycopg.connect(postgres_conninfo, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"{name} %",),
            ).fetchall()
        return sorted(row[0] for row in rows)

    assert sessions() == [f"{name} listen", f"{name} publish"]
    notify.close()
    # The server ends a backend a moment after its client said goodbye.
    assert eventually(lambda: sessions() == [])
