"""Ids given by the caller that are already other jobs': refused with a typed error naming
them, before any INSERT (the caller's transaction stays usable), and never retried forever."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q

from .app import UserIn, WorkIn, greet, signup, work
from .workers import Kit


def test_start_chain_with_another_jobs_id_is_refused_and_the_transaction_goes_on(
    kit: Kit,
) -> None:
    with Session(kit.db.engine) as s, s.begin():
        first = kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
    with Session(kit.db.engine) as s, s.begin():
        with pytest.raises(q.DuplicateJobIdError) as caught:
            kit.client.start_chain(s, work, {"n": 2, "sleep": 0}, id=first.id)
        assert caught.value.job_id == first.id
        assert caught.value.chain_id == first.id
        assert str(first.id) in str(caught.value)
        assert "Leave id= out" in str(caught.value)
        # Nothing was sent that fails the transaction: it can still do work.
        other = kit.client.start_chain(s, work, {"n": 3, "sleep": 0})
    assert kit.client.get_chain(other.id).status == "pending"
    fresh = uuid.uuid4()
    with Session(kit.db.engine) as s, s.begin(), pytest.raises(q.DuplicateJobIdError):
        kit.client.start_chains(
            s,
            [work({"n": 4, "sleep": 0}, id=fresh), work({"n": 5, "sleep": 0}, id=fresh)],
        )


def test_continue_with_another_jobs_id_fails_the_job_at_once(kit: Kit) -> None:
    with Session(kit.db.engine) as s, s.begin():
        taken = kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
        chain = kit.client.start_chain(s, signup, {"user_id": 1})
    worker = kit.worker(backoff=q.Backoff(initial=0, jitter=0))

    @worker.handler(signup)
    def collide(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": 1}, id=taken.id)

    @worker.handler(work)
    def done(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(0)

    assert worker.drain() == 2
    assert worker.drain() == 0  # failed, not retried
    job: Any = kit.client.get_job(chain.id)
    assert (job.status, job.attempt) == ("failed", 1)
    assert "DuplicateJobIdError" in job.last_attempt_error
    assert str(taken.id) in job.last_attempt_error
    assert kit.client.get_chain(taken.id).status == "completed"  # the other chain untouched
