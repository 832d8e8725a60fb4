"""Wake-up latency: from a producer's COMMIT to the handler starting on an idle worker.

    python -m tests.bench_latency [--db URL] [--redis URL] [--jobs 200] [--none-jobs 3]

For each notify setup and each worker kind (thread ``Worker``, asyncio
``AsyncWorker``): one worker with ``poll_interval`` 30 s sits idle; the
producer commits one single-job chain at a time and waits until its handler
has started before committing the next. The producer and the worker have
separate adapter instances, so every wake-up travels through the backend
(PostgreSQL NOTIFY on its own connection, Redis PUBLISH), as between
processes. Prints p50/p95/p99/max in milliseconds.

Setups: ``memory`` (in-process adapter shared by producer and worker, the
floor), ``postgres`` (LISTEN/NOTIFY), ``redis`` (pub/sub) and ``none``
(adapters that deliver nothing: the worker finds each job at its next poll;
few jobs, since each waits up to 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import create_engine, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.notify import InMemoryNotify, NotifyAdapter

POLL = dt.timedelta(seconds=30)


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

    def close(self) -> None:
        pass


def _adapters(setup: str, db_url: str, redis_url: str) -> tuple[Any, Any]:
    """(producer's adapter, worker's adapter)."""
    if setup == "memory":
        shared = InMemoryNotify()
        return shared, shared
    if setup == "none":
        return _Silent(), _Silent()
    if setup == "postgres":
        from queuert_sa.notify.postgres import PostgresNotify

        return PostgresNotify(db_url), PostgresNotify(db_url)
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


def _produce(
    engine: Engine, producer: q.Queuert, job_type: Any, started: dict[str, float], jobs: int
) -> list[float]:
    """Commit ``jobs`` chains one at a time; the commit→start latency of each (ms)."""
    latencies: list[float] = []
    arrived = threading.Event()
    for n in range(jobs):
        key = f"j{n}"
        arrived.clear()
        started.pop("__event__", None)
        with Session(engine) as session, session.begin():
            producer.start_chain(session, job_type, {"key": key})
            # COMMIT happens as the block exits; time it right after.
        committed = time.perf_counter()
        deadline = committed + POLL.total_seconds() * 1.5
        while key not in started:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"job {key} did not start within {deadline - committed:.0f} s")
            time.sleep(0.0002)
        latencies.append((started[key] - committed) * 1000)
        time.sleep(0.005)  # let the worker settle back to idle
    return latencies


def run_sync(setup: str, db_url: str, redis_url: str, jobs: int) -> list[float]:
    engine = create_engine(db_url, pool_size=5)
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)
    producer_notify, worker_notify = _adapters(setup, db_url, redis_url)
    producer = q.Queuert(engine, job_types, notify=producer_notify)
    consumer = q.Queuert(engine, job_types, notify=worker_notify)
    started: dict[str, float] = {}
    worker = consumer.worker(poll_interval=POLL, handle_signals="never")

    @worker.handler(ping)
    def handle(attempt: q.Attempt[dict[str, Any], None]) -> q.Outcome:
        started[attempt.input["key"]] = time.perf_counter()
        return attempt.complete(None)

    worker.start()
    time.sleep(0.3)  # idle, subscribed
    try:
        return _produce(engine, producer, ping, started, jobs)
    finally:
        worker.stop()
        producer_notify.close()
        worker_notify.close()
        engine.dispose()


def run_async(setup: str, db_url: str, redis_url: str, jobs: int) -> list[float]:
    url = make_url(db_url)
    async_url = url.set(drivername="sqlite+aiosqlite") if url.get_backend_name() == "sqlite" else url
    engine = create_engine(db_url, pool_size=5)
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)
    producer_notify, worker_notify = _adapters(setup, db_url, redis_url)
    producer = q.Queuert(engine, job_types, notify=producer_notify)
    started: dict[str, float] = {}
    result: list[float] = []

    async def main() -> None:
        aengine = create_async_engine(async_url)
        consumer = q.AsyncQueuert(aengine, job_types, notify=worker_notify)
        worker = consumer.worker(poll_interval=POLL, handle_signals="never")

        @worker.handler(ping)
        async def handle(attempt: q.AsyncAttempt[dict[str, Any], None]) -> q.Outcome:
            started[attempt.input["key"]] = time.perf_counter()
            return attempt.complete(None)

        await worker.start()
        await asyncio.sleep(0.3)
        try:
            # The producer is a sync app thread; the loop keeps serving the worker.
            result.extend(
                await asyncio.to_thread(_produce, engine, producer, ping, started, jobs)
            )
        finally:
            await worker.stop()
            await aengine.dispose()

    try:
        asyncio.run(main())
    finally:
        producer_notify.close()
        worker_notify.close()
        engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--none-jobs", type=int, default=3)
    parser.add_argument(
        "--setups", default="memory,postgres,redis,none", help="comma-separated setups"
    )
    parser.add_argument("--workers", default="sync,async", help="sync,async")
    args = parser.parse_args()

    engine = create_engine(args.db)
    q.metadata.drop_all(engine)
    q.metadata.create_all(engine)
    engine.dispose()
    print(f"database: {make_url(args.db).render_as_string(hide_password=True)}")
    print(f"poll interval {POLL.total_seconds():g} s; commit → handler start, milliseconds")
    print(f"{'setup':<10} {'worker':<6} {'jobs':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for setup in args.setups.split(","):
        for kind in args.workers.split(","):
            jobs = args.none_jobs if setup == "none" else args.jobs
            run = run_sync if kind == "sync" else run_async
            samples = run(setup, args.db, args.redis, jobs)
            p = _percentiles(samples)
            print(
                f"{setup:<10} {kind:<6} {jobs:>5} {p['p50']:>8.2f} {p['p95']:>8.2f} "
                f"{p['p99']:>8.2f} {p['max']:>8.2f}",
                flush=True,
            )
    engine = create_engine(args.db)
    q.metadata.drop_all(engine)
    engine.dispose()


if __name__ == "__main__":
    main()
