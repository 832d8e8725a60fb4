"""Fleet-wide rate limits (``@worker.handler(t, rate=q.Rate(n, per=...))``): attempts start
no faster than the rate across workers, per key when asked, and a job over the rate is
delayed (never failed, its attempt count untouched); bad rates are refused."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any, TypedDict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Span
from .conftest import Db, make_db


class CallIn(TypedDict):
    n: int
    customer: str


types = q.JobTypes()
call = types.entry("call-api", input=CallIn, output=int)


def worker_with(client: q.Queuert, rate: q.Rate, concurrency: int = 8) -> q.Worker:
    worker = client.worker(concurrency=concurrency, poll_interval=0.2, handle_signals="never")

    @worker.handler(call, rate=rate)
    def handle(attempt: q.Attempt[CallIn, int]) -> q.Outcome:
        now = time.time()
        attempt.session.add(
            Span(
                job_id=str(attempt.job.id), label=attempt.input["customer"], started=now, ended=now
            )
        )
        return attempt.complete(attempt.input["n"])

    return worker


def run_all(db: Db, workers: list[q.Worker], total: int, timeout: float = 30) -> None:
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with Session(db.engine) as s:
                if s.query(Job).filter(Job.status == "completed").count() == total:
                    return
            time.sleep(0.05)
        raise AssertionError("the jobs did not all complete")
    finally:
        for worker in workers:
            assert worker.stop(timeout=30)


def starts(db: Db, label: str | None = None) -> list[float]:
    with Session(db.engine) as s:
        stmt = select(Span.started)
        if label is not None:
            stmt = stmt.where(Span.label == label)
        return sorted(s.scalars(stmt).all())


def start_calls(db: Db, client: q.Queuert, n: int, customers: tuple[str, ...] = ("a",)) -> None:
    with Session(db.engine) as s, s.begin():
        client.start_chains(
            s, [call({"n": i, "customer": customers[i % len(customers)]}) for i in range(n)]
        )


def assert_delayed_not_failed(db: Db) -> None:
    with Session(db.engine) as s:
        rows = s.execute(select(Job.status, Job.attempt, Job.last_attempt_error)).all()
    assert {(str(status), attempt, error) for status, attempt, error in rows} == {
        ("completed", 1, None)
    }


def test_two_workers_start_no_faster_than_the_rate(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    start_calls(db, client, 30)
    rate = q.Rate(30, per=dt.timedelta(seconds=1))
    run_all(db, [worker_with(client, rate), worker_with(client, rate)], 30)
    begun = starts(db)
    # burst=1: one start every 1/30 s, the first at once: 29 gaps take about 0.97 s.
    assert begun[-1] - begun[0] >= 29 / 30 - 0.05
    assert begun[-1] - begun[0] < 2.0
    assert_delayed_not_failed(db)


def test_a_per_key_rate_spaces_each_key_and_lets_keys_interleave(pg: Db) -> None:
    client = q.Queuert(pg.engine, types)
    start_calls(pg, client, 20, customers=("acme", "globex"))
    rate = q.Rate(10, per=1, key=lambda raw: raw["customer"])
    run_all(pg, [worker_with(client, rate)], 20)
    windows = []
    for customer in ("acme", "globex"):
        begun = starts(pg, customer)
        assert len(begun) == 10
        # Tokens come every 0.1 s per key; a handler starts a little after its token.
        assert begun[-1] - begun[0] >= 0.9 - 0.06, (customer, begun)
        windows.append((begun[0], begun[-1]))
    (a_first, a_last), (g_first, g_last) = windows
    shared = min(a_last, g_last) - max(a_first, g_first)
    assert shared > 0.8 * min(a_last - a_first, g_last - g_first)  # side by side, not in turn
    assert_delayed_not_failed(pg)


def test_a_burst_starts_at_once_then_the_rate_holds(tmp_path: Path) -> None:
    db = make_db("sqlite", tmp_path)
    client = q.Queuert(db.engine, types)
    start_calls(db, client, 15)
    run_all(db, [worker_with(client, q.Rate(10, per=1, burst=5), concurrency=4)], 15)
    begun = starts(db)
    assert begun[4] - begun[0] < 0.2  # the burst
    assert begun[-1] - begun[0] >= 1.0 - 0.05  # then ten more at ten a second
    assert_delayed_not_failed(db)
    db.engine.dispose()


def test_a_rate_wait_is_reported_to_observers(pg: Db) -> None:
    recorder = q.RecordingObserver()
    client = q.Queuert(pg.engine, types, observers=[recorder])
    start_calls(pg, client, 3)
    worker = worker_with(client, q.Rate(1, per=dt.timedelta(seconds=10)), concurrency=1)
    assert worker.drain() == 1  # one token; the next two wait about ten seconds
    delays = [event["delay"] for event in recorder.of("job_rate_limited")]
    assert delays
    assert 9.0 < delays[0] <= 10.0
    with Session(pg.engine) as s:
        pending = s.execute(
            select(Job.scheduled_at, Job.attempt).where(Job.status == "pending")
        ).all()
    assert len(pending) == 2
    assert all(attempt == 0 for _, attempt in pending)
    # The one looked at is delayed to the next token; the worker leaves the type be until then.
    latest = max(when for when, _ in pending)
    assert latest > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    assert worker.drain() == 0


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        ((0,), {"per": 1}, "count=...) must be a whole number"),
        ((5,), {"per": 0}, "per=...) must be a positive period"),
        ((5,), {"per": 1, "burst": 0}, "burst=...) must be a whole number"),
        ((5,), {"per": 1, "key": "customer"}, "key=...) must be a function"),
    ],
)
def test_bad_rates_are_refused(
    args: tuple[Any, ...], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(q.WorkerConfigError, match=re.escape(message)):
        q.Rate(*args, **options)


def test_a_rate_is_refused_with_batch_and_must_be_a_rate(db: Db) -> None:
    worker = q.Queuert(db.engine, types).worker()
    with pytest.raises(q.WorkerConfigError, match="cannot be combined"):
        worker.handler(call, rate=q.Rate(1, per=1), batch=5)(lambda a: a.complete(0))
    with pytest.raises(q.WorkerConfigError, match=r"takes q\.Rate"):
        worker.handler(call, rate=5)(lambda a: a.complete(0))  # type: ignore[arg-type]
