"""The dashboard's writes, each one transaction through the client's own operations.

Single actions raise the client's errors (404 and 409 to the caller). A bulk
trigger or retry takes each job in a SAVEPOINT of its own, so a job that
cannot be taken (it started running meanwhile, say) is reported and skipped
while the others are done; a bulk delete is all or nothing, as
``delete_chains`` is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa._client import Queuert
from queuert_sa._entities import Chain, Job
from queuert_sa._errors import QueuertError

#: The most ids one bulk action takes (the largest page).
MAX_BULK = 1000


@dataclass
class BulkResult:
    done: list[uuid.UUID] = field(default_factory=list[uuid.UUID])
    skipped: list[tuple[uuid.UUID, str]] = field(default_factory=list[tuple[uuid.UUID, str]])


def each_job(
    client: Queuert,
    action: Callable[[Session, uuid.UUID], Any],
    ids: Sequence[uuid.UUID],
) -> Callable[[Session], BulkResult]:
    """``action(session, id)`` for each job, each in a SAVEPOINT; who was skipped and why."""

    def run(session: Session) -> BulkResult:
        result = BulkResult()
        for job_id in ids:
            try:
                with session.begin_nested():
                    action(session, job_id)
            except QueuertError as exc:
                result.skipped.append((job_id, str(exc)))
            else:
                result.done.append(job_id)
        return result

    return run


def trigger(client: Queuert, job_id: uuid.UUID) -> Callable[[Session], Job[Any]]:
    return lambda session: client.trigger_job(session, job_id)


def retry(client: Queuert, job_id: uuid.UUID) -> Callable[[Session], Job[Any]]:
    return lambda session: client.retry_job(session, job_id)


def cancel(
    client: Queuert, chain_id: uuid.UUID, *, cascade: bool, reason: str | None
) -> Callable[[Session], list[uuid.UUID]]:
    def run(session: Session) -> list[uuid.UUID]:
        client.get_chain(chain_id, session=session)  # a 404 for an unknown chain
        return client.cancel_chain(session, chain_id, reason=reason, cascade=cascade)

    return run


def delete(
    client: Queuert, chain_ids: Sequence[uuid.UUID], *, cascade: bool, must_exist: bool
) -> Callable[[Session], list[Chain[Any, Any]]]:
    def run(session: Session) -> list[Chain[Any, Any]]:
        if must_exist:
            for chain_id in chain_ids:
                client.get_chain(chain_id, session=session)  # a 404 for an unknown chain
        return client.delete_chains(session, chain_ids, cascade=cascade)

    return run
