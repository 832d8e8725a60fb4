"""Workers ride out the failure of what they depend on: the notify backend and the database.

Pinned (SEMANTICS, "Notifications" and "Consumer side"): when the notify
backend is down at start or dies mid-run, a worker logs it once, keeps working
by polling and resubscribes when it returns; no job is lost or run twice. When
the database ends the worker's connections (``pg_terminate_backend``), the
worker logs it and carries on with every slot; an atomic attempt cut off that
way is retried and its effects commit exactly once.

Every scenario runs on the thread ``Worker`` and on the ``AsyncWorker`` (on an
event loop of its own: ``asyncio.run`` in a thread, as in a worker process).
Producers are separate clients with their own adapters, as in a web process.
Each job's handler writes one ``Effect`` row keyed by the job id; "exactly
once" is "one row per job, none extra".

Telling a wake-up from a poll without sleeping and hoping: with one slot, a
worker that has just finished a job looks once more, finds nothing and sleeps
a whole poll interval (``POLL``). A job committed ``SETTLE_S`` after that
completion and started within ``WAKE_S`` was started by a notification.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import Protocol

import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job
from queuert_sa.notify import NotifyAdapter
from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify
from queuert_sa.notify.asyncio_redis import AsyncRedisNotify
from queuert_sa.notify.nats import NatsNotify
from queuert_sa.notify.postgres import PostgresNotify
from queuert_sa.notify.redis import RedisNotify

from .app import Effect, WorkIn, job_types, work
from .conftest import Db
from .test_notify_conformance import eventually, unique_prefix
from .test_notify_resilience import NatsServer, RedisServer, nats_server, redis_server

__all__ = ["nats_server", "redis_server"]  # fixtures, imported to be used here

#: The workers' poll interval (jittered ±5 %): the floor while notifications are down.
POLL = dt.timedelta(seconds=1.5)
#: A job started this soon after its commit was woken, not polled (see the module doc).
WAKE_S = 0.75
#: Pause after a completion so that the one-slot worker is back asleep on a fresh poll.
SETTLE_S = 0.1
#: Longest a job may wait for a poll: the jittered interval plus a query's worth of slack.
POLLED_S = POLL.total_seconds() * 1.05 + 0.5
#: Generous bound for what should take well under a second (CI machines).
DEADLINE_S = 15.0
#: A failed attempt is retried after this, so that retries fit in the test.
RETRY = q.Backoff(initial=dt.timedelta(milliseconds=50), jitter=0)
#: ``application_name`` of the worker's engine in the connection-kill tests.
WORKER_APP_NAME = "queuert-test-worker"
#: Jobs with this input ``n`` or more wait for each other (see the connection-kill test).
TOGETHER_N = 1000

KINDS = ["thread", "async"]

#: The thread-based adapter and its asyncio-native twin, for each backend.
RedisClass = type[RedisNotify] | type[AsyncRedisNotify]
PostgresClass = type[PostgresNotify] | type[AsyncPostgresNotify]
redis_classes = pytest.mark.parametrize(
    "redis_cls", [RedisNotify, AsyncRedisNotify], ids=["RedisNotify", "AsyncRedisNotify"]
)
postgres_classes = pytest.mark.parametrize(
    "pg_cls", [PostgresNotify, AsyncPostgresNotify], ids=["PostgresNotify", "AsyncPostgresNotify"]
)

Hook = Callable[[str, int], None]
"""Called inside the handler with the job id and input ``n``, after its Effect row is flushed."""


# --- what the handlers ran, seen from this process ------------------------------------


class Ledger:
    """Handler runs in this process: job id -> the monotonic times its runs started."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.runs: dict[str, list[float]] = {}

    def record(self, job_id: uuid.UUID) -> None:
        with self._cond:
            self.runs.setdefault(str(job_id), []).append(time.monotonic())
            self._cond.notify_all()

    def runs_of(self, job_id: uuid.UUID | str) -> int:
        with self._cond:
            return len(self.runs.get(str(job_id), []))

    def first_start(self, job_id: uuid.UUID, timeout: float) -> float | None:
        """When the job's first run started, waiting up to ``timeout`` for it."""
        with self._cond:
            self._cond.wait_for(lambda: str(job_id) in self.runs, timeout)
            starts = self.runs.get(str(job_id))
            return starts[0] if starts else None


# --- workers, thread and asyncio, behind one handle -----------------------------------


class RunningWorker(Protocol):
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    def stop(self) -> bool: ...


class ThreadWorker:
    """A started ``Worker`` on its own engine."""

    def __init__(
        self, engine: Engine, notify: NotifyAdapter, ledger: Ledger, hook: Hook | None, slots: int
    ) -> None:
        self._engine = engine
        client = q.Queuert(engine, job_types, notify=notify)
        self.worker = client.worker(
            concurrency=slots, poll_interval=POLL, backoff=RETRY, handle_signals="never"
        )

        @self.worker.handler(work)
        def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
            ledger.record(attempt.job.id)
            attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
            attempt.session.flush()
            if hook is not None:
                hook(str(attempt.job.id), attempt.input["n"])
            return attempt.complete(attempt.input["n"] * 2)

        self.worker.start()

    @property
    def completed(self) -> int:
        return self.worker.completed

    @property
    def failed(self) -> int:
        return self.worker.failed

    def stop(self) -> bool:
        try:
            return self.worker.stop()
        finally:
            self._engine.dispose()


class AsyncWorkerThread:
    """A started ``AsyncWorker`` with ``async def`` handlers, on ``asyncio.run`` in a thread."""

    def __init__(
        self,
        make_engine: Callable[[], AsyncEngine],
        notify: NotifyAdapter,
        ledger: Ledger,
        hook: Hook | None,
        slots: int,
    ) -> None:
        self._make_engine = make_engine
        self._notify = notify
        self._ledger = ledger
        self._hook = hook
        self._slots = slots
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._clean = False
        self.worker: q.AsyncWorker | None = None
        self._thread = threading.Thread(target=self._run, name="async-worker-loop", daemon=True)
        self._thread.start()
        assert self._started.wait(DEADLINE_S), "the async worker did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        engine = self._make_engine()
        ledger, hook = self._ledger, self._hook
        try:
            client = q.AsyncQueuert(engine, job_types, notify=self._notify)
            worker = client.worker(
                concurrency=self._slots, poll_interval=POLL, backoff=RETRY, handle_signals="never"
            )

            @worker.handler(work)
            async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
                ledger.record(attempt.job.id)
                attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
                await attempt.session.flush()
                if hook is not None:
                    await asyncio.to_thread(hook, str(attempt.job.id), attempt.input["n"])
                return attempt.complete(attempt.input["n"] * 2)

            self._loop = asyncio.get_running_loop()
            self._stop_requested = asyncio.Event()
            await worker.start()
            self.worker = worker
            self._started.set()
            await self._stop_requested.wait()
            self._clean = await worker.stop()
        finally:
            await engine.dispose()

    @property
    def completed(self) -> int:
        assert self.worker is not None
        return self.worker.completed

    @property
    def failed(self) -> int:
        assert self.worker is not None
        return self.worker.failed

    def stop(self) -> bool:
        assert self._loop is not None
        assert self._stop_requested is not None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_requested.set)
            self._thread.join(60)
        assert not self._thread.is_alive(), "the async worker's loop did not end"
        if self._error is not None:
            raise self._error
        return self._clean


@contextmanager
def running_worker(
    kind: str,
    db: Db,
    notify: NotifyAdapter,
    ledger: Ledger,
    *,
    hook: Hook | None = None,
    slots: int = 1,
    application_name: str | None = None,
) -> Generator[RunningWorker]:
    """A worker of ``kind`` on an engine of its own; stopped (cleanly) on exit.

    A test that needs stop()'s result calls it inside the block; a second
    stop() here is then a no-op.
    """
    connect_args = {"application_name": application_name} if application_name else {}
    handle: RunningWorker
    if kind == "thread":
        engine = create_engine(db.url, connect_args=connect_args)
        handle = ThreadWorker(engine, notify, ledger, hook, slots)
    else:
        handle = AsyncWorkerThread(
            lambda: create_async_engine(db.url, connect_args=connect_args),
            notify,
            ledger,
            hook,
            slots,
        )
    try:
        yield handle
    finally:
        handle.stop()


# --- producing and checking -----------------------------------------------------------


def commit_jobs(
    producer: q.Queuert, count: int = 1, *, first_n: int = 0
) -> tuple[list[uuid.UUID], float]:
    """Start ``count`` work jobs in one transaction; their ids and when the commit began."""
    began = time.monotonic()
    starts = [work({"n": first_n + i, "sleep": 0}) for i in range(count)]
    with Session(producer.engine) as s, s.begin():
        chains = producer.start_chains(s, starts)
    return [chain.id for chain in chains], began


def completed_count(db: Db, ids: Sequence[uuid.UUID]) -> int:
    with Session(db.engine) as s:
        stmt = select(func.count()).where(Job.id.in_(ids), Job.status == "completed")
        return s.execute(stmt).scalar_one()


def wait_completed(db: Db, ids: Sequence[uuid.UUID], timeout: float = DEADLINE_S) -> None:
    assert eventually(lambda: completed_count(db, ids) == len(ids), timeout), (
        f"{len(ids) - completed_count(db, ids)} of {len(ids)} jobs not completed after {timeout} s"
    )


def effects_per_job(db: Db) -> Counter[str]:
    with Session(db.engine) as s:
        return Counter(s.execute(select(Effect.job_id)).scalars())


def statuses(db: Db) -> dict[str, int]:
    with Session(db.engine) as s:
        rows = s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {str(status): int(n) for status, n in rows}


def assert_done_exactly_once(db: Db, ids: Sequence[uuid.UUID]) -> None:
    """Every job completed, its handler's writes committed once, nothing else there."""
    assert len(set(ids)) == len(ids)
    assert statuses(db) == {"completed": len(ids)}
    effects = effects_per_job(db)
    assert effects == Counter({str(i): 1 for i in ids}), {
        job_id: n for job_id, n in effects.items() if n != 1
    } or "jobs missing from the effects"


def pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def assert_woken(db: Db, producer: q.Queuert, ledger: Ledger) -> list[uuid.UUID]:
    """Two jobs in a row; the second, committed while the worker sleeps a fresh poll
    interval, must start within WAKE_S: a notification woke the worker."""
    (first,), _ = commit_jobs(producer)
    wait_completed(db, [first])
    pause(SETTLE_S)
    (second,), began = commit_jobs(producer)
    started = ledger.first_start(second, DEADLINE_S)
    assert started is not None, "the job did not start"
    latency = started - began
    assert latency < WAKE_S, (
        f"the job started {latency:.2f} s after its commit: found by the "
        f"{POLL.total_seconds()} s poll, not woken by a notification"
    )
    wait_completed(db, [second])
    return [first, second]


def assert_polled(db: Db, producer: q.Queuert, ledger: Ledger, count: int) -> list[uuid.UUID]:
    """Jobs committed while notifications are down start by polling, within a poll interval."""
    ids, began = commit_jobs(producer, count)
    started = ledger.first_start(ids[0], DEADLINE_S)
    assert started is not None, "the job did not start"
    assert started - began < POLLED_S, f"started {started - began:.2f} s after its commit"
    wait_completed(db, ids)
    return ids


def notify_log(caplog: pytest.LogCaptureFixture, connection: str, level: int) -> list[str]:
    """Messages of ``queuert_sa.notify`` at ``level`` about ``connection``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.notify" and r.levelno == level and connection in r.getMessage()
    ]


def outage_warnings(caplog: pytest.LogCaptureFixture, connection: str) -> int:
    return sum("unavailable" in m for m in notify_log(caplog, connection, logging.WARNING))


def is_back(caplog: pytest.LogCaptureFixture, connection: str) -> bool:
    return any("is back" in m for m in notify_log(caplog, connection, logging.INFO))


# --- Redis ----------------------------------------------------------------------------


class RedisSides:
    """The log names of the worker's and the producer's Redis connections.

    The producer talks to database 1 and the worker to database 0: pub/sub
    ignores the database number, and the adapters name it in their logs, so
    each connection's warnings can be counted on their own.
    """

    def __init__(self, server: RedisServer) -> None:
        where = f"127.0.0.1:{server.port}"
        self.worker_url = f"redis://{where}/0"
        self.producer_url = f"redis://{where}/1"
        self.worker_subscriber = f"Redis notify subscriber ({where}/0)"
        self.worker_publisher = f"Redis notify publisher ({where}/0)"
        self.producer_publisher = f"Redis notify publisher ({where}/1)"


def wait_redis_back(
    caplog: pytest.LogCaptureFixture, sides: RedisSides, producer_notify: NotifyAdapter
) -> None:
    """Until the worker resubscribed and the producer publishes again.

    The producer's publisher retries only when it has something to send, after
    its backoff: nudge it with notifications nobody listens to.
    """

    def producer_back() -> bool:
        producer_notify.notify_job_scheduled("resilience-nobody", 1)
        return is_back(caplog, sides.producer_publisher)

    assert eventually(lambda: is_back(caplog, sides.worker_subscriber), DEADLINE_S), (
        "the worker did not resubscribe"
    )
    assert eventually(producer_back, DEADLINE_S), "the producer did not publish again"


@redis_classes
@pytest.mark.parametrize("kind", KINDS)
def test_redis_killed_mid_run_jobs_complete_by_polling_then_wakeups_resume(
    kind: str,
    redis_cls: RedisClass,
    pg: Db,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")
    redis_server.start()
    sides = RedisSides(redis_server)
    prefix = unique_prefix()
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    with (
        redis_cls(sides.producer_url, channel_prefix=prefix) as producer_notify,
        redis_cls(sides.worker_url, channel_prefix=prefix) as worker_notify,
        running_worker(kind, pg, worker_notify, ledger) as worker,
    ):
        producer = q.Queuert(pg.engine, job_types, notify=producer_notify)
        ids += assert_woken(pg, producer, ledger)  # the check tells wake-ups from polls

        before, _ = commit_jobs(producer, 5)  # in flight or queued when Redis dies
        ids += before
        redis_server.kill()
        assert eventually(lambda: outage_warnings(caplog, sides.worker_subscriber) == 1), (
            "the worker's subscriber did not notice the outage"
        )
        ids += assert_polled(pg, producer, ledger, 1)
        ids += assert_polled(pg, producer, ledger, 4)
        wait_completed(pg, before)

        redis_server.start()
        wait_redis_back(caplog, sides, producer_notify)
        ids += assert_woken(pg, producer, ledger)
        ids += assert_woken(pg, producer, ledger)
        after, _ = commit_jobs(producer, 5)
        ids += after
        wait_completed(pg, after)
        assert worker.stop() is True

    assert_done_exactly_once(pg, ids)
    assert worker.completed == len(ids)
    assert worker.failed == 0
    # Once per connection and outage, however often the reconnection failed.
    assert outage_warnings(caplog, sides.worker_subscriber) == 1
    assert outage_warnings(caplog, sides.worker_publisher) == 1  # chain-completed hints
    assert outage_warnings(caplog, sides.producer_publisher) == 1


@redis_classes
@pytest.mark.parametrize("kind", KINDS)
def test_redis_down_at_worker_start_worker_polls_then_wakeups_work_when_it_is_up(
    kind: str,
    redis_cls: RedisClass,
    pg: Db,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")
    sides = RedisSides(redis_server)  # not started
    prefix = unique_prefix()
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    connect_timeout = dt.timedelta(seconds=2)
    with (
        redis_cls(sides.producer_url, channel_prefix=prefix) as producer_notify,
        redis_cls(
            sides.worker_url, channel_prefix=prefix, connect_timeout=connect_timeout
        ) as worker_notify,
    ):
        producer = q.Queuert(pg.engine, job_types, notify=producer_notify)
        began = time.monotonic()
        with running_worker(kind, pg, worker_notify, ledger) as worker:
            took = time.monotonic() - began
            assert took < connect_timeout.total_seconds() + 1, f"start took {took:.1f} s"
            assert outage_warnings(caplog, sides.worker_subscriber) == 1

            ids += assert_polled(pg, producer, ledger, 1)
            ids += assert_polled(pg, producer, ledger, 3)

            redis_server.start()
            wait_redis_back(caplog, sides, producer_notify)
            ids += assert_woken(pg, producer, ledger)
            ids += assert_woken(pg, producer, ledger)
            assert worker.stop() is True

    assert_done_exactly_once(pg, ids)
    assert (worker.completed, worker.failed) == (len(ids), 0)
    assert outage_warnings(caplog, sides.worker_subscriber) == 1
    assert outage_warnings(caplog, sides.producer_publisher) == 1


# --- PostgreSQL LISTEN/NOTIFY ---------------------------------------------------------


def terminate_backends(db: Db, application_name: str) -> int:
    """``pg_terminate_backend`` every connection of this test database named so; how many."""
    with db.engine.connect() as conn:
        ended = conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ),
            {"name": application_name},
        ).scalars()
        return sum(bool(x) for x in ended)


@postgres_classes
@pytest.mark.parametrize("kind", KINDS)
def test_postgres_listener_terminated_mid_run_no_job_lost_and_wakeups_resume(
    kind: str, pg_cls: PostgresClass, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")
    name = f"qt-resilience-{uuid.uuid4().hex[:8]}"
    prefix = unique_prefix()
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    listener = "PostgreSQL notify listener"
    with (
        pg_cls(pg.engine, channel_prefix=prefix) as producer_notify,
        pg_cls(pg.engine, channel_prefix=prefix, application_name=name) as worker_notify,
        running_worker(kind, pg, worker_notify, ledger) as worker,
    ):
        producer = q.Queuert(pg.engine, job_types, notify=producer_notify)
        ids += assert_woken(pg, producer, ledger)

        assert terminate_backends(pg, f"{name} listen") == 1
        during, _ = commit_jobs(producer, 5)  # while the listener reconnects
        ids += during
        wait_completed(pg, during)
        assert eventually(lambda: is_back(caplog, listener), DEADLINE_S)

        ids += assert_woken(pg, producer, ledger)
        ids += assert_woken(pg, producer, ledger)
        assert worker.stop() is True

    assert_done_exactly_once(pg, ids)
    assert (worker.completed, worker.failed) == (len(ids), 0)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.notify" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings  # the worker's listener, once
    assert listener in warnings[0]


# --- NATS -------------------------------------------------------------------------------


class NatsSides:
    """The URLs and log names of the worker's and the producer's NATS connections.

    The producer names the server ``localhost`` and the worker ``127.0.0.1``:
    the adapters name the URL in their logs, so each side's are counted apart.
    """

    def __init__(self, server: NatsServer) -> None:
        self.worker_url = server.url
        self.producer_url = f"nats://localhost:{server.port}"
        self.worker_subscriber = f"NATS notify subscriber ({self.worker_url})"
        self.producer_publisher = f"NATS notify publisher ({self.producer_url})"


@pytest.mark.parametrize("kind", KINDS)
def test_nats_killed_mid_run_jobs_complete_by_polling_then_wakeups_resume(
    kind: str, pg: Db, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With wake hints: the plain subscription is the same path, without the tickets."""
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")
    nats_server.start()
    sides = NatsSides(nats_server)
    subscriber = sides.worker_subscriber
    prefix = unique_prefix()
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    with (
        NatsNotify(sides.producer_url, channel_prefix=prefix, wake_hints=True) as producer_notify,
        NatsNotify(sides.worker_url, channel_prefix=prefix, wake_hints=True) as worker_notify,
        running_worker(kind, pg, worker_notify, ledger) as worker,
    ):
        producer = q.Queuert(pg.engine, job_types, notify=producer_notify)
        ids += assert_woken(pg, producer, ledger)

        before, _ = commit_jobs(producer, 5)
        ids += before
        nats_server.kill()
        assert eventually(lambda: outage_warnings(caplog, subscriber) >= 1), (
            "the worker's subscriber did not notice the outage"
        )
        ids += assert_polled(pg, producer, ledger, 1)
        ids += assert_polled(pg, producer, ledger, 4)
        wait_completed(pg, before)

        nats_server.start()

        def producer_back() -> bool:
            producer_notify.notify_job_scheduled("resilience-nobody", 1)
            return is_back(caplog, sides.producer_publisher)

        assert eventually(lambda: is_back(caplog, subscriber), DEADLINE_S), (
            "the worker did not resubscribe"
        )
        assert eventually(producer_back, DEADLINE_S), "the producer did not publish again"
        ids += assert_woken(pg, producer, ledger)
        ids += assert_woken(pg, producer, ledger)
        assert worker.stop() is True

    assert_done_exactly_once(pg, ids)
    assert (worker.completed, worker.failed) == (len(ids), 0)
    assert outage_warnings(caplog, subscriber) == 1
    assert outage_warnings(caplog, sides.producer_publisher) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_nats_down_at_worker_start_worker_polls_then_wakeups_work_when_it_is_up(
    kind: str, pg: Db, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.notify")
    sides = NatsSides(nats_server)  # not started
    subscriber = sides.worker_subscriber
    prefix = unique_prefix()
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    connect_timeout = dt.timedelta(seconds=2)
    with (
        NatsNotify(sides.producer_url, channel_prefix=prefix) as producer_notify,
        NatsNotify(
            sides.worker_url, channel_prefix=prefix, connect_timeout=connect_timeout
        ) as worker_notify,
    ):
        producer = q.Queuert(pg.engine, job_types, notify=producer_notify)
        began = time.monotonic()
        with running_worker(kind, pg, worker_notify, ledger) as worker:
            took = time.monotonic() - began
            assert took < connect_timeout.total_seconds() + 1, f"start took {took:.1f} s"
            assert outage_warnings(caplog, subscriber) == 1

            ids += assert_polled(pg, producer, ledger, 1)
            ids += assert_polled(pg, producer, ledger, 3)

            nats_server.start()
            assert eventually(lambda: is_back(caplog, subscriber), DEADLINE_S)

            def producer_back() -> bool:
                producer_notify.notify_job_scheduled("resilience-nobody", 1)
                return is_back(caplog, sides.producer_publisher)

            assert eventually(producer_back, DEADLINE_S), "the producer did not publish again"
            ids += assert_woken(pg, producer, ledger)
            ids += assert_woken(pg, producer, ledger)
            assert worker.stop() is True

    assert_done_exactly_once(pg, ids)
    assert (worker.completed, worker.failed) == (len(ids), 0)
    assert outage_warnings(caplog, subscriber) == 1


# --- the worker's own database connections ended ------------------------------------


def worker_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "queuert_sa.worker" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_worker_connections_terminated_mid_stream_all_jobs_done_exactly_once(
    kind: str, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.worker")
    notify = q.InMemoryNotify()  # producer and worker share the process
    producer = q.Queuert(pg.engine, job_types, notify=notify)
    ledger = Ledger()
    ids: list[uuid.UUID] = []
    kills: list[int] = []

    together = threading.Barrier(4)

    def busy(job_id: str, n: int) -> None:
        if n >= TOGETHER_N:
            together.wait(DEADLINE_S)  # only four live slots get past this
        else:
            time.sleep(0.02)  # keeps the four slots busy while connections are ended

    with running_worker(
        kind, pg, notify, ledger, hook=busy, slots=4, application_name=WORKER_APP_NAME
    ) as worker:
        # A stream of 10 x 20 jobs; the worker's connections are ended each time it
        # has done 60 more (so it has recovered, and holds connections, in between).
        kill_at = [40, 100, 160]
        deadline = time.monotonic() + 45
        while (len(ids) < 200 or kill_at) and time.monotonic() < deadline:
            if len(ids) < 200:
                ids += commit_jobs(producer, 20)[0]
            if kill_at and completed_count(pg, ids) >= kill_at[0]:
                kill_at.pop(0)
                kills.append(terminate_backends(pg, WORKER_APP_NAME))
            pause(0.05)
        assert len(kills) == 3, "the stream ended before the worker was cut off three times"
        wait_completed(pg, ids, timeout=45)

        # Idle now: its pooled connections are ended too, so every slot that
        # looks for work next fails first. Four jobs that can only finish
        # together then show that all four slots carried on.
        kills.append(terminate_backends(pg, WORKER_APP_NAME))
        last, _ = commit_jobs(producer, 4, first_n=TOGETHER_N)
        wait_completed(pg, last)
        ids += last
        assert worker.stop() is True

    assert all(n >= 1 for n in kills), kills
    assert len(ids) == 204
    assert_done_exactly_once(pg, ids)
    assert worker.completed == len(ids)
    assert worker_problems(caplog), "the worker did not log losing its connections"
    print(
        f"\n{kind}: {len(ids)} jobs, backends ended {kills}, {worker.failed} attempts failed, "
        f"{len(worker_problems(caplog))} worker warnings"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_attempt_whose_connection_is_killed_mid_handler_is_retried_once(
    kind: str, pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="queuert_sa.worker")
    notify = q.InMemoryNotify()
    producer = q.Queuert(pg.engine, job_types, notify=notify)
    ledger = Ledger()
    entered, killed = threading.Event(), threading.Event()

    def hold_first_run(job_id: str, n: int) -> None:
        # The first run's Effect row is flushed: hold the attempt open until its
        # connection is gone, then let it try to complete.
        if ledger.runs_of(job_id) == 1:
            entered.set()
            assert killed.wait(DEADLINE_S)

    with running_worker(
        kind, pg, notify, ledger, hook=hold_first_run, application_name=WORKER_APP_NAME
    ) as worker:
        (job_id,), _ = commit_jobs(producer)
        assert entered.wait(DEADLINE_S), "the handler did not start"
        assert terminate_backends(pg, WORKER_APP_NAME) >= 1
        killed.set()
        wait_completed(pg, [job_id])
        assert worker.stop() is True

    job = producer.get_job(job_id)
    assert (job.status, job.output) == ("completed", 0)
    assert job.attempt == 2, "the cut-off attempt is counted, then the retry"
    assert ledger.runs_of(job_id) == 2
    assert_done_exactly_once(pg, [job_id])
    assert (worker.completed, worker.failed) == (1, 1)
    assert worker_problems(caplog)
