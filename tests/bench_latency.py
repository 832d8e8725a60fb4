"""Wake-up latency: from a producer's COMMIT to the handler starting on an idle worker.

    python -m tests.bench_latency [--db URL] [--redis URL] [--nats URL] [--jobs 200]
                                  [--none-jobs 3] [--processes 1] [--workers sync,async]
                                  [--setups postgres,redis,postgres-async,redis-async,nats,nats-hints,none]

For each notify setup and each worker kind (thread ``Worker``, asyncio
``AsyncWorker``): ``--processes`` workers (default 1), each in a process of
its own with ``poll_interval`` 30 s and one slot, sit idle; the producer (this
process) commits one single-job chain at a time and waits until its handler
has started (in any worker) before committing the next. Every wake-up travels
through the backend, as between an application and its worker processes.
Prints p50/p95/p99/max in milliseconds (commit returned → handler called, both
read from the machine's monotonic clock).

It also prints what the wake-ups cost, per job:

* ``empty/job`` — acquire attempts that found nothing (wasted wake-ups),
  counted exactly in each worker process: acquire statements seen by a
  SQLAlchemy ``after_cursor_execute`` listener on the worker's engine, minus
  handler starts. One per job is inherent (a slot that finished a job looks
  once more before it sleeps); the rest are the other processes' slots that
  the same notification woke.
* ``commit/job`` and ``rollback/job`` — on PostgreSQL, the change of
  ``pg_stat_database.xact_commit`` / ``xact_rollback`` of the database over
  the run (everything: the producer's transactions, ``pg_notify`` calls, the
  workers'; other clients of that database add noise). An acquire that finds
  nothing rolls back, then the slot reads the next due time (a rollback) and
  looks for expired leases (a commit).

Setups: ``postgres`` (LISTEN/NOTIFY, ``PostgresNotify``), ``redis`` (pub/sub,
``RedisNotify``), their asyncio-native twins ``postgres-async``
(``AsyncPostgresNotify``) and ``redis-async`` (``AsyncRedisNotify``), ``nats``
(``NatsNotify``) and ``nats-hints`` (``NatsNotify(wake_hints=True)``), and
``none`` (adapters that deliver nothing: the worker finds each job at its next
poll; few jobs, since each waits up to 30 s). The asyncio-native adapters run
on the ``AsyncWorker``'s event loop, and on a loop thread of their own in the
producer and the thread ``Worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.notify.postgres import libpq_conninfo

POLL = dt.timedelta(seconds=30)

#: The acquire statement (``ops.acquire_job``): the only UPDATE that sets ``last_attempt_at``.
_ACQUIRE = re.compile(r"^\s*UPDATE\s+\S*job\s+SET\s.*\blast_attempt_at=", re.S | re.I)

#: An idle PostgreSQL backend reports its statistics up to 10 s late
#: (PGSTAT_IDLE_INTERVAL); a backend that exits reports them at once.
_STATS_SETTLE_S = 11.0


class _Silent:
    """A notify adapter that delivers nothing (the polling floor)."""

    class _Sub:
        def close(self) -> None:
            pass

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        pass

    def listen_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> _Silent._Sub:
        return self._Sub()

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        pass

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> _Silent._Sub:
        return self._Sub()

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        pass

    def listen_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> _Silent._Sub:
        return self._Sub()

    def close(self) -> None:
        pass


class _Counts:
    """Acquire attempts and handler starts of one worker process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acquires = 0
        self.handled = 0

    def watch(self, engine: Engine) -> None:
        def after_cursor_execute(*args: Any) -> None:
            statement: str = args[2]
            if _ACQUIRE.match(statement):
                with self._lock:
                    self.acquires += 1

        event.listen(engine, "after_cursor_execute", after_cursor_execute)

    def handler_started(self) -> None:
        with self._lock:
            self.handled += 1

    def reset(self) -> None:
        with self._lock:
            self.acquires = self.handled = 0

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.acquires, self.handled


@dataclass
class Result:
    latencies_ms: list[float]
    acquires: int
    handled: int
    db_commits: int | None  # None: not PostgreSQL
    db_rollbacks: int | None


def _adapters(setup: str, db_url: str, redis_url: str, nats_url: str) -> tuple[Any, Any]:
    """(producer's adapter, worker's adapter)."""
    if setup == "none":
        return _Silent(), _Silent()
    if setup == "postgres":
        from queuert_sa.notify.postgres import PostgresNotify

        return PostgresNotify(db_url), PostgresNotify(db_url)
    if setup == "postgres-async":
        from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify

        return AsyncPostgresNotify(db_url), AsyncPostgresNotify(db_url)
    if setup == "redis-async":
        from queuert_sa.notify.asyncio_redis import AsyncRedisNotify

        return AsyncRedisNotify(redis_url), AsyncRedisNotify(redis_url)
    if setup in ("nats", "nats-hints"):
        from queuert_sa.notify.nats import NatsNotify

        hints = setup == "nats-hints"
        return NatsNotify(nats_url, wake_hints=hints), NatsNotify(nats_url, wake_hints=hints)
    from queuert_sa.notify.redis import RedisNotify

    return RedisNotify(redis_url), RedisNotify(redis_url)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "p50": statistics.median(ordered),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": ordered[-1],
    }


def _worker_process(
    setup: str,
    kind: str,
    db_url: str,
    redis_url: str,
    nats_url: str,
    started: Any,
    ready: Any,
    begin: Any,
    stop: Any,
    counted: Any,
) -> None:
    """A worker in its own process: puts ``(key, time.monotonic())`` as each handler starts.

    ``time.monotonic()`` is CLOCK_MONOTONIC on Linux, one clock for every
    process of the machine, so the producer can subtract its commit time.

    Protocol with the producer: put ``"ready"`` on ``ready`` once started; on
    ``begin`` zero the counts and put ``"armed"``; on ``stop`` put
    ``(acquires, handler starts)`` on ``counted``, then stop.
    """
    _, notify = _adapters(setup, db_url, redis_url, nats_url)
    counts = _Counts()
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)

    def measured_phase() -> None:
        ready.put("ready")
        begin.wait()
        counts.reset()
        ready.put("armed")
        stop.wait()
        counted.put(counts.snapshot())

    if kind == "sync":
        engine = create_engine(db_url)
        counts.watch(engine)
        worker = q.Queuert(engine, job_types, notify=notify).worker(
            poll_interval=POLL, handle_signals="never"
        )

        @worker.handler(ping)
        def handle(attempt: q.Attempt[dict[str, Any], None]) -> q.Outcome:
            counts.handler_started()
            started.put((attempt.input["key"], time.monotonic()))
            return attempt.complete(None)

        worker.start()
        measured_phase()
        worker.stop()
        engine.dispose()
    else:

        async def main() -> None:
            url = make_url(db_url)
            if url.get_backend_name() == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            aengine = create_async_engine(url)
            counts.watch(aengine.sync_engine)
            aworker = q.AsyncQueuert(aengine, job_types, notify=notify).worker(
                poll_interval=POLL, handle_signals="never"
            )

            @aworker.handler(ping)
            async def handle(attempt: q.AsyncAttempt[dict[str, Any], None]) -> q.Outcome:
                counts.handler_started()
                started.put((attempt.input["key"], time.monotonic()))
                return attempt.complete(None)

            await aworker.start()
            await asyncio.to_thread(measured_phase)
            await aworker.stop()
            await aengine.dispose()

        asyncio.run(main())
    notify.close()


def _db_transactions(db_url: str) -> tuple[int, int] | None:
    """(xact_commit, xact_rollback) of the database; None if it is not PostgreSQL.

    A connection of its own per reading: its one transaction is reported when
    it exits, so a reading adds at most one commit to the next one.
    """
    if make_url(db_url).get_backend_name() != "postgresql":
        return None
    with psycopg.connect(libpq_conninfo(db_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _expect(queue: Any, what: str, n: int, timeout: float = 60) -> list[Any]:
    items = [queue.get(timeout=timeout) for _ in range(n)]
    if any(item != what for item in items):
        raise RuntimeError(f"expected {n} x {what!r} from the workers, got {items}")
    return items


def measure(
    setup: str,
    kind: str,
    db_url: str,
    redis_url: str,
    jobs: int,
    processes: int = 1,
    nats_url: str = "nats://127.0.0.1:4222",
) -> Result:
    """Commit ``jobs`` chains one at a time to ``processes`` idle workers; see the module doc."""
    ctx = multiprocessing.get_context("spawn")
    started, ready, counted = ctx.Queue(), ctx.Queue(), ctx.Queue()
    begin, stop = ctx.Event(), ctx.Event()
    workers = [
        ctx.Process(
            target=_worker_process,
            args=(setup, kind, db_url, redis_url, nats_url, started, ready, begin, stop, counted),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for process in workers:
        process.start()
    engine = create_engine(db_url)
    producer_notify, _ = _adapters(setup, db_url, redis_url, nats_url)
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)
    producer = q.Queuert(engine, job_types, notify=producer_notify)
    latencies: list[float] = []
    acquires = handled = 0
    before = after = None
    try:
        _expect(ready, "ready", processes)
        with Session(engine) as session, session.begin():  # connect the producer before `before`
            producer.start_chain(session, ping, {"key": "warm-up"})
        if started.get(timeout=POLL.total_seconds() * 1.5)[0] != "warm-up":
            raise RuntimeError("the warm-up job did not start first")
        # Idle and subscribed; on PostgreSQL, until the statistics of start-up are reported.
        time.sleep(_STATS_SETTLE_S if make_url(db_url).get_backend_name() == "postgresql" else 0.5)
        begin.set()
        _expect(ready, "armed", processes)
        before = _db_transactions(db_url)
        for n in range(jobs):
            key = f"j{n}"
            with Session(engine) as session, session.begin():
                producer.start_chain(session, ping, {"key": key})
            committed = time.monotonic()  # the wake-up is sent during the COMMIT, before this
            got, at = started.get(timeout=POLL.total_seconds() * 1.5)
            if got != key:
                raise RuntimeError(f"expected {key}, the worker started {got}")
            latencies.append(max(at - committed, 0.0) * 1000)
            time.sleep(0.01)  # let the worker settle back to idle
        time.sleep(0.5)  # the last job's wake-ups find nothing and the slots sleep again
    finally:
        stop.set()
        if begin.is_set():
            for acq, done in (counted.get(timeout=30) for _ in range(processes)):
                acquires += acq
                handled += done
        for process in workers:
            process.join(30)
        producer_notify.close()
        engine.dispose()
    if before is not None:
        # Every client of the run has exited and so reported its statistics.
        time.sleep(1.0)
        after = _db_transactions(db_url)
    commits = rollbacks = None
    if before is not None and after is not None:
        commits, rollbacks = after[0] - before[0], after[1] - before[1]
    return Result(latencies, acquires, handled, commits, rollbacks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--none-jobs", type=int, default=3)
    parser.add_argument(
        "--setups",
        default="postgres,redis,postgres-async,redis-async,nats,nats-hints,none",
        help="comma-separated setups",
    )
    parser.add_argument("--workers", default="sync,async", help="sync,async")
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes (one slot each); default 1"
    )
    args = parser.parse_args()

    engine = create_engine(args.db)
    q.metadata.drop_all(engine)
    q.metadata.create_all(engine)
    engine.dispose()
    print(f"database: {make_url(args.db).render_as_string(hide_password=True)}")
    print(f"poll interval {POLL.total_seconds():g} s; commit → handler start, milliseconds")
    print(
        f"{'setup':<14} {'worker':<6} {'procs':>5} {'jobs':>5} {'p50':>8} {'p95':>8} "
        f"{'p99':>8} {'max':>8} {'empty/job':>9} {'commit/job':>10} {'rollback/job':>12}"
    )
    for setup in args.setups.split(","):
        for kind in args.workers.split(","):
            jobs = args.none_jobs if setup == "none" else args.jobs
            result = measure(
                setup, kind, args.db, args.redis, jobs, args.processes, nats_url=args.nats
            )
            if result.handled != jobs:
                raise RuntimeError(f"{result.handled} handler starts counted for {jobs} jobs")
            if result.acquires < result.handled:
                raise RuntimeError("acquire statements not recognised: update _ACQUIRE")
            p = _percentiles(result.latencies_ms)
            empty = (result.acquires - result.handled) / jobs
            commits = "-" if result.db_commits is None else f"{result.db_commits / jobs:.2f}"
            rollbacks = "-" if result.db_rollbacks is None else f"{result.db_rollbacks / jobs:.2f}"
            print(
                f"{setup:<14} {kind:<6} {args.processes:>5} {jobs:>5} {p['p50']:>8.2f} "
                f"{p['p95']:>8.2f} {p['p99']:>8.2f} {p['max']:>8.2f} {empty:>9.2f} "
                f"{commits:>10} {rollbacks:>12}",
                flush=True,
            )
    engine = create_engine(args.db)
    q.metadata.drop_all(engine)
    engine.dispose()


if __name__ == "__main__":
    main()
