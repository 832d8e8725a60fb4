"""The attempt algorithm, written once: generators of effects that both drivers run.

Every flow here yields :mod:`._effects` records and receives their results;
the thread driver performs them with calls, the asyncio driver awaits them.
So acquiring, running the handler, writing the outcome, rescheduling,
recording a lost attempt, staged ``prepare()``, reaping expired leases, the
slot loop and ``drain()`` each exist in one place.

Rules the flows keep, so that a driver can always clean up:

* they catch ``Exception``, never ``BaseException``: a handler's own
  exception arrives as a value (:class:`HandlerEnded`), and an effect's
  ``BaseException`` (a cancelled task, ``SystemExit``) ends the flow, after
  which the driver closes its sessions, releases its leases and drops its
  writer hold;
* they yield nothing in ``finally`` (a closed generator may not yield).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Collection, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from queuert_sa import _transitions as transitions
from queuert_sa._attempt import AttemptState
from queuert_sa._entities import Chain
from queuert_sa._snapshots import job_from_row
from queuert_sa.state import operations as ops

from . import _policy as policy
from . import _units as units
from ._config import Registration, WorkerCore
from ._effects import (
    CallHandler,
    Effect,
    End,
    EndSavepoint,
    HandlerEnded,
    HintIdle,
    InTransaction,
    Look,
    Open,
    Query,
    ReleaseLease,
    Run,
    Savepoint,
    SavepointOpen,
    Wait,
    WriteOwned,
    Writer,
)

log = logging.getLogger("queuert_sa.worker")

T = TypeVar("T")

Flow = Generator[Effect, Any, T]
"""A flow: yields effects, is sent their results, returns ``T``."""


@dataclass(frozen=True)
class Step:
    """What one pass of a slot did."""

    job_id: uuid.UUID | None = None
    """The job attempted, or None if there was nothing to run."""
    failed: bool = False
    """The attempt ended in an exception."""
    next_due: dt.datetime | None = None
    """With nothing to run: when the next pending job is due, if any."""


# --- the loops ------------------------------------------------------------------------


def slot_loop(core: WorkerCore) -> Flow[None]:
    """One slot until the worker stops: run due jobs, reap, sleep; back off on failures."""
    failures = 0
    busy = False
    while not (yield Query("stopping")):
        try:
            step = yield from process_one(core, look_first=not busy, slot=True)
            busy = step.job_id is not None
            if busy:
                # Work begets work: wake one idle slot to look for more (this
                # slot looks again itself; a kept hint would only make it look twice).
                yield HintIdle()
            elif not (yield from reap_one(core)):
                now = core.ctx.clock()
                timeout = policy.sleep_timeout(core.poll_interval, step.next_due, now, core.rng)
                yield Wait(timeout, "hint")
            # Only a whole pass that worked ends an outage (a reap failing
            # every pass keeps backing off).
            if failures:
                core.log_recovered(failures)
            failures = 0
        except Exception as exc:
            failures += 1
            delay = policy.recovery_delay(failures)
            core.log_failed_pass(exc, failures, delay)
            yield Wait(delay, "stop")


def drain(core: WorkerCore, max_jobs: int | None) -> Flow[int]:
    """Run due jobs (and expired leases) until none is due; how many ran.

    A job whose attempt fails is not taken again by the same drain, even if
    its retry is due at once.
    """
    done = 0
    failed: set[uuid.UUID] = set()
    while max_jobs is None or done < max_jobs:
        step = yield from process_one(core, exclude=failed, look_first=done == 0, slot=False)
        if step.job_id is None:
            if (yield from reap_one(core)):
                continue
            break
        done += 1
        if step.failed:
            failed.add(step.job_id)
    return done


def next_due(core: WorkerCore) -> Flow[dt.datetime | None]:
    """When the next pending job of the worker's types is due (a read ended by COMMIT)."""
    look = partial(ops.next_due_at, models=core.ctx.models, type_names=core.acquired_types)
    due: dt.datetime | None = yield Look(look)
    return due


def process_one(
    core: WorkerCore,
    *,
    exclude: Collection[uuid.UUID] = (),
    look_first: bool = True,
    slot: bool,
) -> Flow[Step]:
    """Run at most one attempt; with nothing to run, say when the next job is due.

    ``look_first=False`` (the previous pass ran a job, so more are likely
    due) skips a single-writer database's read-only look before taking the
    write lock, which blocks every other writer (the application's too).
    """
    if core.ctx.capabilities.single_writer and look_first:
        due = yield from next_due(core)
        if due is None or due > core.ctx.clock():
            return Step(next_due=due)
    yield Writer(take=True)
    try:
        if slot and (yield Query("stopping")):
            yield Writer(take=False)
            return Step()  # stopping: no attempt, and no look for the next one
        step = yield from attempt(core, exclude)
    except Exception:
        yield Writer(take=False)
        raise
    yield Writer(take=False)
    if step.job_id is None:
        step = Step(next_due=(yield from next_due(core)))
    return step


# --- one attempt ----------------------------------------------------------------------


def attempt(core: WorkerCore, exclude: Collection[uuid.UUID]) -> Flow[Step]:
    """Acquire a due job, run its handler, write or reschedule, commit; count it."""
    ctx = core.ctx
    session = yield Open()
    state: AttemptState | None = None
    try:
        now = ctx.clock()
        row = yield Run(
            session,
            partial(
                ops.acquire_job,
                models=ctx.models,
                caps=ctx.capabilities,
                type_names=core.acquired_types,
                worker_id=core.worker_id,
                # Provisional for both modes; a staged prepare() renews or keeps it.
                lease_until=now + core.lease_bound,
                now=now,
                exclude_ids=exclude,
                timeouts=core.atomic_timeouts,
            ),
        )
        if row is None:
            # Commit, not roll back: the transaction wrote nothing, and a
            # ROLLBACK makes psycopg drop every prepared statement.
            yield End(session, "commit")
            yield End(session, "close")
            return Step()
        registration = core.handlers[row["type_name"]]
        state, error, lost, fatal = yield from _run(core, session, registration, row)
        error, retry_at, why = yield from _settle(
            core, session, registration, row, state, error, lost
        )
    except Exception:
        if state is not None:
            yield ReleaseLease(state)
        yield End(session, "close")
        raise
    if state is not None:
        yield ReleaseLease(state)
    yield End(session, "close")
    core.count(row, error, retry_at, lost=why)
    if policy.ends_process(error):
        assert error is not None
        raise error  # SystemExit/KeyboardInterrupt from the handler, now that it is recorded
    if fatal is not None:
        raise fatal  # the same, raised after a staged outcome committed: the job is done
    return Step(job_id=row["id"], failed=error is not None)


def _run(
    core: WorkerCore, session: Any, registration: Registration, row: Any
) -> Flow[tuple[AttemptState | None, BaseException | None, bool, BaseException | None]]:
    """Run the handler.

    Returns its state, the exception that ended the attempt, whether all was
    rolled back, and a ``SystemExit``/``KeyboardInterrupt`` raised after a
    staged outcome committed (the job is done; the exception is raised once
    the attempt is counted).
    """
    ctx = core.ctx
    job_type = registration.job_type
    try:
        blockers: list[Chain[Any, Any]] = []
        if job_type.blocker_types:
            blockers = yield Run(
                session, partial(transitions.job_blockers, ctx=ctx, job_id=row["id"])
            )
        state = AttemptState(
            job_types=ctx.job_types,
            job_type=job_type,
            job=job_from_row(row, job_type),
            worker_id=core.worker_id,
            mode=registration.mode,
            blockers=blockers,
        )
    except Exception as exc:
        return None, exc, False, None
    if registration.mode == "atomic":
        # The server-side time limit was set by the acquiring statement.
        error, lost = yield from _run_atomic(core, session, registration, state)
        return state, error, lost, None
    error = yield from _run_staged(core, session, registration, state)
    if not state.written or error is None:
        return state, error, False, None
    # The outcome is committed: the job is done, whatever the handler did afterwards.
    log.warning(
        "job %s (%s): the handler raised %r after its outcome was committed",
        row["id"],
        row["type_name"],
        error,
    )
    return state, None, False, error if policy.ends_process(error) else None


def _run_atomic(
    core: WorkerCore, session: Any, registration: Registration, state: AttemptState
) -> Flow[tuple[BaseException | None, bool]]:
    """Run an atomic handler and write its outcome inside a SAVEPOINT.

    Returns the exception that ended it, with everything the attempt wrote
    undone, or None when the outcome is written; and whether the whole
    transaction was rolled back (the acquisition with it).

    Without ``core.eager_savepoints`` the driver opens the SAVEPOINT when the
    handler first reads ``attempt.session``: a handler that only computes its
    output costs no SAVEPOINT round trips, and its outcome is written without
    one; if that write fails, the whole transaction is rolled back and the
    attempt recorded afresh.
    """
    job = state.job
    if core.eager_savepoints:
        try:
            state.savepoint = yield Savepoint(session)
        except Exception as exc:
            return exc, False  # recorded in the attempt's transaction, or afresh if it is gone
    ended: HandlerEnded = yield CallHandler(registration, state, session)
    # A refused commit()/rollback()/close() fails the attempt even if the handler went on.
    error = ended.error or state.refused
    savepoint = state.savepoint
    if error is None:
        if savepoint is not None and not (yield SavepointOpen(session, savepoint)):
            error = policy.session_misuse(registration.job_type, job.id)
        else:
            owned = state.owns(ended.value)
            error = policy.result_problem(registration.job_type, job.id, ended.value, owned=owned)
    if error is not None:
        yield from _undo(session, savepoint)
        return error, False
    write = Run(session, partial(units.write_decided, ctx=core.ctx, state=state))
    if savepoint is None:
        try:
            yield write
        except Exception as exc:
            state.write_failed = True
            yield End(session, "rollback")
            return exc, True
        return None, False
    try:
        yield write
        yield EndSavepoint(savepoint, commit=True)
    except Exception as exc:
        state.write_failed = True
        yield from _undo(session, savepoint)
        return exc, False
    return None, False


def _undo(session: Any, savepoint: Any) -> Flow[None]:
    """Roll back the handler's SAVEPOINT if it is still open."""
    if savepoint is None or not (yield SavepointOpen(session, savepoint)):
        return
    try:
        yield EndSavepoint(savepoint, commit=False)
    except Exception:
        # The connection is gone (e.g. the server ended a timed-out
        # transaction); the commit path records the attempt.
        log.debug("rolling back the handler's savepoint failed", exc_info=True)


def _run_staged(
    core: WorkerCore, session: Any, registration: Registration, state: AttemptState
) -> Flow[BaseException | None]:
    """Run a staged handler; the exception that ended it, if any."""
    ended: HandlerEnded = yield CallHandler(registration, state, session)
    if ended.error is not None or state.refused is not None:
        return ended.error or state.refused
    owned = state.owns(ended.value)
    problem = policy.result_problem(registration.job_type, state.job.id, ended.value, owned=owned)
    if problem is not None:
        return problem
    if not state.written:
        # complete()/continue_with() outside transaction(): write it now,
        # under the same ownership check.
        try:
            yield WriteOwned(state, session)
        except Exception as exc:
            return exc
    return None


def _settle(
    core: WorkerCore,
    session: Any,
    registration: Registration,
    row: Any,
    state: AttemptState | None,
    error: BaseException | None,
    lost: bool,
) -> Flow[tuple[BaseException | None, dt.datetime | None, str | None]]:
    """Record how the attempt ended: (its error, when it is retried, why it is not)."""
    ctx = core.ctx
    how = policy.settlement(prepared=state is not None and state.prepared, lost=lost)
    if how == "owned":
        assert state is not None
        if error is None:
            return None, None, None
        retried, why = yield from _reschedule_owned(core, registration, state, error)
        return error, retried, why
    if how == "lost":
        assert error is not None
        return error, (yield from _record_lost(core, registration, row, error, None)), None
    retry_at: dt.datetime | None = None
    try:
        if error is not None:
            retry_at, text = core.retry(registration, error, row["attempt"])
            if state is not None and state.write_failed:
                text = policy.lost_attempt_text(error, None, text)
            yield Run(
                session,
                partial(
                    ops.reschedule_job,
                    models=ctx.models,
                    job_id=row["id"],
                    scheduled_at=retry_at,
                    error=text,
                    now=ctx.clock(),
                ),
            )
        yield End(session, "commit")
    except Exception as commit_error:
        yield End(session, "rollback")
        error = error or commit_error
        retry_at = yield from _record_lost(core, registration, row, error, commit_error)
    return error, retry_at, None


def _reschedule_owned(
    core: WorkerCore, registration: Registration, state: AttemptState, error: BaseException
) -> Flow[tuple[dt.datetime | None, str | None]]:
    """Reschedule a failed staged attempt if it still owns its job; else leave the job be."""
    if isinstance(error, policy.OWNERSHIP_ERRORS) or state.signal.is_set():
        why = state.signal.reason or type(error).__name__
        log.warning(
            "job %s: staged attempt ended without its job (%s); not rescheduling",
            state.job.id,
            why,
        )
        return None, why
    ctx = core.ctx
    retry_at, text = core.retry(registration, error, state.job.attempt)
    reschedule = partial(
        ops.reschedule_job,
        models=ctx.models,
        job_id=state.job.id,
        scheduled_at=retry_at,
        error=text,
        now=ctx.clock(),
    )
    try:
        yield InTransaction(reschedule, "owned", state)
    except policy.OWNERSHIP_ERRORS as exc:
        return None, state.signal.reason or type(exc).__name__
    return retry_at, None


def _record_lost(
    core: WorkerCore,
    registration: Registration,
    row: Any,
    error: BaseException,
    failure: BaseException | None,
) -> Flow[dt.datetime]:
    """The attempt's transaction was rolled back whole: count it afresh, with backoff."""
    ctx = core.ctx
    retry_at, text = core.retry(registration, error, row["attempt"])
    record = partial(
        ops.record_failed_attempt,
        models=ctx.models,
        job_id=row["id"],
        scheduled_at=retry_at,
        error=policy.lost_attempt_text(error, failure, text),
        now=ctx.clock(),
    )
    yield InTransaction(record, "plain")
    return retry_at


# --- leases ---------------------------------------------------------------------------


def reap_one(core: WorkerCore) -> Flow[bool]:
    """Return one expired lease of the worker's types to pending; True if one was."""
    ctx = core.ctx
    if ctx.capabilities.single_writer:
        # Single writer: look with a read before taking the write lock.
        look = partial(
            ops.has_expired_lease,
            models=ctx.models,
            type_names=core.acquired_types,
            now=ctx.clock(),
        )
        if not (yield Look(look)):
            return False
    held = yield Query("held_ids")
    reap = partial(
        ops.reap_expired_lease,
        models=ctx.models,
        caps=ctx.capabilities,
        type_names=core.acquired_types,
        exclude_ids=held,
        now=ctx.clock(),
    )
    row = yield InTransaction(reap, "write")
    if row is None:
        return False
    log.warning(
        "job %s (%s): lease expired, returned to pending (attempt %d kept)",
        row["id"],
        row["type_name"],
        row["attempt"],
    )
    try:
        ctx.notify.notify_job_scheduled(row["type_name"], 1)
        # The worker that held the lease may be alive but stalled: tell it.
        ctx.notify.notify_job_ownership_lost(row["id"])
    except Exception:
        log.exception("notify after reaping failed")
    return True
