"""The worker's decisions, without a database: every function of ``_worker/_policy``.

Both drivers and every flow take these decisions from one place; each test
pins one rule with ``now`` and the random source passed in.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import pytest

from queuert_sa import JobTypes
from queuert_sa._errors import (
    HandlerError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobOwnershipError,
    JobTakenByAnotherWorkerError,
)
from queuert_sa._worker import _policy as policy
from queuert_sa.models import JobStatus

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
POLL = dt.timedelta(seconds=5)
WORKER = "host:1:worker"
JOB_ID = uuid.UUID("01900000-0000-7000-8000-000000000001")

JOB_TYPES = JobTypes()
WORK = JOB_TYPES.entry("work", input=dict, output=int)


# --- sleep_timeout ----------------------------------------------------------------------


def test_idle_sleep_is_the_poll_interval_jittered_five_percent() -> None:
    """With nothing pending, a slot sleeps the poll interval ±5 %, never beyond."""
    rng = random.Random(3)
    samples = [policy.sleep_timeout(POLL, None, NOW, rng) for _ in range(2000)]
    assert 4.75 <= min(samples) < 4.76
    assert 5.24 < max(samples) <= 5.25


def test_idle_sleep_ends_when_the_next_job_is_due() -> None:
    """A job due before the poll interval ends wakes the slot when it is due, unjittered."""
    due = NOW + dt.timedelta(seconds=2)
    assert policy.sleep_timeout(POLL, due, NOW, random.Random(3)) == 2.0


def test_a_next_job_due_after_the_poll_interval_does_not_lengthen_the_sleep() -> None:
    """The poll interval still bounds the sleep when the next job is due later."""
    due = NOW + dt.timedelta(minutes=10)
    assert 4.75 <= policy.sleep_timeout(POLL, due, NOW, random.Random(3)) <= 5.25


@pytest.mark.parametrize("overdue", [dt.timedelta(0), dt.timedelta(seconds=30)])
def test_a_due_job_that_was_not_acquired_is_looked_at_again_soon(overdue: dt.timedelta) -> None:
    """Due yet not acquired means another attempt holds it: recheck in 1 s, do not spin at 0."""
    timeout = policy.sleep_timeout(POLL, NOW - overdue, NOW, random.Random(3))
    assert timeout == policy.HELD_JOB_RECHECK_S == 1.0


def test_the_held_job_recheck_never_exceeds_a_shorter_poll_interval() -> None:
    """A worker polling faster than the recheck keeps its own pace."""
    timeout = policy.sleep_timeout(dt.timedelta(seconds=0.2), NOW, NOW, random.Random(3))
    assert 0.19 <= timeout <= 0.21


# --- recovery_delay ---------------------------------------------------------------------


def test_recovery_delay_doubles_from_one_second_and_is_capped_at_thirty() -> None:
    """Consecutive failed passes (database down) wait 1, 2, 4, ... seconds, at most 30."""
    delays = [policy.recovery_delay(n) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


@pytest.mark.parametrize("failures", [1024, 1025, 10_000])
def test_recovery_delay_stays_capped_through_a_long_outage(failures: int) -> None:
    """The 1025th failed pass in a row (about 8.5 hours down at 30 s each) still waits 30 s.

    The slot loop computes this delay in its ``except`` clause, so an error here
    escapes the loop and ends the slot (and, in both drivers, stops the worker).
    """
    assert policy.recovery_delay(failures) == policy.RECOVERY_MAX_S


# --- keep_provisional_lease -------------------------------------------------------------

LEASE = dt.timedelta(seconds=60)


def keep(**changes: Any) -> bool:
    arguments: dict[str, Any] = {
        "lease": LEASE,
        "lease_bound": LEASE,
        "acquired_at": NOW,
        "now": NOW + dt.timedelta(seconds=1),
    }
    arguments.update(changes)
    return policy.keep_provisional_lease(**arguments)


def test_a_fast_prepare_keeps_the_lease_the_acquire_wrote() -> None:
    """Same lease as the acquire's bound, prepare() under a tenth of it: no renewing UPDATE."""
    assert keep() is True
    assert keep(now=NOW + LEASE / 10 - dt.timedelta(microseconds=1)) is True


def test_a_prepare_that_took_a_tenth_of_the_lease_renews_it() -> None:
    """At a tenth of the lease (or later) the provisional lease is too short to keep."""
    assert keep(now=NOW + LEASE / 10) is False
    assert keep(now=NOW + LEASE) is False


def test_a_handler_with_a_shorter_lease_than_the_bound_renews_it() -> None:
    """The acquire wrote the longest lease of the worker's handlers; a shorter one is set anew."""
    assert keep(lease_bound=dt.timedelta(minutes=5)) is False


def test_an_unknown_acquisition_time_renews_the_lease() -> None:
    """Without ``last_attempt_at`` the age of the lease is unknown: renew."""
    assert keep(acquired_at=None) is False


# --- ownership_problem and lost_reason --------------------------------------------------


def row(**changes: Any) -> dict[str, Any]:
    """The locked job row as this attempt left it (running, leased by it, attempt 2)."""
    values: dict[str, Any] = {"status": JobStatus.RUNNING, "leased_by": WORKER, "attempt": 2}
    values.update(changes)
    return values


def problem(found: dict[str, Any] | None) -> BaseException | None:
    return policy.ownership_problem(found, job_id=JOB_ID, worker_id=WORKER, attempt=2)


def test_the_attempts_own_row_is_no_problem() -> None:
    """Running, leased by this worker, at this attempt: still ours."""
    assert problem(row()) is None


@pytest.mark.parametrize(
    ("found", "error", "reason"),
    [
        pytest.param(None, JobNotFoundError, "not_found", id="deleted"),
        pytest.param(
            row(status=JobStatus.COMPLETED, leased_by=None),
            JobAlreadyCompletedError,
            "already_completed",
            id="completed-elsewhere",
        ),
        pytest.param(
            row(leased_by="other:2:worker", attempt=3),
            JobTakenByAnotherWorkerError,
            "taken_by_another_worker",
            id="another-worker",
        ),
        pytest.param(
            row(attempt=3),
            JobTakenByAnotherWorkerError,
            "taken_by_another_worker",
            id="same-worker-later-attempt",
        ),
        pytest.param(
            row(status=JobStatus.PENDING, leased_by=None),
            JobTakenByAnotherWorkerError,
            "taken_by_another_worker",
            id="reaped-to-pending",
        ),
    ],
)
def test_a_row_that_is_no_longer_the_attempts_names_why(
    found: dict[str, Any] | None, error: type[Exception], reason: str
) -> None:
    """Each way of losing a job has its error (which the flows treat as ownership) and reason."""
    raised = problem(found)
    assert type(raised) is error
    assert isinstance(raised, policy.OWNERSHIP_ERRORS)
    assert str(JOB_ID) in str(raised)
    assert policy.lost_reason(found) == reason


def test_taken_by_another_worker_says_who_holds_it_now() -> None:
    """The error carries both worker ids, for the log line and for the handler."""
    raised = problem(row(leased_by="other:2:worker", attempt=3))
    assert isinstance(raised, JobTakenByAnotherWorkerError)
    assert (raised.worker_id, raised.leased_by) == (WORKER, "other:2:worker")
    assert "'other:2:worker'" in str(raised)


def test_the_ownership_errors_are_every_error_ownership_problem_raises() -> None:
    """``OWNERSHIP_ERRORS`` is what the flows catch to leave a lost job be."""
    assert issubclass(JobTakenByAnotherWorkerError, JobOwnershipError)
    assert issubclass(JobAlreadyCompletedError, JobOwnershipError)
    assert (JobOwnershipError, JobNotFoundError) == policy.OWNERSHIP_ERRORS


# --- result_problem and session_misuse --------------------------------------------------


def test_a_handler_returning_its_own_outcome_is_no_problem() -> None:
    assert policy.result_problem(WORK, JOB_ID, object(), owned=True) is None


@pytest.mark.parametrize("result", [None, "done", 42])
def test_a_handler_returning_anything_else_is_told_what_to_return(result: object) -> None:
    """The error names the type, shows what came back and says what to return instead."""
    error = policy.result_problem(WORK, JOB_ID, result, owned=False)
    assert isinstance(error, HandlerError)
    assert (error.job_id, error.type_name) == (JOB_ID, "work")
    message = str(error)
    assert f"The handler of 'work' returned {result!r};" in message
    assert "attempt.complete(output) or attempt.continue_with(job_type, input)" in message


def test_a_long_wrong_result_is_cut_to_eighty_characters_in_the_message() -> None:
    error = policy.result_problem(WORK, JOB_ID, "x" * 500, owned=False)
    assert error is not None
    assert f"returned {('x' * 500)!r:.80};" in str(error)
    assert "x" * 100 not in str(error)


def test_a_handler_that_ended_the_workers_transaction_is_told_to_write_and_return() -> None:
    """Committing, rolling back or closing ``attempt.session`` is refused with the way out."""
    error = policy.session_misuse(WORK, JOB_ID)
    assert isinstance(error, HandlerError)
    assert (error.job_id, error.type_name) == (JOB_ID, "work")
    message = str(error)
    assert "committed, rolled back or closed attempt.session" in message
    assert "the worker owns that transaction" in message
    assert "Write through it and return" in message
    assert "session.begin_nested()" in message


# --- settlement and lost_attempt_text ---------------------------------------------------


@pytest.mark.parametrize(
    ("prepared", "lost", "how"),
    [
        (True, False, "owned"),
        (True, True, "owned"),
        (False, True, "lost"),
        (False, False, "in_transaction"),
    ],
)
def test_where_a_failed_attempt_is_recorded(prepared: bool, lost: bool, how: str) -> None:
    """Past prepare() the acquire is committed: only an owned transaction may reschedule.
    A transaction rolled back whole is recorded afresh; otherwise in the attempt's own."""
    assert policy.settlement(prepared=prepared, lost=lost) == how


def test_the_outcome_write_failing_says_nothing_was_kept() -> None:
    error = RuntimeError("flush failed")
    text = policy.lost_attempt_text(error, None, "Traceback...")
    assert text == "writing the attempt's outcome failed; nothing was kept: Traceback..."


def test_the_commit_failing_says_so() -> None:
    error = RuntimeError("connection lost")
    text = policy.lost_attempt_text(error, error, "Traceback...")
    assert text == "the attempt's COMMIT failed: Traceback..."


def test_a_transaction_failing_after_a_handler_error_keeps_both() -> None:
    """The handler's error is the one retried; the transaction's failure is named with it."""
    handler_error = ValueError("bad input")
    failure = RuntimeError("connection lost")
    text = policy.lost_attempt_text(handler_error, failure, "Traceback (ValueError)")
    assert text == (
        "the attempt's transaction failed (connection lost) after: Traceback (ValueError)"
    )


# --- lease renewals ---------------------------------------------------------------------


def test_a_held_lease_is_renewed_every_half_lease() -> None:
    assert policy.renew_delay(dt.timedelta(seconds=60)) == 30.0
    assert policy.renew_delay(dt.timedelta(seconds=3)) == 1.5


def test_a_failed_renewal_is_retried_after_a_tenth_of_the_lease_at_most_five_seconds() -> None:
    """Soon enough that the lease may outlive a short outage; never hammering the database."""
    assert policy.renew_retry_delay(dt.timedelta(seconds=10)) == 1.0
    assert policy.renew_retry_delay(dt.timedelta(seconds=50)) == 5.0
    assert policy.renew_retry_delay(dt.timedelta(minutes=10)) == 5.0


# --- what the log says when an attempt ends without its job ------------------------------


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("not_found", "its job was deleted"),
        ("JobNotFoundError", "its job was deleted"),
        ("already_completed", "its job was completed elsewhere"),
        ("taken_by_another_worker", "its lease expired and another worker took the job"),
        (None, "the job is no longer this attempt's"),
        ("SomethingNew", "SomethingNew"),
    ],
)
def test_a_lost_job_is_explained_in_words(reason: str | None, said: str) -> None:
    assert policy.lost_explanation(reason) == said


def test_a_lease_overrun_is_how_long_ago_the_lease_expired_naive_or_aware() -> None:
    """A staged attempt whose own lease expired unnoticed (nobody took the job) is logged."""
    assert policy.lease_overrun({"leased_until": NOW + dt.timedelta(seconds=5)}, NOW) is None
    assert policy.lease_overrun({"leased_until": None}, NOW) is None
    late = {"leased_until": NOW - dt.timedelta(seconds=3)}
    assert policy.lease_overrun(late, NOW) == dt.timedelta(seconds=3)
    naive = {"leased_until": (NOW - dt.timedelta(seconds=3)).replace(tzinfo=None)}  # SQLite
    assert policy.lease_overrun(naive, NOW) == dt.timedelta(seconds=3)
