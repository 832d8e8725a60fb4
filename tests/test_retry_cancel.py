"""Operators' retry and cancel: retry_job, retry_jobs, cancel_chain, and how waiters see the end.

On both engines; the worker scenarios on both workers (``kit``); the API on
both clients where the test says so. Races with a running attempt: a staged
attempt mid-flight (both engines, both workers), and an atomic attempt
completing while a cancel waits for its row, on PostgreSQL with two real
connections.

Failed jobs come from a worker (``max_attempts``, ``q.Fail``) where the
scenario is about that job; where a test needs failures at chosen times or
attempt counts it sets them up with an UPDATE (:func:`make_failed`), which
writes what the worker writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypedDict

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, WorkIn, greet, job_types, signup, staged_work, work
from .conftest import Db
from .test_notify_conformance import eventually
from .workers import Kit, async_url

DEADLINE_S = 10.0


class SourceIn(TypedDict):
    source: str


fan_types = q.JobTypes()
fetch = fan_types.entry("fetch", input=SourceIn, output=int)
merge = fan_types.entry("merge", input=SourceIn, output=int, blockers=q.many(fetch))
publish = fan_types.entry("publish", input=SourceIn, output=int, blockers=q.many(merge))


def start(
    client: q.Queuert, db: Db, job_type: q.JobType[WorkIn, int] = work, **kw: Any
) -> uuid.UUID:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, job_type, {"n": 4, "sleep": 0}, **kw).id


def make_failed(
    db: Db,
    job_id: uuid.UUID,
    *,
    error: str = "RuntimeError: gateway down",
    attempt: int = 3,
    at: dt.datetime | None = None,
) -> None:
    """What a worker writes for a job out of attempts, at a chosen time and attempt count."""
    with db.engine.begin() as conn:
        conn.execute(
            update(Job.__table__)
            .where(Job.__table__.c.id == job_id)
            .values(
                status="failed",
                attempt=attempt,
                last_attempt_error=error,
                completed_at=at or dt.datetime.now(dt.UTC),
                leased_by=None,
                leased_until=None,
            )
        )


def effects(db: Db, label: str) -> int:
    with Session(db.engine) as s:
        stmt = select(func.count()).select_from(Effect).where(Effect.label == label)
        return s.execute(stmt).scalar_one()


# --- retry_job ---------------------------------------------------------------------------


def test_retry_job_revives_a_failed_job_and_the_attempt_count_continues(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    fixed = threading.Event()

    @worker.handler(work, max_attempts=1)
    def flaky(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        if not fixed.is_set():
            raise RuntimeError("gateway down")
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="retried"))
        return attempt.complete(attempt.job.attempt)

    assert worker.drain() == 1
    failed_error = client.get_job(job_id).last_attempt_error
    assert failed_error is not None
    assert "gateway down" in failed_error
    assert worker.drain() == 0  # a failed job is never taken
    assert client.get_chain(job_id).is_failed

    wakeups = kit.notify.sent["job_scheduled"]
    with Session(db.engine) as s:
        with s.begin():
            job = client.retry_job(s, job_id)
            assert kit.notify.sent["job_scheduled"] == wakeups  # not before COMMIT
        assert kit.notify.sent["job_scheduled"] == wakeups + 1
    assert (job.status, job.attempt, job.completed_at, job.completed_by) == (
        "pending",
        1,
        None,
        None,
    )
    assert job.last_attempt_error == failed_error  # kept until the next attempt
    assert job.scheduled_at <= dt.datetime.now(dt.UTC)

    fixed.set()
    assert worker.drain() == 1
    done = client.get_job(job_id)
    assert (done.status, done.output, done.attempt, done.last_attempt_error) == (
        "completed",
        2,
        2,
        None,
    )
    assert effects(db, "retried") == 1


def test_retry_job_refuses_what_has_not_failed_and_rolls_back_with_the_caller(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    pending = start(client, db)
    failed = start(client, db)
    make_failed(db, failed)
    with Session(db.engine) as s, s.begin():
        with pytest.raises(q.JobNotFoundError):
            client.retry_job(s, uuid.uuid4())
        with pytest.raises(q.JobNotRetryableError) as info:
            client.retry_job(s, pending)
    assert (info.value.job_id, info.value.status) == (pending, "pending")
    assert "trigger_job makes it due now" in str(info.value)

    wakeups = notify.sent["job_scheduled"]
    with Session(db.engine) as s, s.begin():
        client.retry_job(s, str(failed))
        s.rollback()
    assert client.get_job(failed).status == "failed"
    assert notify.sent["job_scheduled"] == wakeups

    with Session(db.engine) as s, s.begin():
        client.cancel_chain(s, failed)
    with Session(db.engine) as s, s.begin(), pytest.raises(q.JobNotRetryableError) as cancelled:
        client.retry_job(s, failed)
    assert cancelled.value.status == "cancelled"


def test_trigger_job_on_a_failed_job_points_to_retry_job(db: Db, client: q.Queuert) -> None:
    job_id = start(client, db)
    make_failed(db, job_id)
    with Session(db.engine) as s, s.begin(), pytest.raises(q.JobNotTriggerableError) as info:
        client.trigger_job(s, job_id)
    assert info.value.status == "failed"
    assert "retry_job(session, job_id)" in str(info.value)


def test_retry_jobs_takes_the_failed_jobs_of_a_filter_in_one_call(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    now = dt.datetime.now(dt.UTC)
    old = [start(client, db) for _ in range(2)]
    recent = [start(client, db) for _ in range(3)]
    staged = start(client, db, staged_work)
    still_pending = start(client, db)
    for job_id in old:
        make_failed(db, job_id, at=now - dt.timedelta(days=2))
    for job_id in [*recent, staged]:
        make_failed(db, job_id, at=now - dt.timedelta(minutes=5))

    with Session(db.engine) as s, s.begin():
        with pytest.raises(TypeError, match="wrap a single one"):
            client.retry_jobs(s, types="work")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="naive"):
            client.retry_jobs(s, failed_since=dt.datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="limit"):
            client.retry_jobs(s, limit=0)
        assert client.retry_jobs(s, types=[work], failed_since=now - dt.timedelta(hours=1)) == 3
    assert [client.get_job(j).status for j in [*old, *recent, staged]] == [
        "failed",
        "failed",
        "pending",
        "pending",
        "pending",
        "failed",
    ]
    wakeups = notify.sent["job_scheduled"]
    with Session(db.engine) as s, s.begin():
        assert client.retry_jobs(s, types=["staged-work"]) == 1
        assert client.retry_jobs(s, limit=1) == 1  # the first created first
    assert notify.sent["job_scheduled"] == wakeups + 2
    assert [client.get_job(j).status for j in old] == ["pending", "failed"]
    with Session(db.engine) as s, s.begin():
        assert client.retry_jobs(s) == 1
        assert client.retry_jobs(s) == 0
    assert client.get_job(still_pending).status == "pending"
    assert client.list_jobs(statuses=["failed"]).items == []


def test_a_dependent_of_a_failed_chain_resumes_once_the_retried_chain_completes(kit: Kit) -> None:
    kit = kit.using(job_types=fan_types)
    db, client = kit.db, kit.client
    with Session(db.engine) as s, s.begin():
        source = client.start_chain(s, fetch, {"source": "abc"})
        merged = client.start_chain(s, merge, {"source": "m"}, blockers=[source])
    worker = kit.worker()
    fixed = threading.Event()

    @worker.handler(fetch)
    def fetching(attempt: q.Attempt[SourceIn, int]) -> q.Outcome:
        if not fixed.is_set():
            raise q.Fail("source offline")
        return attempt.complete(len(attempt.input["source"]))

    worker.handler(merge)(lambda a: a.complete(sum(a.blocker_outputs(fetch))))
    assert worker.drain() == 1
    assert client.get_chain(source.id).is_failed
    assert worker.drain() == 0
    fixed.set()
    stuck = client.list_blocked_jobs(source.id)
    assert [(job.chain_id, job.status) for job in stuck] == [(merged.id, "blocked")]
    with Session(db.engine) as s, s.begin():
        client.retry_job(s, source.id)
    assert worker.drain() == 2
    assert client.get_chain(merged.id).output == 3


# --- cancel_chain --------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["pending", "scheduled", "blocked", "failed"])
def test_cancel_chain_ends_a_chain_whatever_it_waits_for(
    db: Db, notify: q.InMemoryNotify, state: str
) -> None:
    client = q.Queuert(db.engine, fan_types, notify=notify)
    with Session(db.engine) as s, s.begin():
        other = client.start_chain(s, fetch, {"source": "x"}, run_in=dt.timedelta(hours=1))
        if state == "blocked":
            chain = client.start_chain(s, merge, {"source": "m"}, blockers=[other])
        else:
            run_in = dt.timedelta(hours=1) if state == "scheduled" else None
            chain = client.start_chain(s, fetch, {"source": "y"}, run_in=run_in)
    if state == "failed":
        make_failed(db, chain.id, error="ValueError: bad source")  # set up by hand
    assert client.get_chain(chain.id).status == ("pending" if state == "scheduled" else state)

    ended = notify.sent["chain_completed"]
    with Session(db.engine) as s:
        with s.begin():
            assert client.cancel_chain(s, chain.id, reason="duplicate order") == [chain.id]
            assert notify.sent["chain_completed"] == ended  # not before COMMIT
        assert notify.sent["chain_completed"] == ended + 1
    job = client.get_job(chain.id)
    assert (job.status, job.cancel_reason, job.completed_by, job.leased_by) == (
        "cancelled",
        "duplicate order",
        None,
        None,
    )
    assert job.completed_at is not None
    if state == "failed":
        assert job.last_attempt_error == "ValueError: bad source"  # kept
    cancelled = client.get_chain(chain.id)
    assert cancelled.is_cancelled
    assert not cancelled.is_completed
    assert cancelled.completed_at == job.completed_at
    assert [c.id for c in client.list_chains(statuses=["cancelled"])] == [chain.id]
    assert [j.id for j in client.list_jobs(statuses=["cancelled"])] == [chain.id]

    with Session(db.engine) as s, s.begin():
        assert client.cancel_chain(s, chain.id, reason="again") == []  # already cancelled
        client.trigger_job(s, other.id)
    worker = client.worker()
    worker.handler(fetch)(lambda a: a.complete(1))
    worker.handler(merge)(lambda a: a.complete(2))
    assert worker.drain() == 1  # only the other chain runs
    assert client.get_job(chain.id).cancel_reason == "duplicate order"
    with Session(db.engine) as s, s.begin():
        assert client.cancel_chain(s, other.id) == []  # completed: nothing to cancel
    assert client.get_chain(other.id).status == "completed"


def test_cancel_chain_refusals_and_rollback(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    chain_id = start(client, db)
    with Session(db.engine) as s, s.begin(), pytest.raises(q.ChainNotFoundError):
        client.cancel_chain(s, uuid.uuid4())
    ended = notify.sent["chain_completed"]
    with Session(db.engine) as s, s.begin():
        client.cancel_chain(s, chain_id)
        s.rollback()
    assert client.get_chain(chain_id).status == "pending"
    assert notify.sent["chain_completed"] == ended


def test_cancel_without_cascade_leaves_dependents_blocked_and_listed(db: Db) -> None:
    client = q.Queuert(db.engine, fan_types)
    with Session(db.engine) as s, s.begin():
        a = client.start_chain(s, fetch, {"source": "a"})
        m = client.start_chain(s, merge, {"source": "m"}, blockers=[a])
    with Session(db.engine) as s, s.begin():
        assert client.cancel_chain(s, a.id, reason="source gone") == [a.id]
    assert client.get_chain(m.id).status == "blocked"
    assert [(j.chain_id, j.status) for j in client.list_blocked_jobs(a.id)] == [(m.id, "blocked")]
    # A later cascade reaches the dependents of the chain cancelled earlier.
    with Session(db.engine) as s, s.begin():
        assert client.cancel_chain(s, a.id, reason="later", cascade=True) == [m.id]
    assert client.get_job(m.id).cancel_reason == "later"
    assert client.get_job(a.id).cancel_reason == "source gone"


def test_cancel_with_cascade_cancels_blocked_chains_transitively(db: Db) -> None:
    client = q.Queuert(db.engine, fan_types)
    with Session(db.engine) as s, s.begin():
        a = client.start_chain(s, fetch, {"source": "a"})
        b = client.start_chain(s, fetch, {"source": "b"})
        m1 = client.start_chain(s, merge, {"source": "m1"}, blockers=[a, b])
        m2 = client.start_chain(s, merge, {"source": "m2"}, blockers=[b])
        p = client.start_chain(s, publish, {"source": "p"}, blockers=[m1, m2])
        elsewhere = client.start_chain(s, merge, {"source": "m3"}, blockers=[b])
    with Session(db.engine) as s, s.begin():
        cancelled = client.cancel_chain(s, a.id, reason="bad batch", cascade=True)
    assert cancelled == [a.id, m1.id, p.id]
    for chain_id in cancelled:
        job = client.get_job(chain_id)
        assert (job.status, job.cancel_reason) == ("cancelled", "bad batch")
    assert [client.get_chain(c).status for c in (b.id, m2.id, elsewhere.id)] == [
        "pending",
        "blocked",
        "blocked",
    ]


def test_cancelling_a_chain_whose_staged_attempt_is_mid_flight_refuses_its_late_write(
    kit: Kit,
) -> None:
    db, client = kit.db, kit.client
    chain_id = start(client, db, staged_work)
    worker = kit.worker()
    in_external_step, cancelled, finished = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    @worker.handler(staged_work, mode="staged", lease=dt.timedelta(seconds=60))
    def charge(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        try:
            with attempt.prepare():
                pass
            in_external_step.set()
            assert cancelled.wait(DEADLINE_S)  # the "external call"
            # The next lease renewal is 30 s away: only the message can set it in time.
            seen["signalled"] = attempt.signal.wait(5)
            seen["noticed_at"] = time.monotonic()
            seen["reason"] = attempt.signal.reason
            try:
                with attempt.transaction() as s:
                    s.add(Effect(job_id=str(attempt.job.id), label="late"))
                    return attempt.complete(1)
            except q.QueuertError as exc:
                seen["error"] = exc
                raise
        finally:
            finished.set()

    worker.start()
    try:
        assert in_external_step.wait(DEADLINE_S)
        with Session(db.engine) as s, s.begin():
            assert client.cancel_chain(s, chain_id, reason="customer left") == [chain_id]
        committed = time.monotonic()
        cancelled.set()
        assert finished.wait(DEADLINE_S)
    finally:
        worker.stop()
    assert seen["signalled"]
    assert seen["reason"] == "cancelled"
    delay = seen["noticed_at"] - committed
    assert delay < 2.5
    print(
        f"\ncancel of a staged attempt ({kit.kind}, {db.kind}): signalled {delay * 1000:.0f} ms after COMMIT"
    )
    assert isinstance(seen["error"], q.JobCancelledError)
    assert seen["error"].job_id == chain_id
    assert effects(db, "late") == 0
    job = client.get_job(chain_id)
    assert (job.status, job.cancel_reason, job.attempt, job.leased_by) == (
        "cancelled",
        "customer left",
        1,
        None,
    )
    assert worker.completed == 0


# --- cancel vs an atomic attempt, on PostgreSQL (two real connections) -------------------------


def _wait_for_lock_wait(db: Db) -> bool:
    """Whether a backend (the cancel's) waits for a lock, within the deadline."""
    sql = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )

    def waiting() -> bool:
        with db.engine.connect() as conn:
            return bool(conn.execute(sql).scalar_one())

    return eventually(waiting, DEADLINE_S)


@pytest.mark.parametrize("outcome", ["complete", "continue"])
def test_cancel_waits_for_the_atomic_attempt_holding_the_job_then_sees_what_it_did(
    pg_kit: Kit, outcome: str
) -> None:
    """The attempt holds the job's row; the cancel waits for it, then acts on what committed.

    complete: the chain completed, so nothing is cancelled (the completion and
    its write stand). continue: the attempt's job completed and the chain moved
    on; the cancel re-reads the chain and cancels the continuation. Without the
    row lock the cancel would read the job as pending and overwrite the
    completion: both outcomes.
    """
    kit = pg_kit
    db, client = kit.db, kit.client
    job_type = work if outcome == "complete" else signup
    given: dict[str, Any] = {"n": 4, "sleep": 0} if outcome == "complete" else {"user_id": 1}
    with Session(db.engine) as s, s.begin():
        chain_id = client.start_chain(s, job_type, given).id  # type: ignore[arg-type]
    worker = kit.worker()
    holding, release = threading.Event(), threading.Event()

    @worker.handler(job_type, on_thread=True)
    def hold(attempt: q.Attempt[Any, Any]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="atomic"))
        attempt.session.flush()
        holding.set()
        assert release.wait(DEADLINE_S)
        if outcome == "complete":
            return attempt.complete(8)
        return attempt.continue_with(greet, {"user_id": 1})

    result: list[list[uuid.UUID]] = []

    def cancel() -> None:
        with Session(db.engine) as s, s.begin():
            result.append(client.cancel_chain(s, chain_id, reason="too late?"))

    worker.start()
    canceller = threading.Thread(target=cancel)
    try:
        assert holding.wait(DEADLINE_S)
        canceller.start()
        assert _wait_for_lock_wait(db), "the cancel did not wait for the attempt's row lock"
        assert not result
        release.set()
        canceller.join(DEADLINE_S)
        assert not canceller.is_alive()
        assert eventually(lambda: worker.completed == 1, DEADLINE_S)
    finally:
        release.set()
        worker.stop()
    assert effects(db, "atomic") == 1
    chain = client.get_chain(chain_id)
    first = client.get_job(chain_id)
    assert (first.status, first.cancel_reason) == ("completed", None)
    if outcome == "complete":
        assert result == [[]]
        assert (chain.status, chain.output) == ("completed", 8)
    else:
        assert result == [[chain_id]]
        assert (chain.status, chain.current_index, chain.current_type_name) == (
            "cancelled",
            1,
            "greet",
        )
        assert client.get_job(chain.current_job_id).cancel_reason == "too late?"


def test_a_cancel_holding_the_job_keeps_workers_off_it_and_wins(pg_kit: Kit) -> None:
    """Cancel first: its transaction holds the job's row, a worker skips the job, then finds it
    cancelled; the handler never runs."""
    kit = pg_kit
    db, client = kit.db, kit.client
    chain_id = start(client, db)
    worker = kit.worker()
    ran: list[uuid.UUID] = []

    @worker.handler(work)
    def run(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        ran.append(attempt.job.id)
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="atomic"))
        return attempt.complete(1)

    with Session(db.engine) as s, s.begin():
        assert client.cancel_chain(s, chain_id, reason="first") == [chain_id]
        assert worker.drain() == 0  # another connection: the row is locked, so skipped
    assert worker.drain() == 0  # committed: cancelled, never taken
    assert ran == []
    assert effects(db, "atomic") == 0
    assert client.get_job(chain_id).status == "cancelled"


# --- await_chain and complete_chain on chains that ended without completing -------------------


class Watched(q.InMemoryNotify):
    """An in-memory notifier that says when someone listens for a chain's end."""

    def __init__(self) -> None:
        super().__init__()
        self.listening = threading.Event()

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> Any:
        listener = super().listen_chain_completed(chain_id, callback)
        self.listening.set()
        return listener


@pytest.mark.parametrize("client_kind", ["sync", "async"])
def test_await_chain_raises_at_once_for_a_failed_or_cancelled_chain(
    db: Db, client_kind: str
) -> None:
    notify = Watched()
    client = q.Queuert(db.engine, job_types, notify=notify)
    failed = start(client, db)
    worker = client.worker()

    @worker.handler(work)
    def declined(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise q.Fail("card declined")

    assert worker.drain() == 1
    waited = start(client, db)
    long = dt.timedelta(seconds=30)
    aengine = create_async_engine(async_url(db)) if client_kind == "async" else None
    aclient = q.AsyncQueuert(aengine, job_types, notify=notify) if aengine is not None else None

    def await_chain(chain_id: uuid.UUID) -> q.Chain[Any, Any]:
        if aclient is None:
            return client.await_chain(chain_id, timeout=long, poll_interval=long)

        async def waiting() -> q.Chain[Any, Any]:
            try:
                return await aclient.await_chain(chain_id, timeout=long, poll_interval=long)
            finally:
                assert aengine is not None
                await aengine.dispose()

        return asyncio.run(waiting())

    started = time.monotonic()
    with pytest.raises(q.ChainFailedError) as info:
        await_chain(failed)
    assert time.monotonic() - started < 5
    assert info.value.chain.id == failed
    assert info.value.error == "Fail: card declined"
    assert "Fail: card declined" in str(info.value)

    if aengine is not None:
        aengine = create_async_engine(async_url(db))
        aclient = q.AsyncQueuert(aengine, job_types, notify=notify)
    caught: list[BaseException] = []

    def wait() -> None:
        try:
            await_chain(waited)
        except BaseException as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        assert notify.listening.wait(DEADLINE_S)
        with Session(db.engine) as s, s.begin():
            client.cancel_chain(s, waited, reason="order withdrawn")
        cancelled_at = time.monotonic()
        waiter.join(DEADLINE_S)
    finally:
        waiter.join(DEADLINE_S)
    assert time.monotonic() - cancelled_at < 5, "the waiter missed the cancel's notification"
    (error,) = caught
    assert isinstance(error, q.ChainCancelledError)
    assert (error.chain.id, error.reason) == (waited, "order withdrawn")
    assert "was cancelled: order withdrawn" in str(error)


def test_complete_chain_refuses_a_cancelled_chain_and_may_finish_a_failed_one(db: Db) -> None:
    client = q.Queuert(db.engine, fan_types)
    with Session(db.engine) as s, s.begin():
        cancelled = client.start_chain(s, fetch, {"source": "c"})
        failed = client.start_chain(s, fetch, {"source": "f"})
        merged = client.start_chain(s, merge, {"source": "m"}, blockers=[failed])
        client.cancel_chain(s, cancelled.id, reason="dup")
    with Session(db.engine) as s, s.begin(), pytest.raises(q.ChainCancelledError) as info:
        client.complete_chain(s, cancelled.id, fetch, lambda c: c.complete(1))
    assert info.value.reason == "dup"
    assert client.get_chain(cancelled.id).status == "cancelled"

    make_failed(db, failed.id)
    with Session(db.engine) as s, s.begin():
        done = client.complete_chain(s, failed.id, fetch, lambda c: c.complete(5))
    assert (done.status, done.output) == ("completed", 5)
    job = client.get_job(failed.id)
    assert (job.completed_by, job.last_attempt_error) == (None, None)
    assert client.get_chain(merged.id).status == "pending"  # its dependent resumes


def test_async_client_retries_and_cancels_in_the_callers_transaction(
    db: Db, notify: q.InMemoryNotify
) -> None:
    client = q.Queuert(db.engine, job_types, notify=notify)
    one, two, three = (start(client, db) for _ in range(3))
    for job_id in (one, two):
        make_failed(db, job_id)

    async def operate() -> tuple[q.Job[Any], int, list[uuid.UUID]]:
        engine = create_async_engine(async_url(db))
        aclient = q.AsyncQueuert(engine, job_types, notify=notify)
        try:
            async with AsyncSession(engine) as s, s.begin():
                job = await aclient.retry_job(s, one)
                with pytest.raises(q.JobNotRetryableError):
                    await aclient.retry_job(s, three)
            async with AsyncSession(engine) as s, s.begin():
                count = await aclient.retry_jobs(s, types=[work])
                cancelled = await aclient.cancel_chain(s, three, reason="async")
            with pytest.raises(ValueError, match="limit"):
                async with AsyncSession(engine) as s:
                    await aclient.retry_jobs(s, limit=-1)
            return job, count, cancelled
        finally:
            await engine.dispose()

    job, count, cancelled = asyncio.run(operate())
    assert (job.id, job.status) == (one, "pending")
    assert count == 1
    assert cancelled == [three]
    assert [client.get_job(j).status for j in (one, two, three)] == [
        "pending",
        "pending",
        "cancelled",
    ]
    assert client.get_job(three).cancel_reason == "async"
