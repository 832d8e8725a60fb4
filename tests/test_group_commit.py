"""Group commit: ``handler(..., batch=N)`` and ``batch_handler``, on both workers and engines.

Several attempts of one type share a transaction: each handler's own writes
in its own SAVEPOINT, the completions written together, one COMMIT. What a
user relies on: a failing handler undoes only its own writes and is retried
alone; a failed COMMIT keeps nothing of the group and retries every job of it;
and exactly-once holds under a SIGKILL (``test_processes.py``) and a rival
worker on real connections (below, PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, WorkIn, greet, signup, work
from .conftest import Db
from .faults import refusing_inserts, uuid_literal
from .test_parity import sync_engine_for
from .test_worker import effects, jobs_of_chain, new_user_chain
from .workers import Kit, open_kit

#: Retries due at once, so a second drain takes them.
AT_ONCE = q.Backoff(initial=dt.timedelta(0), jitter=0)


def start_many(kit: Kit, n: int, sleep: float = 0) -> list[q.Chain[WorkIn, int]]:
    with Session(kit.db.engine) as s, s.begin():
        return kit.client.start_chains(
            s, [q.ChainStart(work, {"n": i, "sleep": sleep}) for i in range(n)]
        )


def completed_at_of(db: Db) -> list[dt.datetime]:
    with Session(db.engine) as s:
        return list(s.scalars(select(Job.completed_at).where(Job.status == "completed")))


def test_a_group_runs_every_handler_and_commits_once(kit: Kit) -> None:
    chains = start_many(kit, 10)
    worker = kit.worker()
    seen: list[int] = []

    @worker.handler(work, batch=5)
    def handle(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        seen.append(attempt.input["n"])
        return attempt.complete(attempt.input["n"] * 2)

    assert worker.drain() == 10
    assert sorted(seen) == list(range(10))
    assert [kit.client.get_chain(c.id).output for c in chains] == [i * 2 for i in range(10)]
    assert effects(kit.db, "work") == 10
    # One transaction per group of five: the completions of a group share its time.
    stamps = completed_at_of(kit.db)
    assert len(set(stamps)) == 2, stamps
    assert (worker.completed, worker.failed) == (10, 0)


def test_a_handler_that_raises_undoes_only_its_own_writes_and_is_retried_alone(kit: Kit) -> None:
    chains = start_many(kit, 5)
    worker = kit.worker(backoff=AT_ONCE)
    fail_once = {chains[2].id}

    @worker.handler(work, batch=5)
    def handle(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        attempt.session.flush()
        if attempt.job.id in fail_once:
            fail_once.clear()
            raise RuntimeError("this one fails")
        return attempt.complete(attempt.input["n"])

    assert worker.drain() == 5
    failed = kit.client.get_job(chains[2].id)
    assert (failed.status, failed.attempt) == ("pending", 1)
    assert failed.last_attempt_error is not None
    assert "this one fails" in failed.last_attempt_error
    assert [kit.client.get_chain(c.id).status for c in chains] == [
        "completed", "completed", "pending", "completed", "completed"
    ]  # fmt: skip
    assert effects(kit.db, "work") == 4  # its own Effect row was rolled back
    assert (worker.completed, worker.failed) == (4, 1)

    assert worker.drain() == 1
    assert kit.client.get_chain(chains[2].id).status == "completed"
    assert effects(kit.db, "work") == 5


def test_a_handler_that_writes_nothing_needs_no_savepoint_and_still_fails_alone(kit: Kit) -> None:
    chains = start_many(kit, 4)
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, batch=4)
    def handle(attempt: Any) -> q.Outcome:
        if attempt.input["n"] == 1:
            raise ValueError("bad input")
        return attempt.complete(attempt.input["n"])

    assert worker.drain() == 4
    statuses = [kit.client.get_chain(c.id).status for c in chains]
    assert statuses == ["completed", "pending", "completed", "completed"]


def test_a_group_whose_commit_fails_keeps_nothing_and_retries_every_job(kit: Kit) -> None:
    db = kit.db
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_child"))
        conn.execute(
            text(
                "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES app_user(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    chains = start_many(kit, 4)
    worker = kit.worker(backoff=q.Backoff(jitter=0))

    @worker.handler(work, batch=4)
    def handle(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        if attempt.input["n"] == 2:
            # Checked only at COMMIT: the SAVEPOINT releases fine, the group's COMMIT fails.
            attempt.session.execute(text("INSERT INTO deferred_child VALUES (1, 999)"))
        return attempt.complete(attempt.input["n"])

    before = dt.datetime.now(dt.UTC)
    try:
        assert worker.drain() == 4
        for chain in chains:
            job = kit.client.get_job(chain.id)
            assert (job.status, job.attempt) == ("pending", 1)
            assert job.last_attempt_error is not None
            assert job.last_attempt_error.startswith(
                "the group's transaction failed (completions or COMMIT)"
            ), job.last_attempt_error[:200]
            assert job.scheduled_at >= before + dt.timedelta(seconds=10)
        assert effects(db, "work") == 0
        assert (worker.completed, worker.failed) == (0, 4)
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE deferred_child"))


def test_continuations_in_a_group_commit_with_it_and_a_bad_one_fails_alone(kit: Kit) -> None:
    """A continuation is written in its attempt's SAVEPOINT: one that cannot be kept undoes
    only that attempt (here: the database refuses the third one's INSERT)."""
    db, client = kit.db, kit.client
    first = new_user_chain(client, db)
    second = new_user_chain(client, db)
    third = new_user_chain(client, db)
    worker = kit.worker()

    @worker.handler(signup, batch=3)
    def handle(attempt: Any) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": 1})

    refused = f"NEW.chain_id = {uuid_literal(db, third.id)} AND NEW.chain_index > 0"
    with refusing_inserts(db, refused):
        assert worker.drain() == 3
    assert [j.status for j in jobs_of_chain(db, first.id)] == ["completed", "pending"]
    assert [j.status for j in jobs_of_chain(db, second.id)] == ["completed", "pending"]
    bad = jobs_of_chain(db, third.id)
    assert [(j.status, j.attempt) for j in bad] == [("pending", 1)]
    assert bad[0].last_attempt_error is not None
    assert "writing the attempt's outcome failed" in bad[0].last_attempt_error


def test_a_group_only_holds_jobs_of_its_own_type(kit: Kit) -> None:
    start_many(kit, 3)
    users = [new_user_chain(kit.client, kit.db) for _ in range(2)]
    worker = kit.worker()
    groups: list[str] = []

    @worker.handler(work, batch=10)
    def handle(attempt: Any) -> q.Outcome:
        groups.append("work")
        return attempt.complete(0)

    @worker.handler(signup)
    def sign(attempt: Any) -> q.Outcome:
        groups.append("signup")
        return attempt.continue_with(greet, {"user_id": 1})

    @worker.handler(greet)
    def hello(attempt: Any) -> q.Outcome:
        return attempt.complete({"greeting": "hi"})

    assert worker.drain() == 7
    assert sorted(groups) == ["signup", "signup", "work", "work", "work"]
    assert all(kit.client.get_chain(u.id).status == "completed" for u in users)


def test_drain_max_jobs_caps_the_group(kit: Kit) -> None:
    start_many(kit, 10)
    worker = kit.worker()

    @worker.handler(work, batch=8)
    def handle(attempt: Any) -> q.Outcome:
        return attempt.complete(0)

    assert worker.drain(max_jobs=3) == 3
    with Session(kit.db.engine) as s:
        pending = s.scalar(select(func.count()).select_from(Job).where(Job.status == "pending"))
    assert pending == 7


# --- a batch handler --------------------------------------------------------------------


def test_a_batch_handler_gets_the_group_and_writes_through_one_session(kit: Kit) -> None:
    chains = start_many(kit, 7)
    worker = kit.worker()
    sizes: list[int] = []

    @worker.batch_handler(work, size=4)
    def handle(attempts: list[Any]) -> list[q.Outcome]:
        sizes.append(len(attempts))
        session = attempts[0].session
        session.add_all([Effect(job_id=str(a.job.id), label="bulk") for a in attempts])
        return [a.complete(a.input["n"] + 100) for a in attempts]

    assert worker.drain() == 7
    assert sorted(sizes) == [3, 4]
    assert [kit.client.get_chain(c.id).output for c in chains] == [i + 100 for i in range(7)]
    assert effects(kit.db, "bulk") == 7


def test_a_batch_handler_that_raises_retries_the_whole_group(kit: Kit) -> None:
    chains = start_many(kit, 3)
    worker = kit.worker(backoff=AT_ONCE)
    calls: list[int] = []

    @worker.batch_handler(work, size=3)
    def handle(attempts: list[Any]) -> list[q.Outcome]:
        calls.append(len(attempts))
        attempts[0].session.add_all([Effect(job_id=str(a.job.id), label="bulk") for a in attempts])
        attempts[0].session.flush()
        if len(calls) == 1:
            raise ConnectionError("the bulk API is down")
        return [a.complete(1) for a in attempts]

    assert worker.drain() == 3
    for chain in chains:
        job = kit.client.get_job(chain.id)
        assert (job.status, job.attempt) == ("pending", 1)
        assert "the bulk API is down" in (job.last_attempt_error or "")
    assert effects(kit.db, "bulk") == 0
    assert worker.drain() == 3
    assert effects(kit.db, "bulk") == 3
    assert calls == [3, 3]


@pytest.mark.parametrize("returned", ["one", "short", "foreign"])
def test_a_batch_handler_must_return_one_outcome_per_attempt(kit: Kit, returned: str) -> None:
    start_many(kit, 2)
    worker = kit.worker()

    @worker.batch_handler(work, size=2)
    def handle(attempts: list[Any]) -> Any:
        outcomes = [a.complete(1) for a in attempts]
        if returned == "one":
            return outcomes[0]
        if returned == "short":
            return outcomes[:1]
        return list(reversed(outcomes))

    assert worker.drain() == 2
    with Session(kit.db.engine) as s:
        errors = list(s.scalars(select(Job.last_attempt_error)))
    assert len(errors) == 2
    for error in errors:
        assert error is not None
        assert "must return a list of 2 outcomes, one per attempt in the order given" in error


# --- registration -----------------------------------------------------------------------


@pytest.mark.parametrize("batch", [0, -1, 1001, 2.5, True, "10"])
def test_a_bad_batch_size_is_refused_when_registering(kit: Kit, batch: object) -> None:
    worker = kit.worker()
    with pytest.raises(q.WorkerConfigError, match="must be a whole number of jobs from 1 to 1000"):
        worker.handler(work, batch=batch)
    with pytest.raises(q.WorkerConfigError, match="must be a whole number of jobs from 1 to 1000"):
        worker.batch_handler(work, size=batch)


def test_a_staged_handler_takes_no_batch(kit: Kit) -> None:
    worker = kit.worker()
    with pytest.raises(q.WorkerConfigError, match="each staged attempt commits on its own"):
        worker.handler(work, mode="staged", batch=5)


# --- a rival worker on real connections -------------------------------------------------


def test_two_grouping_workers_never_run_a_job_twice(pg_kit: Kit) -> None:
    kit = pg_kit
    start_many(kit, 300)
    runs: list[str] = []
    lock = threading.Lock()
    handles = [kit.worker(concurrency=3) for _ in range(2)]
    for handle in handles:

        @handle.handler(work, batch=20)
        def run(attempt: Any) -> q.Outcome:
            with lock:
                runs.append(str(attempt.job.id))
            attempt.session.add(Effect(job_id=str(attempt.job.id), label="rival"))
            return attempt.complete(0)

    drains = [threading.Thread(target=h.drain) for h in handles]
    for thread in drains:
        thread.start()
    for thread in drains:
        thread.join(60)
    assert sum(h.completed for h in handles) == 300
    assert len(runs) == len(set(runs)) == 300
    assert effects(kit.db, "rival") == 300


def test_a_worker_stopping_mid_group_gives_back_the_jobs_it_has_not_started(kit: Kit) -> None:
    """stop() while a group runs: the attempt in flight finishes and commits, the rest of
    the group is pending again as it was (attempt 0), for the next worker."""
    chains = start_many(kit, 5)
    worker = kit.worker(shutdown_grace=dt.timedelta(seconds=20))
    entered, release = threading.Event(), threading.Event()

    @worker.handler(work, batch=5, on_thread=True)
    def handle(attempt: Any) -> q.Outcome:
        if attempt.input["n"] == 0:
            entered.set()
            release.wait(20)
        return attempt.complete(attempt.input["n"])

    worker.start()
    assert entered.wait(20)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    deadline = time.monotonic() + 20
    while not worker.raw.is_stopping():
        assert time.monotonic() < deadline, "the worker never began stopping"
        time.sleep(0.01)
    release.set()
    stopper.join(30)
    assert kit.client.get_chain(chains[0].id).status == "completed"
    for chain in chains[1:]:
        job = kit.client.get_job(chain.id)
        assert (job.status, job.attempt, job.leased_by) == ("pending", 0, None)
    assert (worker.completed, worker.failed) == (1, 0)


def test_a_plain_def_batch_handler_on_the_async_worker_runs_on_its_thread_engine(db: Db) -> None:
    """``AsyncWorker.batch_handler`` takes a plain ``def`` too: it gets sync ``Attempt``s
    on the ``thread_engine`` given, one group per transaction."""
    thread_engine = sync_engine_for(db)
    try:
        with open_kit("async", db) as kit:
            chains = start_many(kit, 6)
            worker = kit.worker(thread_engine=thread_engine)
            sizes: list[int] = []

            @worker.raw.batch_handler(work, size=4)
            def plain(attempts: list[q.Attempt[WorkIn, int]]) -> list[q.Outcome]:
                assert all(a.session.get_bind() is thread_engine for a in attempts)
                sizes.append(len(attempts))
                attempts[0].session.add_all(
                    [Effect(job_id=str(a.job.id), label="plain-bulk") for a in attempts]
                )
                return [a.complete(a.input["n"]) for a in attempts]

            assert worker.drain() == 6
            assert sorted(sizes) == [2, 4]
            assert [kit.client.get_chain(c.id).output for c in chains] == list(range(6))
            assert effects(db, "plain-bulk") == 6
    finally:
        thread_engine.dispose()
