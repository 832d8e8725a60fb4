"""Every decision a worker takes, as pure functions: no IO, ``now`` passed in.

Both drivers and every flow ask here: how long to sleep, how long to back off
after an infrastructure failure, whether a staged ``prepare()`` may keep the
lease the acquire wrote, whether the job is still this attempt's, how a failed
attempt is settled, and when a lease is renewed.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from queuert_sa._attempt import AttemptState
from queuert_sa._errors import (
    HandlerError,
    JobAlreadyCompletedError,
    JobCancelledError,
    JobNotFoundError,
    JobOwnershipError,
    JobTakenByAnotherWorkerError,
)
from queuert_sa._job_types import JobType
from queuert_sa.models import JobStatus

#: With a due job held by another attempt, how soon to look again (seconds).
HELD_JOB_RECHECK_S = 1.0

#: Delays after consecutive infrastructure failures (database down), capped.
RECOVERY_INITIAL_S = 1.0
RECOVERY_MAX_S = 30.0

#: The errors that mean "this attempt no longer owns its job".
OWNERSHIP_ERRORS = (JobOwnershipError, JobNotFoundError)


def sleep_timeout(
    poll_interval: dt.timedelta,
    next_due: dt.datetime | None,
    now: dt.datetime,
    rng: random.Random,
) -> float:
    """How long an idle slot sleeps (seconds) unless a notification wakes it.

    The poll interval, jittered ±5 % so that workers started together drift
    apart, or less when the next job is due sooner. A job that is due yet was
    not acquired is held by another attempt's transaction: look again soon,
    without spinning.
    """
    timeout = poll_interval.total_seconds() * rng.uniform(0.95, 1.05)
    if next_due is not None:
        until_due = (next_due - now).total_seconds()
        timeout = min(timeout, until_due if until_due > 0 else HELD_JOB_RECHECK_S)
    return timeout


def recovery_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failed passes (database down)."""
    # Cap the exponent first: 2.0 ** 1024 overflows, some eight hours into an outage.
    doublings = min(max(failures - 1, 0), 32)
    return min(RECOVERY_INITIAL_S * 2.0**doublings, RECOVERY_MAX_S)


def keep_provisional_lease(
    *,
    lease: dt.timedelta,
    lease_bound: dt.timedelta,
    acquired_at: dt.datetime | None,
    now: dt.datetime,
) -> bool:
    """Whether a staged ``prepare()`` may keep the lease the acquiring statement wrote.

    The acquire writes the longest lease of the worker's handlers. It stands
    when that is this handler's lease and ``prepare()`` took under a tenth of
    it (one UPDATE less per staged job); otherwise the lease is set anew.
    """
    return lease == lease_bound and acquired_at is not None and now - acquired_at < lease / 10


def lost_reason(row: Mapping[str, Any] | None) -> str:
    """Why a job is no longer ours, from its row as read now (None = deleted)."""
    if row is None:
        return "not_found"
    if row["status"] == JobStatus.COMPLETED:
        return "already_completed"
    if row["status"] == JobStatus.CANCELLED:
        return "cancelled"
    return "taken_by_another_worker"


#: What each reason a staged attempt lost its job means, for the log.
_LOST = {
    "not_found": "its job was deleted",
    "JobNotFoundError": "its job was deleted",
    "already_completed": "its job was completed elsewhere",
    "JobAlreadyCompletedError": "its job was completed elsewhere",
    "cancelled": "its chain was cancelled",
    "JobCancelledError": "its chain was cancelled",
    "taken_by_another_worker": "its lease expired and another worker took the job",
    "JobTakenByAnotherWorkerError": "its lease expired and another worker took the job",
}


def lost_explanation(reason: str | None) -> str:
    """Why an attempt was not rescheduled, in words (``reason``: a lost reason or error name)."""
    if reason is None:
        return "the job is no longer this attempt's"
    return _LOST.get(reason, reason)


def lease_overrun(row: Mapping[str, Any], now: dt.datetime) -> dt.timedelta | None:
    """How long ago a staged attempt's own lease expired (nobody took the job), or None."""
    until = row["leased_until"]
    if until is None:
        return None
    if until.tzinfo is None:  # SQLite returns naive UTC
        until = until.replace(tzinfo=dt.UTC)
    return now - until if until < now else None


def ownership_problem(
    row: Mapping[str, Any] | None, *, job_id: Any, worker_id: str, attempt: int
) -> JobOwnershipError | JobNotFoundError | None:
    """The error to raise if the locked job row is no longer this attempt's, else None."""
    if row is None:
        return JobNotFoundError(job_id)
    if (
        row["status"] == JobStatus.RUNNING
        and row["leased_by"] == worker_id
        and row["attempt"] == attempt
    ):
        return None
    if row["status"] == JobStatus.COMPLETED:
        return JobAlreadyCompletedError(job_id)
    if row["status"] == JobStatus.CANCELLED:
        return JobCancelledError(job_id)
    return JobTakenByAnotherWorkerError(job_id, worker_id=worker_id, leased_by=row["leased_by"])


def ends_process(error: BaseException | None) -> bool:
    """Whether a handler's exception asked the process to end (raised once it is recorded).

    Any other exception, ``asyncio.CancelledError`` from a future the handler
    awaited included, is just the attempt's failure.
    """
    return isinstance(error, (SystemExit, KeyboardInterrupt))


def result_problem(
    job_type: JobType[Any, Any], job_id: Any, result: object, *, owned: bool
) -> HandlerError | None:
    """The error for a handler that returned something other than its own outcome."""
    if owned:
        return None
    return HandlerError(
        f"The handler of {job_type.name!r} returned {result!r:.80}; it must return "
        "attempt.complete(output) or attempt.continue_with(job_type, input).",
        job_id=job_id,
        type_name=job_type.name,
    )


def batch_result_problem(
    job_type: JobType[Any, Any], states: Sequence[AttemptState], result: object
) -> HandlerError | None:
    """The error for a batch handler that did not return one outcome per attempt, in order."""
    if (
        isinstance(result, list | tuple)
        and len(cast("Sequence[object]", result)) == len(states)
        and all(s.owns(r) for s, r in zip(states, cast("Sequence[object]", result), strict=True))
    ):
        return None
    return HandlerError(
        f"The batch handler of {job_type.name!r} returned {result!r:.80}; it must return a "
        f"list of {len(states)} outcomes, one per attempt in the order given: "
        "[attempt.complete(output) for attempt in attempts] (or continue_with).",
        job_id=states[0].job.id,
        type_name=job_type.name,
    )


def session_misuse(job_type: JobType[Any, Any], job_id: Any) -> HandlerError:
    """The error for a handler that ended the worker's transaction itself."""
    return HandlerError(
        f"The handler of {job_type.name!r} committed, rolled back or closed "
        "attempt.session; the worker owns that transaction. Write through it and "
        "return; use session.begin_nested() for a sub-transaction.",
        job_id=job_id,
        type_name=job_type.name,
    )


def session_refused(job_type: JobType[Any, Any], job_id: Any, call: str) -> HandlerError:
    """The error for a handler calling ``commit()``/``rollback()``/... on the attempt's session."""
    return HandlerError(
        f"attempt.session.{call}() in the handler of {job_type.name!r}: the worker owns that "
        "transaction and commits it with the attempt's outcome. Return attempt.complete(...) "
        "or attempt.continue_with(...) to commit; raise to roll back (the job is retried); "
        "use session.begin_nested() for a part you may roll back yourself.",
        job_id=job_id,
        type_name=job_type.name,
    )


Settlement = Literal["owned", "lost", "in_transaction"]


def settlement(*, prepared: bool, lost: bool) -> Settlement:
    """Where a finished attempt's failure (if any) is recorded.

    ``"owned"``: a staged attempt past ``prepare()`` — in a transaction of its
    own, only if the job is still its; ``"lost"``: the attempt's transaction
    was rolled back whole — afresh, in a new one; ``"in_transaction"``: in the
    attempt's own transaction, which then commits.
    """
    if prepared:
        return "owned"
    if lost:
        return "lost"
    return "in_transaction"


def lost_attempt_text(
    error: BaseException, failure: BaseException | None, text: str, *, group: bool = False
) -> str:
    """The error kept for an attempt none of whose writes were kept.

    ``failure`` is what ended the transaction; None when writing the outcome
    failed (whether the worker then rolled back the SAVEPOINT or the whole
    transaction). ``group``: the transaction was a group's (``batch=``), ended
    while writing its completions or at its COMMIT.
    """
    if failure is None:
        return f"writing the attempt's outcome failed; nothing was kept: {text}"
    if group:
        if error is failure:
            return f"the group's transaction failed (completions or COMMIT): {text}"
        return f"the group's transaction failed ({failure}) after: {text}"
    if error is failure:
        return f"the attempt's COMMIT failed: {text}"
    return f"the attempt's transaction failed ({failure}) after: {text}"


def renew_delay(lease: dt.timedelta) -> float:
    """Seconds until a held lease is renewed: every half lease."""
    return lease.total_seconds() / 2


def renew_retry_delay(lease: dt.timedelta) -> float:
    """Seconds until a failed renewal is tried again (the lease may outlive the outage)."""
    return min(lease.total_seconds() / 10, 5)
