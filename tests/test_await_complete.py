"""await_chain and complete_chain (workerless completion), on both engines."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import TypedDict

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, User, WorkIn, job_types, work
from .conftest import Db


class RequestIn(TypedDict):
    request_id: int


class Decision(TypedDict):
    approved: bool


approval_types = q.JobTypes()
request = approval_types.entry(
    "request-approval", input=RequestIn, continues_with=["fulfil"], output=Decision
)
fulfil = approval_types.define("fulfil", input=RequestIn, output=Decision)


def start_request(client: q.Queuert, db: Db) -> uuid.UUID:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, request, {"request_id": 7}).id


def test_await_chain_wakes_on_completion_long_before_its_poll(db: Db, client: q.Queuert) -> None:
    worker = client.worker(poll_interval=dt.timedelta(seconds=60))
    worker.handler(work)(lambda a: a.complete(a.input["n"] + 1))
    worker.start()
    try:
        time.sleep(0.2)
        with Session(db.engine) as s, s.begin():
            chain_id = client.start_chain(s, work, {"n": 1, "sleep": 0}).id
        started = time.monotonic()
        done = client.await_chain(
            chain_id, work, timeout=dt.timedelta(seconds=30), poll_interval=dt.timedelta(seconds=30)
        )
        waited = time.monotonic() - started
    finally:
        assert worker.stop()
    assert (done.status, done.output) == ("completed", 2)
    assert waited < 5, f"woke after {waited:.1f} s: the notification was missed"


def test_await_chain_polls_without_a_shared_notifier(db: Db) -> None:
    producer = q.Queuert(db.engine, job_types)  # its own in-memory notifier
    waiter = q.Queuert(db.engine, job_types)  # never hears the producer's notifications
    with Session(db.engine) as s, s.begin():
        chain_id = producer.start_chain(s, work, {"n": 5, "sleep": 0}).id
    worker = producer.worker()
    worker.handler(work)(lambda a: a.complete(a.input["n"]))
    timer = threading.Timer(0.3, worker.drain)
    timer.start()
    try:
        done = waiter.await_chain(chain_id, poll_interval=dt.timedelta(milliseconds=100))
    finally:
        timer.join()
    assert done.output == 5


def test_await_chain_times_out_and_refuses_unknown_ids(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        chain_id = client.start_chain(s, work, {"n": 1, "sleep": 0}).id
    with pytest.raises(q.WaitChainTimeoutError) as info:
        client.await_chain(chain_id, timeout=dt.timedelta(milliseconds=300))
    assert info.value.chain_id == chain_id
    with pytest.raises(q.ChainNotFoundError):
        client.await_chain(uuid.uuid4(), timeout=dt.timedelta(seconds=1))


def test_complete_chain_commits_with_the_callers_transaction(db: Db) -> None:
    client = q.Queuert(db.engine, approval_types)
    chain_id = start_request(client, db)

    with Session(db.engine) as s:  # rolled back: nothing happens
        client.complete_chain(s, chain_id, request, lambda c: c.complete({"approved": True}))
        s.rollback()
    assert client.get_chain(chain_id).status == "pending"

    with Session(db.engine) as s, s.begin():
        s.add(User(name="approver"))
        chain = client.complete_chain(
            s, chain_id, request, lambda c: c.complete({"approved": c.job.input["request_id"] == 7})
        )
        assert chain.status == "completed"  # read in the same transaction
    done = client.get_chain(chain_id, request)
    assert (done.status, done.output) == ("completed", {"approved": True})
    job = client.get_job(chain_id)
    assert (job.completed_by, job.attempt) == (None, 0)
    with Session(db.engine) as s:
        assert s.execute(select(func.count()).select_from(User)).scalar_one() == 1


def test_complete_chain_can_continue_to_worker_processed_step(db: Db) -> None:
    client = q.Queuert(db.engine, approval_types)
    chain_id = start_request(client, db)
    with Session(db.engine) as s, s.begin():
        client.complete_chain(
            s, chain_id, request, lambda c: c.continue_with(fulfil, {"request_id": 7})
        )
    worker = client.worker()
    worker.handler(fulfil)(lambda a: a.complete({"approved": True}))
    assert worker.drain() == 1
    done = client.get_chain(chain_id)
    assert (done.status, done.current_type_name, done.output) == (
        "completed",
        "fulfil",
        {"approved": True},
    )


def test_complete_chain_refusals(db: Db) -> None:
    client = q.Queuert(db.engine, approval_types)
    chain_id = start_request(client, db)
    with Session(db.engine) as s, s.begin():
        looked = client.complete_chain(s, chain_id, request, lambda c: None)  # only looks
        assert looked.status == "pending"
        with pytest.raises(q.JobTypeMismatchError):
            client.complete_chain(s, chain_id, fulfil, lambda c: None)
        with pytest.raises(q.ChainNotFoundError):
            client.complete_chain(s, uuid.uuid4(), request, lambda c: None)
        with pytest.raises(q.InvalidContinuationError):
            client.complete_chain(
                s, chain_id, request, lambda c: c.continue_with(request, {"request_id": 1})
            )
        client.complete_chain(s, chain_id, request, lambda c: c.complete({"approved": False}))
    with Session(db.engine) as s, s.begin(), pytest.raises(q.JobAlreadyCompletedError):
        client.complete_chain(s, chain_id, request, lambda c: c.complete({"approved": True}))
    assert client.get_chain(chain_id).output == {"approved": False}


def test_staged_worker_learns_it_lost_to_complete_chain(db: Db) -> None:
    client = q.Queuert(db.engine, approval_types)
    chain_id = start_request(client, db)
    worker = client.worker()
    in_external_step, completed_elsewhere = threading.Event(), threading.Event()
    outcome: list[object] = []

    @worker.handler(request, mode="staged", lease=dt.timedelta(seconds=1))
    def ask_a_human(attempt: q.Attempt[RequestIn, Decision]) -> q.Outcome:
        with attempt.prepare():
            pass
        in_external_step.set()
        assert completed_elsewhere.wait(10)
        outcome.append(attempt.signal.wait(5) and attempt.signal.reason)
        try:
            with attempt.transaction() as s:
                s.add(Effect(job_id=str(attempt.job.id), label="late"))
                return attempt.complete({"approved": False})
        except q.JobAlreadyCompletedError as exc:
            outcome.append(type(exc).__name__)
            raise

    runner = threading.Thread(target=worker.drain)
    runner.start()
    assert in_external_step.wait(10)
    with Session(db.engine) as s, s.begin():
        client.complete_chain(s, chain_id, request, lambda c: c.complete({"approved": True}))
    completed_elsewhere.set()
    runner.join(20)
    assert outcome == ["already_completed", "JobAlreadyCompletedError"]
    assert client.get_chain(chain_id).output == {"approved": True}
    with Session(db.engine) as s:
        assert s.execute(select(func.count()).select_from(Effect)).scalar_one() == 0
        row = s.get_one(Job, chain_id)
        assert (row.status, row.completed_by) == ("completed", None)


def test_work_type_input_typed(db: Db, client: q.Queuert) -> None:
    # await_chain with a job type types the input (checked statically in tests/typing).
    with Session(db.engine) as s, s.begin():
        chain_id = client.start_chain(s, work, {"n": 3, "sleep": 0}).id
    worker = client.worker()
    worker.handler(work)(lambda a: a.complete(0))
    worker.drain()
    chain: q.Chain[WorkIn, object] = client.await_chain(chain_id, work)
    assert chain.input["n"] == 3


def test_complete_chain_waiting_on_a_continuing_attempt_completes_the_next_step(pg: Db) -> None:
    client = q.Queuert(pg.engine, approval_types)
    chain_id = start_request(client, pg)
    worker = client.worker()
    in_handler, release = threading.Event(), threading.Event()

    @worker.handler(request)
    def hand_over(attempt: q.Attempt[RequestIn, Decision]) -> q.Outcome:
        in_handler.set()
        assert release.wait(10)
        return attempt.continue_with(fulfil, {"request_id": 7})

    runner = threading.Thread(target=worker.drain, kwargs={"max_jobs": 1})
    runner.start()
    assert in_handler.wait(10)
    result: list[q.Chain[RequestIn, object]] = []

    def decide() -> None:
        with Session(pg.engine) as s, s.begin():
            result.append(
                client.complete_chain(
                    s, chain_id, request, lambda c: c.complete({"approved": True})
                )
            )

    decider = threading.Thread(target=decide)
    decider.start()
    decider.join(0.5)
    assert decider.is_alive(), "complete_chain should wait for the attempt holding the job"
    release.set()
    runner.join(10)
    decider.join(10)
    # The chain moved on while complete_chain waited: it completed the new step.
    assert result[0].status == "completed"
    assert (result[0].current_type_name, result[0].current_index) == ("fulfil", 1)
