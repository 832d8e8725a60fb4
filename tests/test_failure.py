"""When work cannot succeed: retry limits, ``q.Fail`` and ``fail_on``, on both workers and engines.

What a user relies on: a job with ``max_attempts=3`` becomes ``failed`` on its
third failure with that failure's error kept and none of its writes; ``Fail``
and ``fail_on`` fail it at once; ``Reschedule`` never does; every settlement
path of the worker obeys the limit (a staged attempt's own transaction, a
failed COMMIT, a group, a lease that lapsed on the last attempt); and a failed
chain is terminal for deduplication and retention.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, WorkIn, staged_work, work
from .conftest import Db
from .test_worker import effects
from .workers import Kit

#: Retries due at once, so each drain takes the next attempt.
AT_ONCE = q.Backoff(initial=dt.timedelta(0), jitter=0)


def start(kit: Kit, job_type: q.JobType[WorkIn, int] = work, n: int = 1) -> q.Chain[WorkIn, int]:
    with Session(kit.db.engine) as s, s.begin():
        return kit.client.start_chain(s, job_type, {"n": n, "sleep": 0})


def drain_until_settled(worker: Any, rounds: int) -> list[int]:
    """Drain ``rounds`` times (a drain never retakes a job that failed in it)."""
    return [worker.drain() for _ in range(rounds)]


def test_the_last_allowed_failure_makes_the_job_failed_with_its_error(kit: Kit) -> None:
    chain = start(kit)
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, max_attempts=3)
    def flaky(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="written"))
        attempt.session.flush()
        raise RuntimeError(f"boom on attempt {attempt.job.attempt}")

    before = dt.datetime.now(dt.UTC)
    assert drain_until_settled(worker, 4) == [1, 1, 1, 0]
    job = kit.client.get_job(chain.id)
    assert job.status == q.JobStatus.FAILED == "failed"
    assert job.attempt == 3
    assert job.last_attempt_error is not None
    assert "RuntimeError: boom on attempt 3" in job.last_attempt_error
    assert job.completed_at is not None
    assert job.completed_at >= before
    assert (job.leased_by, job.leased_until, job.output) == (None, None, None)
    assert kit.client.get_chain(chain.id).status == "failed"
    assert effects(kit.db, "written") == 0  # every attempt's writes rolled back
    assert (worker.completed, worker.failed) == (0, 3)


def test_fail_fails_at_once_whatever_the_limit(kit: Kit) -> None:
    chain = start(kit)
    worker = kit.worker(backoff=AT_ONCE)  # no max_attempts: unlimited retries otherwise

    @worker.handler(work)
    def give_up(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="written"))
        attempt.session.flush()
        raise q.Fail("the order was deleted")

    assert drain_until_settled(worker, 2) == [1, 0]
    job = kit.client.get_job(chain.id)
    assert (job.status, job.attempt) == ("failed", 1)
    assert job.last_attempt_error == "Fail: the order was deleted"
    assert effects(kit.db, "written") == 0


def test_fail_on_fails_those_errors_at_once_and_retries_the_rest(kit: Kit) -> None:
    bad, flaky = start(kit, n=1), start(kit, n=2)
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, fail_on=(KeyError, LookupError))
    def handle(attempt: Any) -> q.Outcome:
        if attempt.input["n"] == 1:
            raise KeyError("no such customer")
        if attempt.job.attempt < 3:
            raise ValueError("try again")
        return attempt.complete(attempt.job.attempt)

    assert drain_until_settled(worker, 4) == [2, 1, 1, 0]
    failed = kit.client.get_job(bad.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.last_attempt_error is not None
    assert "KeyError: 'no such customer'" in failed.last_attempt_error
    assert kit.client.get_chain(flaky.id).output == 3


def test_a_reschedule_never_fails_a_job(kit: Kit) -> None:
    chain = start(kit)
    worker = kit.worker()

    @worker.handler(work, max_attempts=1)
    def later(attempt: Any) -> q.Outcome:
        if attempt.job.attempt < 3:
            raise q.Reschedule(run_in=0, reason="not ready")
        raise RuntimeError("now it fails")

    assert drain_until_settled(worker, 4) == [1, 1, 1, 0]
    job = kit.client.get_job(chain.id)
    # Two reschedules past the limit, then the first real failure fails it.
    assert (job.status, job.attempt) == ("failed", 3)


def test_a_staged_attempt_that_fails_its_last_attempt_fails_the_job(kit: Kit) -> None:
    chain = start(kit, staged_work)
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(staged_work, mode="staged", max_attempts=2)
    def call_out(attempt: Any) -> q.Outcome:
        with attempt.prepare():
            pass
        raise ConnectionError("the payment API is down")

    assert drain_until_settled(worker, 3) == [1, 1, 0]
    job = kit.client.get_job(chain.id)
    assert (job.status, job.attempt, job.leased_by) == ("failed", 2, None)
    assert job.last_attempt_error is not None
    assert "ConnectionError: the payment API is down" in job.last_attempt_error


def test_a_failed_commit_on_the_last_attempt_fails_the_job_and_keeps_nothing(kit: Kit) -> None:
    db = kit.db
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_child"))
        conn.execute(
            text(
                "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES app_user(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    chain = start(kit)
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, max_attempts=2)
    def orphan(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="written"))
        # Checked only at COMMIT: the SAVEPOINT releases fine, the COMMIT fails.
        attempt.session.execute(text("INSERT INTO deferred_child VALUES (1, 999)"))
        return attempt.complete(1)

    try:
        assert drain_until_settled(worker, 3) == [1, 1, 0]
        job = kit.client.get_job(chain.id)
        assert (job.status, job.attempt, job.output) == ("failed", 2, None)
        assert job.last_attempt_error is not None
        assert "COMMIT failed" in job.last_attempt_error
        assert effects(db, "written") == 0
        assert (worker.completed, worker.failed) == (0, 2)
    finally:
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE deferred_child"))


def test_in_a_group_only_the_job_out_of_attempts_fails(kit: Kit) -> None:
    chains = [start(kit, n=i) for i in range(5)]
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, batch=5, max_attempts=1)
    def handle(attempt: Any) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="written"))
        attempt.session.flush()
        if attempt.input["n"] == 2:
            raise RuntimeError("this one cannot")
        return attempt.complete(attempt.input["n"])

    assert drain_until_settled(worker, 2) == [5, 0]
    statuses = [kit.client.get_chain(c.id).status for c in chains]
    assert statuses == ["completed", "completed", "failed", "completed", "completed"]
    assert effects(kit.db, "written") == 4


def test_a_lease_that_lapsed_on_the_last_attempt_fails_the_job(kit: Kit) -> None:
    """A staged job whose worker died on every attempt (the job may be what kills it) is
    not retried for ever: the reaper fails it once no attempt is left, and returns it to
    pending while some are."""
    spent, spare = start(kit, staged_work, n=1), start(kit, staged_work, n=2)
    lapsed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with kit.db.engine.begin() as conn:  # staged attempts whose worker vanished
        for chain, attempt in ((spent, 3), (spare, 2)):
            conn.execute(
                update(Job.__table__)
                .where(Job.__table__.c.id == chain.id)
                .values(
                    status="running",
                    attempt=attempt,
                    leased_by="dead-worker",
                    leased_until=lapsed,
                )
            )
    worker = kit.worker()

    @worker.handler(staged_work, mode="staged", max_attempts=3)
    def call_out(attempt: Any) -> q.Outcome:
        with attempt.prepare():
            pass
        with attempt.transaction():
            return attempt.complete(attempt.job.attempt)

    worker.drain()
    job = kit.client.get_job(spent.id)
    assert (job.status, job.attempt, job.leased_by) == ("failed", 3, None)
    assert job.last_attempt_error is not None
    assert "lease of attempt 3 expired" in job.last_attempt_error
    assert job.completed_at is not None
    assert kit.client.get_chain(spare.id).output == 3  # reaped, then its last attempt ran


def test_a_failed_chain_tells_its_waiters(kit: Kit) -> None:
    chain = start(kit)
    worker = kit.worker()
    notify = kit.client.notify
    assert isinstance(notify, q.InMemoryNotify)
    told: list[Any] = []
    subscription = notify.listen_chain_completed(chain.id, told.append)
    try:

        @worker.handler(work)
        def give_up(attempt: Any) -> q.Outcome:
            raise q.Fail("no")

        worker.drain()
    finally:
        subscription.close()
    assert told == [chain.id]


# --- configuration ----------------------------------------------------------------------


@pytest.fixture
def client() -> q.Queuert:
    return q.Queuert(create_engine("sqlite://"), limited_types)


limited_types = q.JobTypes()
limited = limited_types.entry("limited", input=dict, max_attempts=4)
unlimited = limited_types.entry("unlimited", input=dict)


def test_the_most_specific_limit_wins(client: q.Queuert) -> None:
    def registered(job_type: q.JobType[Any, Any], **options: Any) -> int | None:
        worker = client.worker(max_attempts=10)
        worker.handler(job_type, **options)(lambda a: a.complete(None))
        return worker.handlers[job_type.name].max_attempts

    assert registered(unlimited) == 10  # the worker's
    assert registered(limited) == 4  # the type's over the worker's
    assert registered(limited, max_attempts=2) == 2  # the handler's over both
    assert registered(limited, max_attempts=None) is None  # the handler lifts the limit
    plain = client.worker()
    plain.handler(unlimited)(lambda a: a.complete(None))
    assert plain.handlers["unlimited"].max_attempts is None  # default: unlimited, as before


@pytest.mark.parametrize("value", [0, -1, 1.5, "3", True])
def test_a_bad_limit_is_refused_where_it_is_given(client: q.Queuert, value: Any) -> None:
    with pytest.raises(q.WorkerConfigError, match="max_attempts of the worker"):
        client.worker(max_attempts=value)
    with pytest.raises(q.WorkerConfigError, match="max_attempts of the handler for 'unlimited'"):
        client.worker().handler(unlimited, max_attempts=value)
    with pytest.raises(q.InvalidJobTypesError, match="max_attempts of 'x'"):
        q.JobTypes().entry("x", input=dict, max_attempts=value)


def test_fail_on_takes_exception_classes_only(client: q.Queuert) -> None:
    with pytest.raises(q.WorkerConfigError, match="fail_on of the handler for 'unlimited'"):
        client.worker().handler(unlimited, fail_on=("KeyError",))
    worker = client.worker()
    worker.handler(unlimited, fail_on=KeyError)(lambda a: a.complete(None))
    assert worker.handlers["unlimited"].fail_on == (KeyError,)


# --- a failed chain is terminal ---------------------------------------------------------


def fail_chain(db: Db, chain_id: Any, *, ago: dt.timedelta = dt.timedelta(0)) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            update(Job.__table__)
            .where(Job.__table__.c.id == chain_id)
            .values(status="failed", completed_at=dt.datetime.now(dt.UTC) - ago)
        )


def test_open_deduplication_does_not_match_a_failed_chain(kit: Kit) -> None:
    key = q.Dedup("order:7")
    with Session(kit.db.engine) as s, s.begin():
        first = kit.client.start_chain(s, work, {"n": 1, "sleep": 0}, dedup=key)
    fail_chain(kit.db, first.id)
    with Session(kit.db.engine) as s, s.begin():
        again = kit.client.start_chain(s, work, {"n": 1, "sleep": 0}, dedup=key)
        any_scope = kit.client.start_chain(
            s, work, {"n": 1, "sleep": 0}, dedup=q.Dedup("order:7", scope="any")
        )
    assert (again.deduplicated, again.id != first.id) == (False, True)
    assert (any_scope.deduplicated, any_scope.id) == (True, again.id)


def test_cleanup_keeps_failed_chains_unless_asked(kit: Kit) -> None:
    old = dt.timedelta(days=10)
    failed, recent = start(kit, n=1), start(kit, n=2)
    fail_chain(kit.db, failed.id, ago=old)
    fail_chain(kit.db, recent.id)
    with kit.db.engine.begin() as conn:  # started long ago, as a chain failing then was
        conn.execute(update(Job.__table__).values(created_at=dt.datetime.now(dt.UTC) - 2 * old))
    assert kit.cleanup(older_than=dt.timedelta(0)) == 0
    assert kit.cleanup(older_than=dt.timedelta(0), failed_older_than=dt.timedelta(days=1)) == 1
    with Session(kit.db.engine) as s:
        left = set(s.scalars(select(Job.chain_id)))
    assert left == {recent.id}
