"""Every option that takes a length of time takes a number of seconds as well as a ``timedelta``.

``poll_interval=1`` used to be a raw ``TypeError`` deep inside the worker. Now
a number is seconds everywhere, and anything else (a string, a bool, NaN) is
refused where it is passed, with a message that names the option.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.notify.postgres import PostgresNotify

from .app import WorkIn, job_types, signup, work
from .conftest import Db
from .workers import async_url

SECONDS = dt.timedelta(seconds=1)


def close_to(when: dt.datetime, expected: dt.datetime) -> bool:
    return abs((when - expected).total_seconds()) < 5


@pytest.mark.parametrize("bad", ["5", True, None, math.nan, [5]])
def test_a_duration_that_is_not_one_is_refused_with_the_options_name(db: Db, bad: Any) -> None:
    client = q.Queuert(db.engine, job_types)
    with pytest.raises(q.WorkerConfigError, match="poll_interval takes a timedelta or a number"):
        client.worker(poll_interval=bad)
    worker = client.worker()
    with pytest.raises(q.WorkerConfigError, match="lease takes a timedelta or a number of sec"):
        worker.handler(work, mode="staged", lease=bad)
    with pytest.raises(TypeError, match=r"Backoff\(initial=\.\.\.\) takes a timedelta or a num"):
        q.Backoff(initial=bad)
    with Session(db.engine) as s, s.begin():
        if bad is not None:  # run_in=None is "no delay"
            with pytest.raises(q.InvalidScheduleError, match="run_in takes a timedelta or a"):
                client.start_chain(s, work, {"n": 1, "sleep": 0}, run_in=bad)
    with pytest.raises(TypeError, match="older_than takes a timedelta or a number of seconds"):
        client.cleanup(older_than=bad)


def test_worker_and_handler_options_take_seconds(db: Db) -> None:
    client = q.Queuert(db.engine, job_types)
    worker = client.worker(poll_interval=0.25, shutdown_grace=7)
    assert (worker.poll_interval, worker.shutdown_grace) == (0.25 * SECONDS, 7 * SECONDS)

    @worker.handler(work, timeout=30, lease=5)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(attempt.input["n"])

    @worker.batch_handler(signup, size=10, timeout=12.5)
    def handle_all(attempts: list[q.Attempt[Any, Any]]) -> list[q.Outcome]:
        return [a.complete(None) for a in attempts]

    assert worker.handlers["work"].timeout == 30 * SECONDS
    assert worker.handlers["work"].lease == 5 * SECONDS
    assert worker.handlers["signup"].timeout == 12.5 * SECONDS
    worker.start()
    assert worker.stop(timeout=5) is True


def test_backoff_and_reschedule_take_seconds() -> None:
    assert q.Backoff(initial=2, maximum=60.5) == q.Backoff(
        initial=2 * SECONDS, maximum=60.5 * SECONDS
    )
    assert q.Reschedule(run_in=90).run_in == 90 * SECONDS
    with pytest.raises(ValueError, match="must not be negative"):
        q.Backoff(initial=-1)


def test_run_in_seconds_schedules_starts_and_continuations(db: Db) -> None:
    client = q.Queuert(db.engine, job_types)
    now = dt.datetime.now(dt.UTC)
    with Session(db.engine) as s, s.begin():
        later = client.start_chain(s, work, {"n": 1, "sleep": 0}, run_in=60)
        (batch,) = client.start_chains(s, [work({"n": 2, "sleep": 0}, run_in=120.5)])
    assert close_to(client.get_job(later.id).scheduled_at, now + 60 * SECONDS)
    assert close_to(client.get_job(batch.id).scheduled_at, now + 120.5 * SECONDS)


def test_await_chain_takes_seconds_on_both_clients(db: Db) -> None:
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 1, "sleep": 0}, run_in=3600)
    with pytest.raises(q.WaitChainTimeoutError):
        client.await_chain(chain.id, timeout=0.2, poll_interval=0.05)

    async def wait_async() -> None:
        engine = create_async_engine(async_url(db))
        try:
            aclient = q.AsyncQueuert(engine, job_types)
            with pytest.raises(q.WaitChainTimeoutError):
                await aclient.await_chain(chain.id, timeout=0.2, poll_interval=0.05)
            assert await aclient.cleanup(older_than=3600) == 0
        finally:
            await engine.dispose()

    asyncio.run(wait_async())
    assert client.cleanup(older_than=86400.0) == 0


def test_notify_adapters_take_seconds(pg: Db) -> None:
    notify = PostgresNotify(pg.url, connect_timeout=3, health_check_interval=10)
    notify.close()
    with pytest.raises(TypeError, match="health_check_interval takes a timedelta or a number"):
        PostgresNotify(pg.url, health_check_interval="10")  # type: ignore[arg-type]
