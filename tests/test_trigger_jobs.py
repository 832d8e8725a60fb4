"""``trigger_jobs``: many pending jobs made due now, all or nothing, on both engines and clients.

A refusal names every id that is no job and every job that is not pending,
and changes nothing: the caller's transaction is still usable. Triggered jobs
wake workers after COMMIT only.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q

from .conftest import Db
from .test_async import environment, in_event_loop
from .test_async import work as async_work
from .test_scheduling import gate, gated, recording_worker, start, step, types
from .test_worker import FakeClock

HOUR = dt.timedelta(hours=1)


def test_trigger_jobs_makes_every_job_due_at_once_after_commit(db: Db) -> None:
    clock = FakeClock()
    notify = q.InMemoryNotify()
    client = q.Queuert(db.engine, types, clock=clock, notify=notify)
    later = [start(client, db, n, run_in=HOUR) for n in (1, 2, 3)]
    untouched = start(client, db, 4, run_in=HOUR)
    ran: list[int] = []
    worker = recording_worker(client, ran)
    assert worker.drain() == 0  # all an hour away
    sent = notify.sent["job_scheduled"]

    with Session(db.engine) as s, s.begin():
        ids = [later[2].id, str(later[0].id), later[1].id, later[2].id]  # a repeat, a string
        triggered = client.trigger_jobs(s, ids)
        assert notify.sent["job_scheduled"] == sent  # no wake-up before COMMIT
    assert notify.sent["job_scheduled"] == sent + 1  # one per type, not per job

    assert [job.id for job in triggered] == [later[2].id, later[0].id, later[1].id]
    assert {(job.status, job.scheduled_at) for job in triggered} == {("pending", clock.now)}
    assert worker.drain() == 3
    assert sorted(ran) == [1, 2, 3]
    assert client.get_job(untouched.id).scheduled_at == clock.now + HOUR
    with Session(db.engine) as s, s.begin():
        assert client.trigger_jobs(s, []) == []


def test_trigger_jobs_refuses_the_whole_list_naming_every_id_it_cannot_trigger(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    pending = start(client, db, 1, run_in=HOUR)
    with Session(db.engine) as s, s.begin():
        blocker = client.start_chain(s, gate, {"n": 2})
        waiting = client.start_chain(s, gated, {"n": 3}, blockers=[blocker])
    done = start(client, db, 4)
    worker = client.worker()
    worker.handler(step)(lambda attempt: attempt.complete(attempt.input["n"]))
    assert worker.drain() == 1  # completes ``done``: the only due job of a handled type
    unknown, also_unknown = uuid.uuid4(), uuid.uuid4()

    with Session(db.engine) as s, s.begin():
        with pytest.raises(q.JobsNotTriggerableError) as refused:
            client.trigger_jobs(
                s, [pending.id, unknown, waiting.id, done.id, also_unknown, blocker.id]
            )
        error = refused.value
        assert error.missing == (unknown, also_unknown)
        assert error.not_triggerable == {waiting.id: "blocked", done.id: "completed"}
        message = str(error)
        for job_id in (unknown, also_unknown, waiting.id, done.id):
            assert str(job_id) in message
        assert "2 not found" in message
        assert "Nothing was triggered" in message
        assert isinstance(error, q.QueuertError)
        # Nothing changed, and the transaction goes on.
        assert client.get_job(pending.id, session=s).scheduled_at == clock.now + HOUR
        (job,) = client.trigger_jobs(s, [pending.id])
    assert job.scheduled_at == clock.now
    assert client.get_job(pending.id).scheduled_at == clock.now

    with Session(db.engine) as s, pytest.raises(TypeError, match="wrap a single id"):
        client.trigger_jobs(s, str(pending.id))
    with Session(db.engine) as s, pytest.raises(q.InvalidJobIdError):
        client.trigger_jobs(s, [pending.id, "not-a-uuid"])


def test_a_rolled_back_trigger_jobs_changes_nothing_and_wakes_nobody(db: Db) -> None:
    clock = FakeClock()
    notify = q.InMemoryNotify()
    client = q.Queuert(db.engine, types, clock=clock, notify=notify)
    chains = [start(client, db, n, run_in=HOUR) for n in (1, 2)]
    sent = notify.sent["job_scheduled"]

    with Session(db.engine) as s, s.begin():
        savepoint = s.begin_nested()
        client.trigger_jobs(s, [c.id for c in chains])
        savepoint.rollback()

    assert notify.sent["job_scheduled"] == sent
    assert {client.get_job(c.id).scheduled_at for c in chains} == {clock.now + HOUR}


@in_event_loop
async def test_trigger_jobs_through_the_async_client(db: Db) -> None:
    clock = FakeClock()
    async with environment(db, clock=clock) as env:
        client = env.client
        later = [await env.start(async_work, n, run_in=HOUR) for n in (1, 2)]
        sent = env.notify.sent["job_scheduled"]
        async with env.write_session() as s, s.begin():
            triggered = await client.trigger_jobs(s, [c.id for c in later])
            assert env.notify.sent["job_scheduled"] == sent
        assert env.notify.sent["job_scheduled"] == sent + 1
        assert [(j.id, j.scheduled_at) for j in triggered] == [(c.id, clock.now) for c in later]

        unknown = uuid.uuid4()
        async with env.write_session() as s, s.begin():
            with pytest.raises(q.JobsNotTriggerableError) as refused:
                await client.trigger_jobs(s, [later[0].id, unknown])
        assert (refused.value.missing, refused.value.not_triggerable) == ((unknown,), {})

        worker = client.worker()

        @worker.handler(async_work)
        async def handle(attempt: q.AsyncAttempt[Any, int]) -> q.Outcome:
            return attempt.complete(attempt.input["n"])

        assert await worker.drain() == 2
        async with env.write_session() as s, s.begin():
            with pytest.raises(q.JobsNotTriggerableError) as completed:
                await client.trigger_jobs(s, [c.id for c in later])
        assert completed.value.not_triggerable == {c.id: "completed" for c in later}
