"""Fleet-wide concurrency limits (``@worker.handler(t, max_running=N)``): at most N attempts
of a type at once, measured from the job rows (each attempt's ``last_attempt_at`` to its
``completed_at``), across the slots of one worker and across workers on real connections;
other types keep flowing; bad options are refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, TypedDict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Span, most_at_once
from .conftest import Db, make_db


class SleepIn(TypedDict):
    n: int
    sleep: float


types = q.JobTypes()
slow = types.entry("slow", input=SleepIn, output=int)
fast = types.entry("fast", input=SleepIn, output=int)


def start(
    db: Db, client: q.Queuert, job_type: q.JobType[SleepIn, int], n: int, sleep: float
) -> None:
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, [job_type({"n": i, "sleep": sleep}) for i in range(n)])


def spans(db: Db, label: str) -> list[tuple[float, float]]:
    with Session(db.engine) as s:
        rows = s.execute(select(Span.started, Span.ended).where(Span.label == label)).all()
    return [(started, ended) for started, ended in rows]


def run_until_done(workers: list[q.Worker], db: Db, total: int, timeout: float = 60) -> None:
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Session(db.engine) as s:
                done = s.query(Job).filter(Job.status == "completed").count()
            if done == total:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {done} of {total} jobs completed in {timeout} s")
    finally:
        for worker in workers:
            assert worker.stop(timeout=30)


def limited_worker(
    client: q.Queuert, *, mode: str, concurrency: int, seen: list[str] | None = None
) -> q.Worker:
    worker = client.worker(concurrency=concurrency, poll_interval=0.2, handle_signals="never")

    def sleepy(attempt: q.Attempt[SleepIn, int]) -> q.Outcome:
        label = attempt.job.type_name
        if mode == "staged":
            with attempt.prepare():
                pass
            began = time.time()
            time.sleep(attempt.input["sleep"])
            with attempt.transaction() as session:
                session.add(
                    Span(job_id=str(attempt.job.id), label=label, started=began, ended=time.time())
                )
                return attempt.complete(attempt.input["n"])
        began = time.time()
        time.sleep(attempt.input["sleep"])
        attempt.session.add(
            Span(job_id=str(attempt.job.id), label=label, started=began, ended=time.time())
        )
        return attempt.complete(attempt.input["n"])

    worker.handler(slow, mode=mode, max_running=3)(sleepy)  # type: ignore[arg-type]
    worker.handler(fast, mode=mode)(sleepy)  # type: ignore[arg-type]
    return worker


@pytest.mark.parametrize("mode", ["atomic", "staged"])
def test_two_workers_of_eight_slots_run_at_most_three_at_once(pg: Db, mode: str) -> None:
    client = q.Queuert(pg.engine, types)
    start(pg, client, slow, 24, 0.15)
    start(pg, client, fast, 40, 0.01)
    workers = [limited_worker(client, mode=mode, concurrency=8) for _ in range(2)]
    run_until_done(workers, pg, 64)
    limited = spans(pg, "slow")
    assert len(limited) == 24
    assert most_at_once(limited) == 3  # the limit, reached, never passed
    # The other type was not held up behind the limited one: it finished first.
    assert max(e for _, e in spans(pg, "fast")) < max(e for _, e in limited)


def test_staged_attempts_on_sqlite_keep_the_limit(tmp_path: Path) -> None:
    db = make_db("sqlite", tmp_path)
    client = q.Queuert(db.engine, types)
    start(db, client, slow, 12, 0.15)
    worker = limited_worker(client, mode="staged", concurrency=6)
    run_until_done([worker], db, 12)
    assert most_at_once(spans(db, "slow")) == 3
    db.engine.dispose()


def test_a_limit_wait_is_reported_to_observers_and_the_job_is_untouched(pg: Db) -> None:
    recorder = q.RecordingObserver()
    client = q.Queuert(pg.engine, types, observers=[recorder])
    start(pg, client, slow, 2, 0.0)
    worker = client.worker(concurrency=1, handle_signals="never")
    inside, release = threading.Event(), threading.Event()

    @worker.handler(slow, max_running=1)
    def hold(attempt: q.Attempt[SleepIn, int]) -> q.Outcome:
        inside.set()
        assert release.wait(10)
        return attempt.complete(0)

    rival = client.worker(concurrency=1, handle_signals="never")
    rival.handler(slow, max_running=1)(lambda attempt: attempt.complete(1))
    runner = threading.Thread(target=worker.drain, kwargs={"max_jobs": 1})
    runner.start()
    try:
        assert inside.wait(10)
        assert rival.drain() == 0  # the other job is due, but one attempt of its type runs
    finally:
        release.set()
        runner.join(10)
    (event,) = recorder.of("job_limit_reached")
    assert event.fields == {"type_name": "slow", "worker_id": rival.worker_id, "max_running": 1}
    with Session(pg.engine) as s:
        attempts = sorted(s.scalars(select(Job.attempt).where(Job.type_name == "slow")).all())
    assert attempts == [0, 1]  # the job left pending kept its attempt count
    time.sleep(0.3)  # the rival looks at a type it found full again after 250 ms
    assert rival.drain() == 1  # the first is done: the second runs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_running": 0}, "must be a whole number of attempts"),
        ({"max_running": "3"}, "must be a whole number of attempts"),
        ({"max_running": True}, "must be a whole number of attempts"),
        ({"max_running": 2, "batch": 10}, "cannot be combined"),
    ],
)
def test_bad_limits_are_refused_at_registration(
    db: Db, options: dict[str, Any], message: str
) -> None:
    worker = q.Queuert(db.engine, types).worker()
    with pytest.raises(q.WorkerConfigError, match=message):
        worker.handler(slow, **options)(lambda attempt: attempt.complete(0))
