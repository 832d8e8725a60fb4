"""A handler cannot end the worker's transaction: commit(), rollback(), close() are refused.

Real handler code misuses ``attempt.session``: a helper that commits, a
``try/except`` that rolls back. Committing would make a failed attempt's
writes permanent; rolling back or closing would undo the acquisition (the
attempt count, and on PostgreSQL the row lock and ``running`` status while the
handler still runs, so another worker could take the same job). The session
refuses those calls at once, on both workers and both engines, and the
attempt fails and is retried even if the handler catches the refusal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import queuert_sa as q

from .app import Effect, WorkIn, staged_work, work
from .conftest import Db
from .test_worker import FakeClock
from .workers import Kit

BACKOFF = q.Backoff(initial=dt.timedelta(seconds=10), jitter=0)


def start(kit: Kit, job_type: q.JobType[WorkIn, int] = work, n: int = 1) -> q.Chain[WorkIn, int]:
    with Session(kit.db.engine) as s, s.begin():
        return kit.client.start_chain(s, job_type, {"n": n, "sleep": 0})


def effects(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Effect)).scalar_one()


def effect(attempt: Any, label: str) -> Effect:
    return Effect(job_id=str(attempt.job.id), label=label)


def test_commit_is_refused_at_the_call_and_nothing_the_handler_wrote_is_kept(kit: Kit) -> None:
    """Writes, commits, would go on: the COMMIT never reaches the database."""
    chain = start(kit)
    worker = kit.worker(backoff=BACKOFF)
    seen: list[BaseException] = []

    @worker.handler(work)
    def commits(attempt: Any) -> q.Outcome:
        attempt.session.add(effect(attempt, "before commit"))
        attempt.session.flush()
        try:
            attempt.session.commit()
        except q.HandlerError as exc:
            seen.append(exc)
            raise
        raise AssertionError("commit() returned")

    assert worker.drain() == 1
    assert len(seen) == 1
    assert "attempt.session.commit()" in str(seen[0])
    assert "Return attempt.complete" in str(seen[0])  # says what to do instead
    assert effects(kit.db) == 0
    job = kit.client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert job.last_attempt_error is not None
    assert "attempt.session.commit()" in job.last_attempt_error


def test_a_refused_commit_fails_the_attempt_even_if_the_handler_catches_it(kit: Kit) -> None:
    """The handler swallows the refusal and completes: its writes must not commit as if
    the commit it asked for had happened."""
    chain = start(kit)
    worker = kit.worker(backoff=BACKOFF)

    @worker.handler(work)
    def swallows(attempt: Any) -> q.Outcome:
        attempt.session.add(effect(attempt, "partial"))
        with contextlib.suppress(q.HandlerError):
            attempt.session.commit()
        attempt.session.add(effect(attempt, "after"))
        return attempt.complete(1)

    assert worker.drain() == 1
    assert effects(kit.db) == 0
    job = kit.client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert (worker.completed, worker.failed) == (0, 1)


@pytest.mark.parametrize("call", ["rollback", "close", "reset", "invalidate"])
def test_rollback_or_close_keeps_the_attempt_counted_and_the_backoff_growing(
    kit: Kit, call: str
) -> None:
    """The acquisition's ``attempt + 1`` survives: attempt 1 then 2, backoff 10 s then 20 s."""
    clock = FakeClock()
    kit = kit.using(clock=clock)
    chain = start(kit)
    worker = kit.worker(backoff=BACKOFF)

    @worker.handler(work)
    def undoes(attempt: Any) -> q.Outcome:
        attempt.session.add(effect(attempt, "doomed"))
        with contextlib.suppress(q.HandlerError):
            getattr(attempt.session, call)()
        raise RuntimeError("gave up")

    for expected in (1, 2):
        assert worker.drain() == 1
        job = kit.client.get_job(chain.id)
        assert (job.status, job.attempt) == ("pending", expected)
        delay = job.scheduled_at - clock.now
        assert delay == BACKOFF.initial * 2 ** (expected - 1)
        clock.advance(dt.timedelta(hours=1))
    assert effects(kit.db) == 0


def test_begin_nested_and_no_autoflush_stay_the_handlers_own(kit: Kit) -> None:
    """SAVEPOINTs a handler opens itself, and ``no_autoflush``, keep working."""
    chain = start(kit)
    worker = kit.worker()

    @worker.handler(work)
    def nested(attempt: Any) -> q.Outcome:
        s = attempt.session
        with s.begin_nested():
            s.add(effect(attempt, "kept"))
        savepoint = s.begin_nested()
        s.add(effect(attempt, "undone"))
        s.flush()
        savepoint.rollback()
        with s.no_autoflush:
            s.add(effect(attempt, "kept too"))
        return attempt.complete(2)

    assert worker.drain() == 1
    assert kit.client.get_chain(chain.id).output == 2
    with Session(kit.db.engine) as s:
        labels = sorted(s.scalars(select(Effect.label)))
    assert labels == ["kept", "kept too"]


@pytest.mark.parametrize("block", ["prepare", "transaction"])
def test_staged_sessions_refuse_commit_too(kit: Kit, block: str) -> None:
    """``prepare()``'s and ``transaction()``'s sessions are the worker's transactions as well."""
    chain = start(kit, staged_work)
    worker = kit.worker(backoff=BACKOFF)

    @worker.handler(staged_work, mode="staged")
    def staged(attempt: Any) -> q.Outcome:
        with attempt.prepare() as s:
            if block == "prepare":
                s.commit()
        with attempt.transaction() as s:
            s.add(effect(attempt, "written"))
            s.commit()
            return attempt.complete(3)

    assert worker.drain() == 1
    assert effects(kit.db) == 0
    job = kit.client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert job.last_attempt_error is not None
    assert "attempt.session.commit()" in job.last_attempt_error


def test_an_application_scoped_session_refuses_too(db: Db) -> None:
    """With the application's ``scoped_session`` as the factory, the handler may reach the
    attempt's session directly (``db.session`` in Flask): the refusal holds there as well."""
    from . import app

    client = q.Queuert(db.engine, app.job_types)
    scoped = scoped_session(sessionmaker(db.engine))
    worker = client.worker(session_factory=scoped, backoff=BACKOFF)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 1, "sleep": 0})

    @worker.handler(work)
    def direct(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        scoped.add(Effect(job_id=str(attempt.job.id), label="scoped"))
        scoped.commit()
        return attempt.complete(1)

    try:
        assert worker.drain() == 1
    finally:
        scoped.remove()
    assert effects(db) == 0
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)


def test_a_handler_rolling_back_mid_run_never_lets_a_rival_take_its_job(pg_kit: Kit) -> None:
    """Two workers; handlers that try ``rollback()`` while they run. Had the rollback gone
    through, it would release the job's row lock and ``running`` status mid-run and the
    rival would run the same job at the same time. Asserted from the runs' own intervals."""
    kit = pg_kit
    n_jobs = 4
    for n in range(n_jobs):
        start(kit, n=n)
    runs: dict[int, list[tuple[float, float]]] = {}
    lock = threading.Lock()
    fast = q.Backoff(initial=dt.timedelta(milliseconds=50), jitter=0)

    def body(attempt: Any) -> q.Outcome:
        began = time.monotonic()
        with contextlib.suppress(q.HandlerError):
            attempt.session.rollback()
        time.sleep(0.3)  # the window in which a released lock would let the rival in
        with lock:
            runs.setdefault(attempt.input["n"], []).append((began, time.monotonic()))
        return attempt.complete(0)

    workers = []
    for _ in range(2):
        worker = kit.worker(concurrency=2, backoff=fast, poll_interval=dt.timedelta(seconds=0.1))
        worker.handler(work, on_thread=True)(body)
        workers.append(worker)
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if sum(len(r) for r in runs.values()) >= 3 * n_jobs:
                break
        time.sleep(0.05)
    for worker in workers:
        assert worker.stop(timeout=dt.timedelta(seconds=10))
    with lock:
        assert sum(len(r) for r in runs.values()) >= 3 * n_jobs  # retried, by either worker
        for intervals in runs.values():
            ordered = sorted(intervals)
            for (_, end), (next_start, _) in itertools.pairwise(ordered):
                assert next_start >= end, "two workers ran the same job at the same time"
