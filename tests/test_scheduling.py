"""Scheduling: run_at/run_in, acquisition order, trigger_job and Reschedule.

Pins SEMANTICS.md: ``scheduled_at`` is clamped to now (a past ``run_at`` never
jumps the queue); workers take the oldest due job first and never a job before
its time; an idle worker sleeps until the next known due time, not the whole
poll interval; ``trigger_job`` makes a pending job due now (one already due
keeps its place) and wakes workers only after COMMIT; ``Reschedule`` from a
handler picks the retry time and records its reason.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any, TypedDict

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q

from .app import Effect
from .conftest import Db
from .test_worker import FakeClock


class StepIn(TypedDict):
    n: int


types = q.JobTypes()
step = types.entry("sched-step", input=StepIn, output=int)
first = types.entry("sched-first", input=StepIn, continues_with=["sched-next"])
next_step = types.define("sched-next", input=StepIn, output=int)
gate = types.entry("sched-gate", input=StepIn, output=int)
gated = types.entry("sched-gated", input=StepIn, output=int, blockers=[gate])

MS = dt.timedelta(milliseconds=1)


def effects(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Effect)).scalar_one()


def recording_worker(client: q.Queuert, ran: list[int], **options: Any) -> q.Worker:
    """A worker whose handlers record the input ``n`` of each job they complete."""
    worker = client.worker(**options)

    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        ran.append(attempt.input["n"])
        return attempt.complete(attempt.input["n"])

    for job_type in (step, next_step, gate, gated):
        worker.handler(job_type)(handle)
    return worker


def start(client: q.Queuert, db: Db, n: int, **options: Any) -> q.Chain[StepIn, Any]:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, step, {"n": n}, **options)


def test_past_run_at_does_not_jump_ahead_of_older_due_jobs(db: Db) -> None:
    clock = FakeClock()
    t0 = clock.now
    client = q.Queuert(db.engine, types, clock=clock)
    start(client, db, 1)
    start(client, db, 2, run_at=t0 + dt.timedelta(seconds=30))
    clock.advance(dt.timedelta(minutes=1))
    past = start(client, db, 3, run_at=t0 - dt.timedelta(days=1))
    clock.advance(dt.timedelta(minutes=1))
    negative = start(client, db, 4, run_in=dt.timedelta(hours=-1))
    clock.advance(dt.timedelta(minutes=1))
    start(client, db, 5)

    # Clamped to the moment they were started.
    assert client.get_job(past.id).scheduled_at == t0 + dt.timedelta(minutes=1)
    assert client.get_job(negative.id).scheduled_at == t0 + dt.timedelta(minutes=2)
    ran: list[int] = []
    assert recording_worker(client, ran).drain() == 5
    assert ran == [1, 2, 3, 4, 5]


def test_future_jobs_are_not_acquired_before_their_time(db: Db) -> None:
    clock = FakeClock()
    t0 = clock.now
    client = q.Queuert(db.engine, types, clock=clock)
    in_ten = start(client, db, 10, run_in=dt.timedelta(minutes=10))
    # run_at in another time zone means the same instant.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    at_twenty = start(client, db, 20, run_at=(t0 + dt.timedelta(minutes=20)).astimezone(plus_two))
    assert client.get_job(in_ten.id).scheduled_at == t0 + dt.timedelta(minutes=10)
    assert client.get_job(at_twenty.id).scheduled_at == t0 + dt.timedelta(minutes=20)
    ran: list[int] = []
    worker = recording_worker(client, ran)

    assert worker.drain() == 0
    clock.now = t0 + dt.timedelta(minutes=10) - MS
    assert worker.drain() == 0
    clock.advance(MS)
    assert worker.drain() == 1
    assert ran == [10]
    clock.now = t0 + dt.timedelta(minutes=20) - MS
    assert worker.drain() == 0
    assert client.get_job(at_twenty.id).status == "pending"
    clock.advance(MS)
    assert worker.drain() == 1
    assert ran == [10, 20]


def test_continuation_run_in_is_honoured_and_past_run_at_clamped(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    with Session(db.engine) as s, s.begin():
        later = client.start_chain(s, first, {"n": 1})
        now = client.start_chain(s, first, {"n": 2})
    ran: list[int] = []
    worker = recording_worker(client, ran)

    @worker.handler(first)
    def handle_first(attempt: q.Attempt[StepIn, None]) -> q.Outcome:
        n = attempt.input["n"]
        if n == 1:
            return attempt.continue_with(next_step, {"n": 10 + n}, run_in=dt.timedelta(minutes=5))
        return attempt.continue_with(
            next_step, {"n": 10 + n}, run_at=clock.now - dt.timedelta(days=3)
        )

    # Both firsts, then only the continuation whose past run_at was clamped to now.
    assert worker.drain() == 3
    assert ran == [12]
    assert client.get_chain(later.id).status == "pending"
    assert client.get_chain(now.id).status == "completed"
    clock.advance(dt.timedelta(minutes=5) - MS)
    assert worker.drain() == 0
    clock.advance(MS)
    assert worker.drain() == 1
    assert ran == [12, 11]


def test_idle_worker_sleeps_until_the_next_due_time_not_the_poll_interval(db: Db) -> None:
    """Real time: the only sleeping test here (one per engine)."""
    client = q.Queuert(db.engine, types, notify=q.InMemoryNotify())
    worker = client.worker(poll_interval=dt.timedelta(seconds=30))
    started: list[float] = []
    ran = threading.Event()

    @worker.handler(step)
    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        started.append(time.time())
        ran.set()
        return attempt.complete(1)

    delay = 1.5
    worker.start()
    try:
        time.sleep(0.2)  # nothing to do: the worker sleeps on its 30 s poll
        before = time.time()
        chain = start(client, db, 1, run_in=dt.timedelta(seconds=delay))
        committed = time.time()
        # Woken by the commit, it finds the job not yet due and must sleep until
        # its scheduled_at; sleeping the poll interval instead fails this.
        assert ran.wait(delay + 10)
    finally:
        assert worker.stop()
    scheduled = client.get_job(chain.id).scheduled_at.timestamp()
    assert started[0] >= scheduled >= before + delay
    assert started[0] - committed <= delay * 1.1 + 0.5
    assert client.get_chain(chain.id).output == 1


def test_trigger_runs_a_future_job_at_once_after_commit(db: Db) -> None:
    notify = q.InMemoryNotify()
    client = q.Queuert(db.engine, types, notify=notify)
    worker = client.worker(poll_interval=dt.timedelta(seconds=30))
    ran = threading.Event()

    @worker.handler(step)
    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        ran.set()
        return attempt.complete(attempt.input["n"])

    chain = start(client, db, 7, run_in=dt.timedelta(hours=1))
    worker.start()
    try:
        time.sleep(0.2)  # the worker sleeps: its only job is an hour away
        with Session(db.engine) as s, s.begin():
            before = dt.datetime.now(dt.UTC)
            job = client.trigger_job(s, chain.id)
            assert job.status == "pending"
            assert before <= job.scheduled_at <= dt.datetime.now(dt.UTC)
            # Nothing runs, and no worker is woken, before COMMIT.
            assert not ran.wait(0.2)
        committed = time.monotonic()
        assert ran.wait(10)
        assert time.monotonic() - committed < 5  # not the 30 s poll, not the hour
    finally:
        assert worker.stop()
    assert client.get_chain(chain.id).output == 7


def test_trigger_keeps_an_already_due_job_in_its_place(db: Db) -> None:
    clock = FakeClock()
    t0 = clock.now
    client = q.Queuert(db.engine, types, clock=clock)
    due = start(client, db, 1)
    future = start(client, db, 3, run_in=dt.timedelta(hours=1))
    clock.advance(dt.timedelta(minutes=1))
    start(client, db, 2)
    clock.advance(dt.timedelta(minutes=1))

    with Session(db.engine) as s, s.begin():
        triggered = client.trigger_job(s, str(future.id))
        kept = client.trigger_job(s, due.id)
    assert triggered.scheduled_at == clock.now
    assert kept.scheduled_at == t0
    assert client.get_job(due.id).scheduled_at == t0
    assert client.get_job(future.id).scheduled_at == t0 + dt.timedelta(minutes=2)

    ran: list[int] = []
    assert recording_worker(client, ran).drain() == 3
    # The triggered job is due now, behind the jobs that were due before it.
    assert ran == [1, 2, 3]


def test_trigger_cuts_a_retry_backoff_short(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    chain = start(client, db, 1)
    worker = client.worker(backoff=q.Backoff(initial=dt.timedelta(minutes=10), jitter=0))
    attempts: list[int] = []

    @worker.handler(step)
    def flaky(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        attempts.append(attempt.job.attempt)
        if attempt.job.attempt == 1:
            raise ConnectionError("down")
        return attempt.complete(1)

    assert worker.drain() == 1
    assert worker.drain() == 0  # waiting out the 10 minute backoff
    with Session(db.engine) as s, s.begin():
        job = client.trigger_job(s, chain.id)
    assert job.scheduled_at == clock.now
    assert job.attempt == 1
    assert worker.drain() == 1
    assert attempts == [1, 2]
    assert client.get_chain(chain.id).status == "completed"


def test_trigger_refuses_unknown_blocked_running_and_completed_jobs(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        blocker = client.start_chain(s, gate, {"n": 1})
        waiting = client.start_chain(s, gated, {"n": 2}, blockers=[blocker])
    assert waiting.status == "blocked"
    scheduled_before = client.get_job(waiting.id).scheduled_at

    unknown = uuid.uuid4()
    with Session(db.engine) as s, pytest.raises(q.JobNotFoundError) as not_found:
        client.trigger_job(s, unknown)
    assert not_found.value.job_id == unknown

    with Session(db.engine) as s, pytest.raises(q.InvalidJobIdError):
        client.trigger_job(s, "not-a-uuid")

    with Session(db.engine) as s, pytest.raises(q.JobNotTriggerableError) as blocked:
        client.trigger_job(s, waiting.id)
    assert (blocked.value.status, blocked.value.job_id) == ("blocked", waiting.id)
    assert "blocker" in str(blocked.value)
    job = client.get_job(waiting.id)
    assert (job.status, job.scheduled_at) == ("blocked", scheduled_before)

    worker = client.worker()
    refusals: list[q.JobNotTriggerableError] = []
    worker.handler(gate)(lambda attempt: attempt.complete(1))

    @worker.handler(gated)
    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        try:
            client.trigger_job(attempt.session, attempt.job.id)
        except q.JobNotTriggerableError as exc:
            refusals.append(exc)
        return attempt.complete(2)

    assert worker.drain() == 2
    assert [r.status for r in refusals] == ["running"]
    assert client.get_chain(waiting.id).status == "completed"

    with Session(db.engine) as s, pytest.raises(q.JobNotTriggerableError) as done:
        client.trigger_job(s, blocker.id)
    assert done.value.status == "completed"
    assert isinstance(done.value, q.QueuertError)


def test_rolled_back_trigger_changes_nothing_and_sends_no_wakeup(db: Db) -> None:
    clock = FakeClock()
    notify = q.InMemoryNotify()
    client = q.Queuert(db.engine, types, clock=clock, notify=notify)
    chain = start(client, db, 1, run_in=dt.timedelta(hours=1))
    original = client.get_job(chain.id).scheduled_at
    woken: list[str] = []
    notify.listen_job_scheduled([step.name], lambda name, count: woken.append(name))
    sent = notify.sent["job_scheduled"]
    ran: list[int] = []
    worker = recording_worker(client, ran)

    with Session(db.engine) as s:
        assert client.trigger_job(s, chain.id).scheduled_at == clock.now
        s.rollback()
    with Session(db.engine) as s, s.begin():
        savepoint = s.begin_nested()
        client.trigger_job(s, chain.id)
        savepoint.rollback()

    assert client.get_job(chain.id).scheduled_at == original
    assert (notify.sent["job_scheduled"], woken) == (sent, [])
    assert worker.drain() == 0

    with Session(db.engine) as s, s.begin():
        client.trigger_job(s, chain.id)
        assert woken == []
    assert (notify.sent["job_scheduled"], woken) == (sent + 1, [step.name])
    assert worker.drain() == 1
    assert ran == [1]


def test_reschedule_records_the_reason_and_runs_again_at_that_time(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    chain = start(client, db, 1)
    worker = client.worker()
    seen: list[tuple[int, str | None]] = []

    @worker.handler(step)
    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        seen.append((attempt.job.attempt, attempt.job.last_attempt_error))
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="step"))
        attempt.session.flush()
        if attempt.job.attempt == 1:
            raise q.Reschedule(run_in=dt.timedelta(minutes=7), reason="rate limited")
        return attempt.complete(attempt.job.attempt)

    assert worker.drain() == 1
    due = clock.now + dt.timedelta(minutes=7)
    job = client.get_job(chain.id)
    assert (job.status, job.attempt, job.scheduled_at) == ("pending", 1, due)
    assert job.last_attempt_error == "Reschedule: rate limited"
    assert effects(db) == 0  # the attempt's writes were rolled back

    clock.now = due - MS
    assert worker.drain() == 0
    clock.now = due
    assert worker.drain() == 1
    assert seen == [(1, None), (2, "Reschedule: rate limited")]
    done = client.get_job(chain.id)
    assert (done.status, done.output, done.last_attempt_error) == ("completed", 2, None)
    assert effects(db) == 1


def test_reschedule_run_at_is_clamped_and_has_a_default_reason(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    later = start(client, db, 1)
    past = start(client, db, 2)
    worker = client.worker()
    target = clock.now + dt.timedelta(hours=2)

    @worker.handler(step)
    def handle(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        if attempt.job.attempt > 1:
            return attempt.complete(attempt.input["n"])
        if attempt.input["n"] == 1:
            raise q.Reschedule(run_at=target)
        raise q.Reschedule(run_at=clock.now - dt.timedelta(days=1), reason="soon")

    assert worker.drain() == 2
    first_job, second_job = client.get_job(later.id), client.get_job(past.id)
    assert first_job.scheduled_at == target
    assert first_job.last_attempt_error == "Reschedule: rescheduled by the handler"
    assert second_job.scheduled_at == clock.now  # a past run_at means "now"
    assert second_job.last_attempt_error == "Reschedule: soon"

    assert worker.drain() == 1
    assert client.get_chain(past.id).status == "completed"
    assert client.get_chain(later.id).status == "pending"


def test_trigger_stores_utc_whatever_the_clocks_zone(db: Db) -> None:
    """A clock returning aware datetimes in another zone (+05:30): the triggered job's
    scheduled_at is that instant, stored as UTC (SQLite stored the local wall time as
    if it were UTC: 5.5 hours in the future, so the job was not due)."""
    utc = FakeClock()
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    client = q.Queuert(db.engine, types, clock=lambda: utc.now.astimezone(india))
    chain = start(client, db, 1, run_in=dt.timedelta(hours=1))
    utc.advance(dt.timedelta(minutes=1))

    with Session(db.engine) as s, s.begin():
        triggered = client.trigger_job(s, chain.id)
    assert triggered.scheduled_at == utc.now
    stored = client.get_job(chain.id).scheduled_at
    assert stored == utc.now
    assert stored.utcoffset() == dt.timedelta(0)

    ran: list[int] = []
    assert recording_worker(client, ran).drain() == 1  # due now, not at 5:30 from now
    assert ran == [1]
