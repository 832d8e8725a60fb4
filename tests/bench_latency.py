"""Wake-up latency: from a producer's COMMIT to the handler starting on an idle worker.

    python -m tests.bench_latency [--db URL] [--redis URL] [--jobs 200] [--none-jobs 3]

For each notify setup and each worker kind (thread ``Worker``, asyncio
``AsyncWorker``): one worker, in a process of its own with ``poll_interval``
30 s, sits idle; the producer (this process) commits one single-job chain at
a time and waits until its handler has started before committing the next.
Every wake-up travels through the backend, as between an application and its
worker processes. Prints p50/p95/p99/max in milliseconds (commit returned →
handler called, both read from the machine's monotonic clock).

Setups: ``postgres`` (LISTEN/NOTIFY), ``redis`` (pub/sub) and ``none``
(adapters that deliver nothing: the worker finds each job at its next poll;
few jobs, since each waits up to 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q

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


def _worker_process(
    setup: str,
    kind: str,
    db_url: str,
    redis_url: str,
    started: Any,
    ready: Any,
    stop: Any,
) -> None:
    """A worker in its own process: puts ``(key, time.monotonic())`` as each handler starts.

    ``time.monotonic()`` is CLOCK_MONOTONIC on Linux, one clock for every
    process of the machine, so the producer can subtract its commit time.
    """
    _, notify = _adapters(setup, db_url, redis_url)
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)
    if kind == "sync":
        engine = create_engine(db_url)
        worker = q.Queuert(engine, job_types, notify=notify).worker(
            poll_interval=POLL, handle_signals="never"
        )

        @worker.handler(ping)
        def handle(attempt: q.Attempt[dict[str, Any], None]) -> q.Outcome:
            started.put((attempt.input["key"], time.monotonic()))
            return attempt.complete(None)

        worker.start()
        ready.set()
        stop.wait()
        worker.stop()
        engine.dispose()
    else:

        async def main() -> None:
            url = make_url(db_url)
            if url.get_backend_name() == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            aengine = create_async_engine(url)
            aworker = q.AsyncQueuert(aengine, job_types, notify=notify).worker(
                poll_interval=POLL, handle_signals="never"
            )

            @aworker.handler(ping)
            async def handle(attempt: q.AsyncAttempt[dict[str, Any], None]) -> q.Outcome:
                started.put((attempt.input["key"], time.monotonic()))
                return attempt.complete(None)

            await aworker.start()
            ready.set()
            await asyncio.to_thread(stop.wait)
            await aworker.stop()
            await aengine.dispose()

        asyncio.run(main())
    notify.close()


def measure(setup: str, kind: str, db_url: str, redis_url: str, jobs: int) -> list[float]:
    """Commit ``jobs`` chains one at a time; the commit→start latency of each (ms)."""
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Queue()
    ready, stop = ctx.Event(), ctx.Event()
    process = ctx.Process(
        target=_worker_process,
        args=(setup, kind, db_url, redis_url, started, ready, stop),
        daemon=True,
    )
    process.start()
    engine = create_engine(db_url)
    producer_notify, _ = _adapters(setup, db_url, redis_url)
    job_types = q.JobTypes()
    ping = job_types.entry("ping", input=dict, output=None)
    producer = q.Queuert(engine, job_types, notify=producer_notify)
    latencies: list[float] = []
    try:
        if not ready.wait(60):
            raise RuntimeError("the worker process did not start")
        time.sleep(0.5)  # idle and subscribed
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
    finally:
        stop.set()
        process.join(30)
        producer_notify.close()
        engine.dispose()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--none-jobs", type=int, default=3)
    parser.add_argument("--setups", default="postgres,redis,none", help="comma-separated setups")
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
            samples = measure(setup, kind, args.db, args.redis, jobs)
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
