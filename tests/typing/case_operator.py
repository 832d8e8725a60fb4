"""retry_job, retry_jobs, cancel_chain on both clients: what they take and return."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, assert_type

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

import queuert_sa as q

job_types = q.JobTypes()
report = job_types.entry("report", input=int, output=str)


def operate(queuert: q.Queuert, session: Session, job_id: uuid.UUID) -> None:
    assert_type(queuert.retry_job(session, job_id), q.Job[Any])
    assert_type(queuert.retry_job(session, str(job_id)).cancel_reason, str | None)
    since = dt.datetime.now(dt.UTC)
    assert_type(queuert.retry_jobs(session), int)
    assert_type(queuert.retry_jobs(session, types=[report, "other"], failed_since=since), int)
    assert_type(queuert.retry_jobs(session, limit=100), int)
    assert_type(queuert.cancel_chain(session, job_id), list[uuid.UUID])
    assert_type(queuert.cancel_chain(session, job_id, reason="dup", cascade=True), list[uuid.UUID])
    chain = queuert.get_chain(job_id)
    assert_type(chain.is_failed, bool)
    assert_type(chain.is_cancelled, bool)

    # Wrong arguments.
    queuert.retry_job(job_id)  # expect-error
    queuert.retry_jobs(session, [report])  # expect-error
    queuert.retry_jobs(session, limit="10")  # expect-error
    queuert.cancel_chain(session, job_id, "reason")  # expect-error
    queuert.cancel_chain(session, job_id, cascade="yes")  # expect-error


async def operate_async(aqueuert: q.AsyncQueuert, session: AsyncSession, job_id: uuid.UUID) -> None:
    assert_type(await aqueuert.retry_job(session, job_id), q.Job[Any])
    assert_type(await aqueuert.retry_jobs(session, types=["report"]), int)
    assert_type(await aqueuert.cancel_chain(session, job_id, reason="r"), list[uuid.UUID])
    await aqueuert.cancel_chain(session, job_id, "reason")  # expect-error
