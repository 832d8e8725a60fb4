"""Staged mode: prepare -> external work (no transaction, renewed lease) -> owned transaction.

Every in-process scenario runs on both workers (``kind``: the thread ``Worker``
and the ``AsyncWorker``) and both engines, through the ``kit`` of
tests/workers.py. A staged handler is written once, with ``attempt.prepare()``
and ``attempt.transaction()`` as ``with`` blocks; on the asyncio worker it runs
on a thread, its blocks entering the ``AsyncAttempt``'s own ``async with``
blocks on the event loop.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, WorkIn, build_worker, job_types, staged_work, work
from .conftest import Db
from .workers import Kit

ROOT = Path(__file__).resolve().parent.parent


def start(
    client: q.Queuert, db: Db, job_type: q.JobType[WorkIn, int] = work, sleep: float = 0
) -> uuid.UUID:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, job_type, {"n": 4, "sleep": sleep}).id


def effects(db: Db, label: str) -> int:
    with Session(db.engine) as s:
        stmt = select(func.count()).select_from(Effect).where(Effect.label == label)
        return s.execute(stmt).scalar_one()


def job_row(db: Db, job_id: uuid.UUID) -> Job:
    with Session(db.engine, expire_on_commit=False) as s:
        return s.get_one(Job, job_id)


def test_staged_attempt_reads_calls_out_and_writes(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    seen: dict[str, object] = {}

    @worker.handler(work, mode="staged")
    def charge(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare() as s:
            seen["status_in_prepare"] = s.get_one(Job, attempt.job.id).status
        # No transaction open here: the job is committed as running with a lease.
        row = job_row(db, attempt.job.id)
        seen["outside"] = (row.status, row.leased_by)
        with attempt.transaction() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="charged"))
            return attempt.complete(attempt.input["n"] * 10)

    assert worker.drain() == 1
    assert seen["status_in_prepare"] == "running"
    assert seen["outside"] == ("running", worker.worker_id)
    row = job_row(db, job_id)
    assert (row.status, row.output, row.leased_by, row.leased_until) == (
        "completed",
        40,
        None,
        None,
    )
    assert effects(db, "charged") == 1


def test_prepare_writes_are_kept_when_the_external_step_fails(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, mode="staged")
    def charge(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="prepared"))
        raise ConnectionError("gateway down")

    assert worker.drain() == 1
    row = job_row(db, job_id)
    assert (row.status, row.attempt, row.leased_by) == ("pending", 1, None)
    assert row.last_attempt_error is not None
    assert "gateway down" in row.last_attempt_error
    assert effects(db, "prepared") == 1


def test_exception_inside_prepare_rolls_back_its_writes(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, mode="staged")
    def charge(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="prepared"))
            s.flush()
            raise KeyError("bad order")
        raise AssertionError("unreachable")

    assert worker.drain() == 1
    assert job_row(db, job_id).status == "pending"
    assert effects(db, "prepared") == 0


def test_outcome_returned_outside_transaction_is_written_under_the_ownership_check(
    kit: Kit,
) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, mode="staged")
    def call(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        return attempt.complete(99)

    assert worker.drain() == 1
    assert job_row(db, job_id).output == 99


def test_lease_is_renewed_while_the_handler_outlives_it(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    rival = kit.worker(worker_id="rival")
    rival.handler(work)(lambda a: a.complete(-1))
    lease = dt.timedelta(seconds=1)
    observed: list[dt.datetime] = []
    reaped: list[bool] = []

    @worker.handler(work, mode="staged", lease=lease)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        end = time.monotonic() + 3 * lease.total_seconds()
        while time.monotonic() < end:
            row = job_row(db, attempt.job.id)
            assert row.leased_until is not None
            observed.append(row.leased_until)
            # A rival worker finds nothing to take: its drain() reaps expired
            # leases (and would then run the job, with output -1).
            reaped.append(rival.drain() > 0)
            time.sleep(0.25)
        assert not attempt.signal.is_set()
        with attempt.transaction() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="slow"))
            return attempt.complete(1)

    assert worker.drain() == 1
    assert not any(reaped)
    assert max(observed) - min(observed) >= dt.timedelta(seconds=1.5)  # renewed, repeatedly
    row = job_row(db, job_id)
    assert (row.status, row.completed_by, row.attempt) == ("completed", worker.worker_id, 1)
    assert effects(db, "slow") == 1


@pytest.mark.parametrize("other", ["none", "longer-atomic"])
def test_prepare_commits_the_handlers_lease(kit: Kit, other: str) -> None:
    """The handler's lease after prepare(); the provisional lease stands when it is the handler's.

    The acquiring statement writes a provisional lease (the longest of the
    worker's handlers); prepare() leaves the job leased for this handler's
    own lease, whether it keeps the provisional one or sets it anew. When the
    provisional lease is this handler's and prepare() is fast, it stands: no
    second UPDATE, ``leased_until`` is exactly the acquisition's. Both workers.
    """
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    lease = dt.timedelta(seconds=90)
    if other == "longer-atomic":
        worker.handler(staged_work, timeout=dt.timedelta(hours=2))(lambda a: a.complete(0))
    seen: list[tuple[dt.datetime, dt.datetime]] = []

    @worker.handler(work, mode="staged", lease=lease)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        row = job_row(db, attempt.job.id)
        assert row.leased_until is not None
        assert row.last_attempt_at is not None
        seen.append((row.last_attempt_at, row.leased_until))
        with attempt.transaction():
            return attempt.complete(1)

    before = dt.datetime.now(dt.UTC)
    assert worker.drain() == 1
    after = dt.datetime.now(dt.UTC)
    ((acquired, leased_until),) = seen
    assert before + lease <= leased_until <= after + lease
    if other == "none":
        assert leased_until == acquired + lease  # the provisional lease stood
    assert job_row(db, job_id).status == "completed"


@pytest.mark.parametrize("takeover", ["taken", "completed", "deleted"])
def test_lost_job_makes_transaction_refuse_and_write_nothing(kit: Kit, takeover: str) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    caught: list[BaseException] = []
    reasons: list[str | None] = []

    @worker.handler(work, mode="staged", lease=dt.timedelta(seconds=1))
    def charge(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        with db.engine.begin() as conn:
            table = Job.__table__
            if takeover == "taken":  # reaped and acquired by another worker
                conn.execute(update(table).values(leased_by="other-worker"))
            elif takeover == "completed":  # e.g. complete_chain from the application
                conn.execute(update(table).values(status="completed", output=7))
            else:
                conn.execute(delete(table))
        # The lease keeper notices at its next renewal (half a lease).
        attempt.signal.wait(5)
        reasons.append(attempt.signal.reason)
        try:
            with attempt.transaction() as s:
                s.add(Effect(job_id=str(attempt.job.id), label="late"))
                return attempt.complete(1)
        except q.QueuertError as exc:
            caught.append(exc)
            raise

    assert worker.drain() == 1
    expected = {
        "taken": (q.JobTakenByAnotherWorkerError, "taken_by_another_worker"),
        "completed": (q.JobAlreadyCompletedError, "already_completed"),
        "deleted": (q.JobNotFoundError, "not_found"),
    }[takeover]
    assert len(caught) == 1
    assert isinstance(caught[0], expected[0])
    assert reasons == [expected[1]]
    assert effects(db, "late") == 0
    with Session(db.engine) as s:
        row = s.get(Job, job_id)
        if takeover == "deleted":
            assert row is None
        elif takeover == "completed":
            assert row is not None
            assert (row.status, row.output) == ("completed", 7)
        else:
            # Not rescheduled by the loser: the job stays with its new owner.
            assert row is not None
            assert (row.status, row.leased_by) == ("running", "other-worker")


def test_expired_lease_is_reaped_and_completed_by_another_worker(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    with db.engine.begin() as conn:  # a staged attempt whose worker vanished
        conn.execute(
            update(Job.__table__).values(
                status="running",
                attempt=1,
                leased_by="dead-worker",
                leased_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
            )
        )
    worker = kit.worker()
    worker.handler(work)(lambda a: a.complete(a.job.attempt))
    assert worker.drain() == 1
    row = job_row(db, job_id)
    # Reaping keeps the attempt count; the new acquisition adds one.
    assert (row.status, row.output, row.completed_by) == ("completed", 2, worker.worker_id)


def test_staged_api_is_refused_in_atomic_mode(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, on_thread=True)  # prepare() is a `with` block: bridged on asyncio
    def wrong(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        return attempt.complete(1)

    worker.drain()
    error = job_row(db, job_id).last_attempt_error
    assert error is not None
    assert "mode='staged'" in error


@pytest.mark.slow
def test_sigkill_during_external_step_completed_by_another_worker_exactly_once(
    kind: str, db: Db, tmp_path: Path
) -> None:
    # The killed worker is a subprocess of the kind under test (tests/app.py);
    # the rescuer is a thread worker.
    client = q.Queuert(db.engine, job_types)
    job_id = start(client, db, staged_work, sleep=60)
    env = {
        **os.environ,
        "QUEUERT_APP_URL": db.url,
        "QUEUERT_APP_STARTED_DIR": str(tmp_path),
        "QUEUERT_APP_LEASE_MS": "1000",
        "PYTHONPATH": str(ROOT),
    }
    entry_point = "run_from_env" if kind == "thread" else "run_async_from_env"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"import tests.app as a; a.{entry_point}()"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        marker = tmp_path / str(job_id)
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the staged handler never reached its external step"
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    row = job_row(db, job_id)
    if row.status == "completed":
        pytest.fail("the worker finished before it was killed; the external step was too short")
    assert (row.status, row.leased_by is not None) == ("running", True)

    rescuer = build_worker(db.url, sleep_scale=0)
    try:
        while rescuer.drain() == 0 and time.monotonic() < killed_at + 30:
            time.sleep(0.1)
        recovered_after = time.monotonic() - killed_at
    finally:
        rescuer.client.engine.dispose()
    row = job_row(db, job_id)
    assert (row.status, row.output, row.attempt) == ("completed", 8, 2)
    assert effects(db, "staged-work") == 1
    print(
        f"\nstaged SIGKILL ({kind}, {db.kind}): completed by another worker {recovered_after:.1f} s after the kill (lease 1 s)"
    )


def test_atomic_timeout_hung_handler_loses_the_job_on_postgresql(pg_kit: Kit) -> None:
    # The handler is stuck in a blocking call: the server ends its transaction.
    # On the asyncio worker the stuck call blocks the event loop, so that
    # worker's own asyncio.timeout cannot act: the server's time limit, set by
    # the acquiring statement on both workers, is what frees the job. The
    # rescuer is a thread worker in both cases (the producer's client).
    kit = pg_kit
    pg, client = kit.db, kit.client
    job_id = start(client, pg)
    hung = kit.worker(worker_id="hung", poll_interval=dt.timedelta(milliseconds=200))
    entered, finished = threading.Event(), threading.Event()

    @hung.handler(work, timeout=dt.timedelta(seconds=1))
    def stuck(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="hung"))
        attempt.session.flush()
        entered.set()
        time.sleep(4)  # idle in transaction past the timeout: the server ends it
        finished.set()
        return attempt.complete(-1)

    rescuer = client.worker(worker_id="rescuer", poll_interval=dt.timedelta(milliseconds=200))
    rescuer.handler(work)(lambda a: a.complete(a.input["n"]))

    hung.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        rescuer.start()
        deadline = started + 20
        while job_row(pg, job_id).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert finished.wait(10)
    finally:
        rescuer.stop()
        hung.stop()
    row = job_row(pg, job_id)
    assert (row.status, row.completed_by, row.output) == ("completed", "rescuer", 4)
    assert effects(pg, "hung") == 0
    assert hung.completed == 0
    print(
        f"\natomic timeout 1 s: job completed by another worker {took:.1f} s after the hang began"
    )


def test_a_stale_attempt_of_the_same_worker_cannot_write(kit: Kit) -> None:
    # The job was reaped and taken again by the same worker as a later attempt:
    # the first attempt must not renew, write or reschedule it.
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()
    caught: list[BaseException] = []

    @worker.handler(work, mode="staged", lease=dt.timedelta(seconds=1))
    def first(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        with db.engine.begin() as conn:  # what a reap + re-acquire by this worker leaves
            conn.execute(update(Job.__table__).values(attempt=Job.__table__.c.attempt + 1))
        assert attempt.signal.wait(5)
        try:
            with attempt.transaction() as s:
                s.add(Effect(job_id=str(attempt.job.id), label="stale"))
                return attempt.complete(1)
        except q.QueuertError as exc:
            caught.append(exc)
            raise

    assert worker.drain() == 1
    assert len(caught) == 1
    assert isinstance(caught[0], q.JobTakenByAnotherWorkerError)
    row = job_row(db, job_id)
    assert (row.status, row.attempt, row.leased_by) == ("running", 2, worker.worker_id)
    assert effects(db, "stale") == 0


def test_transaction_runs_once_per_attempt(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, mode="staged")
    def twice(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.transaction() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="first"))
        with attempt.transaction():
            return attempt.complete(1)

    worker.drain()
    row = job_row(db, job_id)
    assert row.status == "pending"
    assert row.last_attempt_error is not None
    assert "runs once per attempt" in row.last_attempt_error


def test_exception_after_the_outcome_committed_leaves_the_job_done(kit: Kit) -> None:
    db, client = kit.db, kit.client
    job_id = start(client, db)
    worker = kit.worker()

    @worker.handler(work, mode="staged")
    def late_error(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.transaction():
            outcome = attempt.complete(5)
        raise RuntimeError("cleanup failed")
        return outcome

    assert worker.drain() == 1
    row = job_row(db, job_id)
    assert (row.status, row.output, row.last_attempt_error) == ("completed", 5, None)
    assert (worker.completed, worker.failed) == (1, 0)


@pytest.mark.parametrize("how", ["complete_chain", "delete_chains"])
def test_ownership_lost_message_tells_the_staged_attempt_at_once(kit: Kit, how: str) -> None:
    db, client = kit.db, kit.client
    chain_id = start(client, db, staged_work)
    worker = kit.worker()
    noticed: list[tuple[str | None, float]] = []

    @worker.handler(staged_work, mode="staged", lease=dt.timedelta(seconds=60))
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        with Session(db.engine) as s, s.begin():
            if how == "complete_chain":
                client.complete_chain(s, chain_id, staged_work, lambda c: c.complete(99))
            else:
                client.delete_chains(s, [chain_id])
        committed = time.monotonic()
        # The next renewal is 30 s away: only the message can set the signal in time.
        assert attempt.signal.wait(5)
        noticed.append((attempt.signal.reason, time.monotonic() - committed))
        with attempt.transaction():
            return attempt.complete(1)

    assert worker.drain() == 1
    assert isinstance(client.notify, q.InMemoryNotify)
    assert client.notify.sent["job_ownership_lost"] == 1
    ((reason, delay),) = noticed
    assert reason == ("already_completed" if how == "complete_chain" else "not_found")
    assert delay < 2.5
    if how == "complete_chain":
        assert client.get_chain(chain_id).output == 99
    else:
        with pytest.raises(q.ChainNotFoundError):
            client.get_chain(chain_id)


def test_an_attempt_that_outlived_its_lease_unnoticed_completes_and_says_so(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt stalled past its lease but nobody reaped the job: its outcome is still
    its own to write, and the log tells the operator the worker stalled."""
    from .test_worker import FakeClock

    clock = FakeClock()
    kit = kit.using(clock=clock)
    job_id = start(kit.client, kit.db, staged_work)
    worker = kit.worker()

    @worker.handler(staged_work, mode="staged")
    def stalls(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        clock.advance(dt.timedelta(minutes=2))  # the 60 s lease ran out a minute ago
        with attempt.transaction():
            return attempt.complete(5)

    with caplog.at_level("WARNING", "queuert_sa.worker"):
        assert worker.drain() == 1
    assert kit.client.get_chain(job_id).output == 5
    assert "outlived its lease by 60.0 s" in caplog.text


def test_an_attempt_whose_job_was_deleted_says_so_instead_of_a_retry(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """No retry happens for a deleted job, and the log says why (not "retry at ?")."""
    job_id = start(kit.client, kit.db, staged_work)
    worker = kit.worker()

    @worker.handler(staged_work, mode="staged")
    def deleted(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        with Session(kit.db.engine) as s, s.begin():
            kit.client.delete_chains(s, [job_id])
        raise RuntimeError("the external call failed")

    with caplog.at_level("WARNING", "queuert_sa.worker"):
        assert worker.drain() == 1
    assert "not rescheduled (its job was deleted)" in caplog.text
    assert "retry at ?" not in caplog.text
