"""Edges of the workers' lifecycle: lease keeper threads, embedded stops, stray cancellations."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa._attempt import AttemptState
from queuert_sa._entities import Job
from queuert_sa._worker._leases import LeaseKeeper
from queuert_sa.models import JobStatus

from . import app
from .conftest import Db
from .workers import async_url

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _state() -> AttemptState:
    job_id = uuid.uuid4()
    job: Job[int] = Job(
        id=job_id,
        type_name="work",
        chain_id=job_id,
        chain_type_name="work",
        chain_index=0,
        input=1,
        output=None,
        status=JobStatus.RUNNING,
        created_at=NOW,
        scheduled_at=NOW,
        completed_at=None,
        completed_by=None,
        attempt=1,
        last_attempt_at=NOW,
        last_attempt_error=None,
        leased_by="w",
        leased_until=NOW,
        deduplication_key=None,
    )
    return AttemptState(
        job_types=app.job_types, job_type=app.work, job=job, worker_id="w", mode="staged"
    )


def _keepers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "queuert-lease-keeper"]


def test_a_keeper_thread_that_outlived_close_does_not_come_back() -> None:
    """A renewal stuck past close()'s wait (a lock held elsewhere): the next hold() starts a
    new keeper, and the stuck one, once free, stops instead of renewing beside it."""
    stuck, release = threading.Event(), threading.Event()
    renewals: list[str] = []

    def renew(state: AttemptState, lease: dt.timedelta) -> bool | None:
        renewals.append(threading.current_thread().name + str(id(threading.current_thread())))
        if not stuck.is_set():
            stuck.set()
            release.wait(20)
        return True

    keeper = LeaseKeeper(q.InMemoryNotify(), renew)
    first = _state()
    keeper.check_now(first.job.id)
    keeper.hold(first, dt.timedelta(seconds=0.02))  # renewed at once: half of 20 ms
    assert stuck.wait(5)
    keeper.release(first)
    keeper.close()  # gives up on the stuck thread after its wait
    second = _state()
    keeper.hold(second, dt.timedelta(seconds=60))
    release.set()
    deadline = time.monotonic() + 5
    while len(_keepers()) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_keepers()) == 1
    keeper.close()


def test_a_thread_engine_for_another_database_is_refused(tmp_path: object) -> None:
    aqueuert = q.AsyncQueuert(create_async_engine("sqlite+aiosqlite:///:memory:"), app.job_types)
    other = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(q.WorkerConfigError, match="same database"):
        aqueuert.worker(thread_engine=other)


def test_an_async_def_handler_given_by_name_is_refused_with_the_types_name(db: Db) -> None:
    worker = q.Queuert(db.engine, app.job_types).worker()

    async def handler(attempt: q.AsyncAttempt[app.WorkIn, int]) -> q.Outcome:
        return attempt.complete(1)

    with pytest.raises(q.WorkerConfigError, match="'work' is 'async def'"):
        worker.handler("work")(handler)  # type: ignore[arg-type]


def _start(db: Db, n: int = 1) -> list[q.Chain[app.WorkIn, int]]:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as s, s.begin():
        return [client.start_chain(s, app.work, {"n": i, "sleep": 0}) for i in range(n)]


def test_an_embedded_async_worker_raises_a_handlers_systemexit_from_stop(db: Db) -> None:
    """start()/stop() (a FastAPI lifespan): the handler's SystemExit stops the worker and
    stop() raises it, as run() does, instead of the worker going quiet."""
    (chain,) = _start(db)

    async def main() -> BaseException | None:
        engine = create_async_engine(async_url(db))
        try:
            worker = q.AsyncQueuert(engine, app.job_types).worker(
                poll_interval=dt.timedelta(seconds=30)
            )

            @worker.handler(app.work)
            async def leave(attempt: q.AsyncAttempt[app.WorkIn, int]) -> q.Outcome:
                raise SystemExit(5)

            await worker.start()
            for _ in range(500):
                if worker.failed:
                    break
                await asyncio.sleep(0.01)
            try:
                await worker.stop()
            except SystemExit as exc:
                return exc
            return None
        finally:
            await engine.dispose()

    ended = asyncio.run(main())
    assert isinstance(ended, SystemExit)
    assert ended.code == 5
    assert q.Queuert(db.engine, app.job_types).get_job(chain.id).attempt == 1


def test_a_cancelled_future_inside_a_handler_is_its_error_not_the_slots_end(db: Db) -> None:
    """A handler awaiting something another task cancelled gets CancelledError: that is a
    failed attempt (recorded, retried), and the slot goes on to the next job."""
    first, second = _start(db, 2)

    async def main() -> tuple[int, int]:
        engine = create_async_engine(async_url(db))
        try:
            worker = q.AsyncQueuert(engine, app.job_types).worker()

            @worker.handler(app.work)
            async def waits(attempt: q.AsyncAttempt[app.WorkIn, int]) -> q.Outcome:
                if attempt.input["n"] == 0:
                    future = asyncio.get_running_loop().create_future()
                    future.cancel()
                    await future
                return attempt.complete(attempt.input["n"])

            await worker.drain()
            return worker.completed, worker.failed
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == (1, 1)
    client = q.Queuert(db.engine, app.job_types)
    job = client.get_job(first.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert job.last_attempt_error is not None
    assert "CancelledError" in job.last_attempt_error
    assert client.get_chain(second.id).is_completed
