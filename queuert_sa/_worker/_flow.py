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
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

from queuert_sa._attempt import AttemptState
from queuert_sa._logs import get_logger, job_fields
from queuert_sa.models import JobStatus
from queuert_sa.state import leases, queries, settlement
from queuert_sa.state import operations as ops

from . import _acquire as acquiring
from . import _group as group
from . import _keep as recurring
from . import _policy as policy
from . import _reports as reports
from . import _running as running
from . import _untaken as untaken
from ._config import Registration, WorkerCore
from ._effects import (
    End,
    Flow,
    HintIdle,
    InTransaction,
    Look,
    Open,
    Query,
    ReleaseLease,
    Run,
    Wait,
    Writer,
)

log = get_logger("queuert_sa.worker")


@dataclass(frozen=True)
class Step:
    """What one pass of a slot did."""

    job_id: uuid.UUID | None = None
    """The job attempted, or None if there was nothing to run."""
    failed: bool = False
    """The attempt ended in an exception."""
    next_due: dt.datetime | None = None
    """With nothing to run: when the next pending job is due, if any."""
    others: tuple[tuple[uuid.UUID, bool], ...] = ()
    """The rest of a group attempted in the same transaction: (job id, failed)."""

    @property
    def ran(self) -> list[tuple[uuid.UUID, bool]]:
        """Every job attempted, with whether its attempt failed."""
        if self.job_id is None:
            return []
        return [(self.job_id, self.failed), *self.others]


# --- the loops ------------------------------------------------------------------------


def slot_loop(core: WorkerCore) -> Flow[None]:
    """One slot until the worker stops: run due jobs, reap, sleep; back off on failures."""
    failures = 0
    busy = False
    while not (yield Query("stopping")):
        try:
            if reports.backlog_due(core):
                yield from count_backlog(core)
            if untaken.check_due(core, at_once=False):
                yield from untaken.check(core)
            if core.schedules_due(core.poll_interval):
                yield from recurring.keep(core)
            step = yield from process_one(core, look_first=not busy, slot=True)
            busy = step.job_id is not None
            if busy:
                # Work begets work: wake one idle slot to look for more (this
                # slot looks again itself; a kept hint would only make it look twice).
                yield HintIdle()
            elif not core.reap_due() or not (yield from reap_one(core)):
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
            reports.pass_failed(core, exc)
            core.reap_soon()  # a failed pass proves nothing about expired leases
            yield Wait(delay, "stop")


def drain(core: WorkerCore, max_jobs: int | None) -> Flow[int]:
    """Run due jobs (and expired leases) until none is due; how many ran.

    A job whose attempt fails is not taken again by the same drain, even if
    its retry is due at once.
    """
    yield from recurring.keep(core)  # the schedules first: their due ticks are drained too
    if untaken.check_due(core, at_once=True):
        yield from untaken.check(core)
    done = 0
    failed: set[uuid.UUID] = set()
    while max_jobs is None or done < max_jobs:
        step = yield from process_one(
            core,
            exclude=failed,
            look_first=done == 0,
            slot=False,
            most=None if max_jobs is None else max_jobs - done,
        )
        if step.job_id is None:
            if (yield from reap_one(core)):
                continue
            break
        for job_id, job_failed in step.ran:
            done += 1
            if job_failed:
                failed.add(job_id)
    return done


def count_backlog(core: WorkerCore) -> Flow[None]:
    """Count the open jobs by type and state (one read) and tell the observers."""
    now = core.ctx.clock()
    rows = yield Look(partial(queries.backlog, models=core.ctx.models, now=now))
    reports.report_backlog(core, rows, now)


def next_due(core: WorkerCore) -> Flow[dt.datetime | None]:
    """When the next pending job of the worker's types is due (a read ended by COMMIT)."""
    types = core.acquired_types
    if not types:
        return None  # every type at its limit: the limits' recheck says when to look
    look = partial(ops.next_due_at, models=core.ctx.models, type_names=types)
    due: dt.datetime | None = yield Look(look)
    return due


def process_one(
    core: WorkerCore,
    *,
    exclude: Collection[uuid.UUID] = (),
    look_first: bool = True,
    slot: bool,
    most: int | None = None,
) -> Flow[Step]:
    """Run one attempt (or one group); with nothing to run, say when the next job is due.

    ``most`` caps the jobs a group takes.

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
        step = yield from attempt(core, exclude, most)
    except Exception:
        yield Writer(take=False)
        raise
    yield Writer(take=False)
    if step.job_id is None:
        due = yield from next_due(core)
        recheck = core.limits.recheck_at(core.ctx.clock())  # a type at its limit, looked at again
        step = Step(next_due=due if recheck is None or (due and due < recheck) else recheck)
    return step


# --- one attempt ----------------------------------------------------------------------


def attempt(
    core: WorkerCore, exclude: Collection[uuid.UUID], most: int | None = None
) -> Flow[Step]:
    """Acquire a due job, run its handler, write or reschedule, commit; count it.

    A job whose handler takes a ``batch`` goes on as a group: see :func:`_group`.
    """
    ctx = core.ctx
    session = yield Open()
    state: AttemptState | None = None
    row: Any = None
    started = time.perf_counter()
    try:
        row = yield from acquiring.acquire(core, session, exclude, ctx.clock())
        if row is None:
            # Commit, not roll back: the transaction wrote nothing, and a
            # ROLLBACK makes psycopg drop every prepared statement.
            yield End(session, "commit")
            yield End(session, "close")
            return Step()
        registration = core.handlers[row["type_name"]]
        if registration.batch > 1 and (most is None or most > 1):
            limit = registration.batch - 1 if most is None else min(registration.batch, most) - 1
            rows = [row, *(yield Run(session, group.more(core, registration, exclude, limit)))]
            ran, stop = yield from group.group(core, session, registration, rows)
            yield End(session, "close")
            if stop is not None:
                raise stop  # SystemExit/KeyboardInterrupt from a handler, now that it is recorded
            (first, first_failed), *others = ran
            return Step(job_id=first, failed=first_failed, others=tuple(others))
        state, error, lost, fatal = yield from running.run(core, session, registration, row)
        error, retry_at, why = yield from _settle(
            core, session, registration, row, state, error, lost
        )
    except Exception as exc:
        reports.abandoned(core, row, exc, started)
        if state is not None:
            yield ReleaseLease(state)
        yield End(session, "close")
        raise
    if state is not None:
        yield ReleaseLease(state)
    yield End(session, "close")
    core.limits.mark_free(row["type_name"])
    core.count(
        row,
        error,
        retry_at,
        lost=why,
        duration=time.perf_counter() - started,
        decision=state.decision if state is not None else None,
    )
    if policy.ends_process(error):
        assert error is not None
        raise error  # SystemExit/KeyboardInterrupt from the handler, now that it is recorded
    if fatal is not None:
        raise fatal  # the same, raised after a staged outcome committed: the job is done
    return Step(job_id=row["id"], failed=error is not None)


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
                    settlement.reschedule_job,
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
            extra=job_fields(state.job, core.worker_id),
        )
        return None, why
    ctx = core.ctx
    retry_at, text = core.retry(registration, error, state.job.attempt)
    reschedule = partial(
        settlement.reschedule_job,
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
) -> Flow[dt.datetime | None]:
    """The attempt's transaction was rolled back whole: count it afresh, with backoff."""
    ctx = core.ctx
    retry_at, text = core.retry(registration, error, row["attempt"])
    record = partial(
        settlement.record_failed_attempt,
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
    if not core.acquired_types:
        return False
    if ctx.capabilities.single_writer:
        # Single writer: look with a read before taking the write lock.
        look = partial(
            leases.has_expired_lease,
            models=ctx.models,
            type_names=core.acquired_types,
            now=ctx.clock(),
        )
        if not (yield Look(look)):
            return False
    held = yield Query("held_ids")
    reap = partial(
        leases.reap_expired_lease,
        models=ctx.models,
        caps=ctx.capabilities,
        type_names=core.acquired_types,
        exclude_ids=held,
        now=ctx.clock(),
        limits=core.attempt_limits,
    )
    row = yield InTransaction(reap, "write")
    if row is None:
        return False
    core.reap_soon()
    failed = row["status"] == JobStatus.FAILED
    reports.reaped(core, row, failed)
    log.log(
        logging.ERROR if failed else logging.WARNING,
        "job %s (%s): lease expired, %s (attempt %d kept)",
        row["id"],
        row["type_name"],
        "failed: no attempts left" if failed else "returned to pending",
        row["attempt"],
        extra=job_fields(row, core.worker_id),
    )
    try:
        if failed:
            ctx.notify.notify_chain_completed(row["chain_id"])
        else:
            ctx.notify.notify_job_scheduled(row["type_name"], 1)
        # The worker that held the lease may be alive but stalled: tell it.
        ctx.notify.notify_job_ownership_lost(row["id"])
    except Exception:
        log.exception("notify after reaping failed", extra=job_fields(row, core.worker_id))
    return True
