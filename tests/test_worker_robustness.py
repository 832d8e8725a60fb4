"""Failure modes of the worker found in review: each test is a scenario that once broke it."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

import queuert_sa as q

from .app import Effect, UserIn, WorkIn, greet, job_types, signup, work
from .conftest import Db


def start_work(client: q.Queuert, db: Db, n: int = 1, sleep: float = 0) -> q.Chain[WorkIn, int]:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, work, {"n": n, "sleep": sleep})


def test_idle_slots_do_not_spin_while_another_attempt_holds_a_due_job(pg: Db) -> None:
    # The held job is pending and due as seen from outside its open transaction.
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(pg.engine, "before_cursor_execute", record)
    client = q.Queuert(pg.engine, job_types)
    worker = client.worker(concurrency=3, poll_interval=dt.timedelta(seconds=30))
    entered, release = threading.Event(), threading.Event()

    @worker.handler(work)
    def hold(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        entered.set()
        release.wait(20)
        return attempt.complete(0)

    start_work(client, pg)
    worker.start()
    try:
        assert entered.wait(10)
        before = len(statements)
        time.sleep(2.0)
        during = len(statements) - before
    finally:
        release.set()
        assert worker.stop()
    # Two idle slots re-checking about once a second: a handful of queries,
    # not the thousands of a busy loop.
    assert during < 40, during


def test_continuation_wakes_an_idle_worker_on_every_engine(db: Db, client: q.Queuert) -> None:
    worker = client.worker(concurrency=2, poll_interval=dt.timedelta(seconds=60))
    done = threading.Event()

    @worker.handler(signup)
    def first(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": attempt.input["user_id"]})

    @worker.handler(greet)
    def second(attempt: q.Attempt[UserIn, q.Outcome]) -> q.Outcome:
        return attempt.complete({"greeting": "hi"})  # type: ignore[arg-type]

    chain_id = uuid.uuid4()
    client.notify.listen_chain_completed(chain_id, lambda _id: done.set())
    worker.start()
    try:
        time.sleep(0.2)  # both slots idle on their 60 s poll
        with Session(db.engine) as s, s.begin():
            client.start_chain(s, signup, {"user_id": 1}, id=chain_id)
        assert done.wait(10), "the continuation waited for the 60 s poll"
    finally:
        assert worker.stop()
    assert client.notify.sent["job_scheduled"] == 2  # type: ignore[attr-defined]


def test_completion_rolled_back_inside_the_handler_still_completes_the_job(
    db: Db, client: q.Queuert
) -> None:
    chain = start_work(client, db, n=3)
    worker = client.worker()

    @worker.handler(work)
    def sneaky(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        try:
            with attempt.session.begin_nested():
                outcome = attempt.complete(attempt.input["n"])
                raise LookupError("rolled back my own savepoint")
        except LookupError:
            pass
        return outcome

    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert (job.status, job.output) == ("completed", 3)
    assert worker.completed == 1


def test_failed_commit_is_counted_with_backoff_and_error(db: Db) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_child"))
        conn.execute(
            text(
                "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES app_user(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    client = q.Queuert(db.engine, job_types)
    chain = start_work(client, db)
    worker = client.worker(backoff=q.Backoff(jitter=0))

    @worker.handler(work)
    def orphan(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        # Checked only at COMMIT: the SAVEPOINT releases fine, the COMMIT fails.
        attempt.session.execute(text("INSERT INTO deferred_child VALUES (1, 999)"))
        return attempt.complete(1)

    before = dt.datetime.now(dt.UTC)
    try:
        assert worker.drain() == 1
        job = client.get_job(chain.id)
        assert job.status == "pending"
        assert job.attempt == 1
        assert job.last_attempt_error is not None
        assert "COMMIT failed" in job.last_attempt_error
        assert job.scheduled_at >= before + dt.timedelta(seconds=10)
        assert (worker.completed, worker.failed) == (0, 1)
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE deferred_child"))


def test_system_exit_in_a_handler_is_recorded_and_stops_the_thread_worker(
    db: Db, client: q.Queuert
) -> None:
    chain = start_work(client, db)
    worker = client.worker(concurrency=1, poll_interval=dt.timedelta(seconds=30))

    @worker.handler(work)
    def leave(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise SystemExit(3)

    worker.start()
    deadline = time.monotonic() + 10
    while worker.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.stop()
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert job.last_attempt_error is not None
    assert "SystemExit" in job.last_attempt_error


def test_system_exit_in_drain_propagates_after_recording(db: Db, client: q.Queuert) -> None:
    chain = start_work(client, db)
    worker = client.worker()

    @worker.handler(work)
    def leave(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        worker.drain()
    assert client.get_job(chain.id).attempt == 1


def test_restart_after_a_stop_that_timed_out(db: Db, client: q.Queuert) -> None:
    worker = client.worker(concurrency=1, poll_interval=dt.timedelta(milliseconds=50))
    entered, release = threading.Event(), threading.Event()

    @worker.handler(work)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        if attempt.input["n"] == 1:
            entered.set()
            release.wait(20)
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        return attempt.complete(attempt.input["n"])

    first = start_work(client, db, n=1)
    worker.start()
    assert entered.wait(10)
    assert worker.stop(timeout=dt.timedelta(milliseconds=100)) is False
    with pytest.raises(q.WorkerConfigError, match="still in flight"):
        worker.start()
    release.set()
    assert worker.stop() is True

    second = start_work(client, db, n=2)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not client.get_chain(second.id).is_completed and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        assert worker.stop()
    assert client.get_chain(first.id).output == 1
    assert client.get_chain(second.id).output == 2


def test_sqlite_stop_starts_no_new_attempts(tmp_path: object) -> None:
    from .conftest import make_db

    db = make_db("sqlite", tmp_path)  # type: ignore[arg-type]
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(6)])
    worker = client.worker(concurrency=3, poll_interval=dt.timedelta(milliseconds=50))
    entered = threading.Event()

    @worker.handler(work)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        entered.set()
        time.sleep(0.3)
        return attempt.complete(attempt.input["n"])

    worker.start()
    assert entered.wait(10)
    assert worker.stop()
    assert worker.completed == 1
    db.engine.dispose()


def test_a_batch_wakes_as_many_idle_slots_as_jobs(pg: Db) -> None:
    client = q.Queuert(pg.engine, job_types)
    worker = client.worker(concurrency=4, poll_interval=dt.timedelta(seconds=60))
    threads: set[str] = set()
    lock = threading.Lock()

    @worker.handler(work)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with lock:
            threads.add(threading.current_thread().name)
        time.sleep(0.5)
        return attempt.complete(0)

    worker.start()
    try:
        time.sleep(0.2)  # all four slots idle on their 60 s poll
        with Session(pg.engine) as s, s.begin():
            client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(4)])
        deadline = time.monotonic() + 20
        while worker.completed < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        assert worker.stop()
    assert worker.completed == 4
    assert len(threads) == 4


def test_drain_ends_when_a_failed_job_is_due_again_at_once(db: Db, client: q.Queuert) -> None:
    chain = start_work(client, db)
    worker = client.worker()

    @worker.handler(work)
    def again(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise q.Reschedule(run_in=dt.timedelta(0), reason="try again now")

    assert worker.drain() == 1
    assert client.get_job(chain.id).status == "pending"
    assert worker.drain() == 1  # a new drain takes it again
