"""Failure modes of the worker found in review: each test is a scenario that once broke it.

Every scenario runs on both workers (``kind``: the thread ``Worker`` and the
``AsyncWorker``) through the ``kit`` of tests/workers.py. Where the workers
legitimately differ (a thread cannot be cancelled, a task can; SystemExit
leaves asyncio's event loop), each kind's assertions are marked as its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q

from .app import Effect, UserIn, WorkIn, greet, job_types, signup, work
from .conftest import Db, make_db
from .workers import Kit, async_url, open_kit


def start_work(client: q.Queuert, db: Db, n: int = 1, sleep: float = 0) -> q.Chain[WorkIn, int]:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, work, {"n": n, "sleep": sleep})


def test_idle_slots_do_not_spin_while_another_attempt_holds_a_due_job(pg_kit: Kit) -> None:
    # The held job is pending and due as seen from outside its open transaction.
    kit = pg_kit
    pg, client = kit.db, kit.client
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(kit.worker_engine, "before_cursor_execute", record)
    worker = kit.worker(concurrency=3, poll_interval=dt.timedelta(seconds=30))
    entered, release = threading.Event(), threading.Event()

    @worker.handler(work, on_thread=True)
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


def test_continuation_wakes_an_idle_worker_on_every_engine(kit: Kit) -> None:
    db, client = kit.db, kit.client
    worker = kit.worker(concurrency=2, poll_interval=dt.timedelta(seconds=60))
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


def test_completion_rolled_back_inside_the_handler_still_completes_the_job(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start_work(client, db, n=3)
    worker = kit.worker()

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


def test_failed_commit_is_counted_with_backoff_and_error(kit: Kit) -> None:
    db = kit.db
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_child"))
        conn.execute(
            text(
                "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES app_user(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    client = kit.client
    chain = start_work(client, db)
    worker = kit.worker(backoff=q.Backoff(jitter=0))

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


def _async_worker_run_ended_by(kit: Kit, job_type: q.JobType[WorkIn, int]) -> BaseException | None:
    """``asyncio.run(worker.run())``, as a worker process's main does, with a handler that
    raises SystemExit(3); on a thread and an event loop of its own. What ended it."""
    ended: list[BaseException | None] = []

    def unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # The slot task that let SystemExit out is never awaited: asyncio would
        # log "Task exception was never retrieved" whenever it is collected.
        if not isinstance(context.get("exception"), SystemExit):
            loop.default_exception_handler(context)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(unretrieved)
        engine: AsyncEngine = create_async_engine(async_url(kit.db))
        try:
            client = q.AsyncQueuert(engine, job_types, notify=kit.notify)
            worker = client.worker(poll_interval=dt.timedelta(seconds=30), handle_signals="never")

            @worker.handler(job_type)
            async def leave(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
                raise SystemExit(3)

            await worker.run()
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            ended.append(exc)
        else:
            ended.append(None)

    thread = threading.Thread(target=run, name="own-event-loop")
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the asyncio worker's run() did not end"
    gc.collect()  # that task, now, while its loop's handler is the one above
    return ended[0]


def test_system_exit_in_a_handler_is_recorded_stops_the_worker_and_ends_run(kit: Kit) -> None:
    """Both workers: the attempt is recorded, the worker stops gracefully, and run()
    then raises the handler's SystemExit, so the process ends as the handler asked."""
    db, client = kit.db, kit.client
    chain = start_work(client, db)
    if kit.kind == "thread":
        worker = client.worker(concurrency=1, poll_interval=dt.timedelta(seconds=30))

        @worker.handler(work)
        def leave(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
            raise SystemExit(3)

        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=run, name="worker-run")
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the worker's run() did not end"
        ended = outcome[0]
    else:
        ended = _async_worker_run_ended_by(kit, work)
    assert isinstance(ended, SystemExit), ended
    assert ended.code == 3
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    assert job.last_attempt_error is not None
    assert "SystemExit" in job.last_attempt_error


def test_system_exit_in_drain_propagates_after_recording(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start_work(client, db)
    worker = kit.worker()

    @worker.handler(work)
    def leave(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        worker.drain()
    assert client.get_job(chain.id).attempt == 1


def test_restart_after_a_stop_that_timed_out(kit: Kit) -> None:
    db, client = kit.db, kit.client
    worker = kit.worker(concurrency=1, poll_interval=dt.timedelta(milliseconds=50))
    entered, release = threading.Event(), threading.Event()

    async def slow_task(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        # As slow(), waiting in a way the worker can cancel.
        if attempt.input["n"] == 1:
            entered.set()
            deadline = time.monotonic() + 20
            while not release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        return attempt.complete(attempt.input["n"])

    @worker.handler(work, async_body=slow_task)
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
    if kit.kind == "thread":
        # Thread-specific: a thread cannot be cancelled. The cut-off attempt
        # still runs, so the worker refuses to start until it has ended.
        with pytest.raises(q.WorkerConfigError, match="still in flight"):
            worker.start()
    else:
        # asyncio-specific: the cut-off attempt was cancelled and rolled back,
        # as after a crash; the job is pending with no attempt counted.
        job = client.get_job(first.id)
        assert (job.status, job.attempt) == ("pending", 0)
    release.set()
    assert worker.stop() is True

    second = start_work(client, db, n=2)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            client.get_chain(second.id).is_completed and client.get_chain(first.id).is_completed
        ):
            time.sleep(0.02)
    finally:
        assert worker.stop()
    assert client.get_chain(first.id).output == 1
    assert client.get_chain(second.id).output == 2


def test_sqlite_stop_starts_no_new_attempts(kind: str, tmp_path: Path) -> None:
    db = make_db("sqlite", tmp_path)
    try:
        with open_kit(kind, db) as kit:
            client = kit.client
            with Session(db.engine) as s, s.begin():
                client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(6)])
            worker = kit.worker(concurrency=3, poll_interval=dt.timedelta(milliseconds=50))
            entered = threading.Event()

            @worker.handler(work, on_thread=True)
            def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
                entered.set()
                time.sleep(0.3)
                return attempt.complete(attempt.input["n"])

            worker.start()
            assert entered.wait(10)
            assert worker.stop()
            assert worker.completed == 1
    finally:
        db.engine.dispose()


def test_a_batch_wakes_as_many_idle_slots_as_jobs(pg_kit: Kit) -> None:
    kit = pg_kit
    pg, client = kit.db, kit.client
    worker = kit.worker(concurrency=4, poll_interval=dt.timedelta(seconds=60))
    threads: set[str] = set()
    lock = threading.Lock()
    in_flight = peak = 0

    @worker.handler(work, on_thread=True)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        nonlocal in_flight, peak
        with lock:
            threads.add(threading.current_thread().name)
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.5)
        with lock:
            in_flight -= 1
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
    assert peak == 4, "the batch did not wake all four idle slots at once"
    if kit.kind == "thread":
        assert len(threads) == 4  # thread-specific: one slot, one thread


def test_drain_ends_when_a_failed_job_is_due_again_at_once(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start_work(client, db)
    worker = kit.worker()

    @worker.handler(work)
    def again(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise q.Reschedule(run_in=dt.timedelta(0), reason="try again now")

    assert worker.drain() == 1
    assert client.get_job(chain.id).status == "pending"
    assert worker.drain() == 1  # a new drain takes it again
