"""What the worker flows tell the logs and the client's observers (:mod:`queuert_sa.observers`).

Called from the shared flows, so the thread and the asyncio worker report the
same events at the same points. Every function returns at once when the
client has no observers.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from queuert_sa._attempt import AttemptState
from queuert_sa._errors import DatabaseError
from queuert_sa._logs import get_logger, job_fields
from queuert_sa._observing import job_info
from queuert_sa._rules import Completed, Continued, Decision
from queuert_sa.observers import BacklogCount, JobInfo

from . import _policy as policy

if TYPE_CHECKING:
    from ._config import WorkerCore

log = get_logger("queuert_sa.worker")

#: Why a staged attempt lost its job -> the event that says so.
_LOST_EVENTS = {
    "taken_by_another_worker": "job_attempt_taken_by_another_worker",
    "JobTakenByAnotherWorkerError": "job_attempt_taken_by_another_worker",
    "already_completed": "job_attempt_already_completed",
    "JobAlreadyCompletedError": "job_attempt_already_completed",
}


def began(core: WorkerCore, state: AttemptState) -> None:
    """An attempt's handler is about to run: ``job_attempt_started``, and its span."""
    observers = core.ctx.observers
    if not observers.active:
        return
    job = state.job
    info = JobInfo(job.id, job.type_name, job.chain_id, job.chain_type_name, job.attempt)
    observers.emit("job_attempt_started", job=info, worker_id=core.worker_id)
    span = observers.start_attempt_span(
        info, core.worker_id, job.trace_context, job.chain_trace_context
    )
    if span is not None:
        core.observed[job.id] = span


def _nothing() -> None:
    return None


def enter(core: WorkerCore, state: AttemptState) -> Callable[[], None]:
    """Make the attempt's spans current while its handler runs; returns what undoes it."""
    if not core.observed:
        return _nothing
    span = core.observed.get(state.job.id)
    return _nothing if span is None else span.activate()


def abandoned(
    core: WorkerCore, row: Mapping[Any, Any] | None, error: BaseException, started: float
) -> None:
    """The attempt ended without a recorded outcome (its transaction failed).

    The job stays ``running`` until its lease or timeout lapses and it is
    reaped; observers see the attempt fail, not retried by this worker.
    """
    if row is not None and core.ctx.observers.active:
        observe_end(core, row, error, None, "abandoned", None, time.perf_counter() - started)


def ended(
    core: WorkerCore,
    row: Mapping[Any, Any],
    error: BaseException | None,
    retry_at: dt.datetime | None,
    lost: str | None,
    decision: Decision | None,
    duration: float,
) -> None:
    """The attempt's outcome is committed: log how it ended and tell the observers.

    A failed attempt with no retry and no ``lost`` reason made its job
    ``failed``: the chain's waiters (``await_chain``) are told.
    """
    if error is None:
        if not log.isEnabledFor(logging.INFO):
            pass  # the common case at volume: no record, so no fields to build
        elif isinstance(decision, Continued):
            log.info(
                "job %s (%s) continued with %s in %.3f s",
                row["id"],
                row["type_name"],
                decision.target.name,
                duration,
                extra=job_fields(row, core.worker_id),
            )
        else:
            log.info(
                "job %s (%s) completed in %.3f s",
                row["id"],
                row["type_name"],
                duration,
                extra=job_fields(row, core.worker_id),
            )
        observe_end(core, row, error, retry_at, lost, decision, duration)
        return
    extra = job_fields(row, core.worker_id)
    if retry_at is None and lost is None:
        log.error(
            "job %s (%s) failed after attempt %d and is not retried (status failed): %r",
            row["id"],
            row["type_name"],
            row["attempt"],
            error,
            extra=extra,
        )
        try:
            core.ctx.notify.notify_chain_completed(row["chain_id"])
        except Exception as exc:
            log.exception("notify after a job failed failed", extra=extra)
            core.ctx.observers.emit("notify_error", operation="notify_chain_completed", error=exc)
    elif retry_at is None:
        log.warning(
            "job %s (%s) attempt %d ended without its job, not rescheduled (%s): %r",
            row["id"],
            row["type_name"],
            row["attempt"],
            policy.lost_explanation(lost),
            error,
            extra=extra,
        )
    else:
        log.warning(
            "job %s (%s) attempt %d failed after %.3f s, retry at %s: %r",
            row["id"],
            row["type_name"],
            row["attempt"],
            duration,
            retry_at.isoformat(),
            error,
            extra=extra,
        )
    observe_end(core, row, error, retry_at, lost, decision, duration)


def observe_end(
    core: WorkerCore,
    row: Mapping[Any, Any],
    error: BaseException | None,
    retry_at: dt.datetime | None,
    lost: str | None,
    decision: Decision | None,
    duration: float,
) -> None:
    """The attempt's outcome is committed: its events, and the end of its span."""
    observers = core.ctx.observers
    if not observers.active:
        return
    span = core.observed.pop(row["id"], None)
    info = job_info(row)
    worker_id = core.worker_id
    continued_with = decision.target.name if isinstance(decision, Continued) else None
    if error is None:
        observers.emit(
            "job_attempt_completed",
            job=info,
            worker_id=worker_id,
            duration=duration,
            continued_with=continued_with,
        )
    else:
        observers.emit(
            "job_attempt_failed",
            job=info,
            worker_id=worker_id,
            duration=duration,
            error=error,
            retry_at=retry_at,
        )
        if lost is not None and lost in _LOST_EVENTS:
            observers.emit(_LOST_EVENTS[lost], job=info, worker_id=worker_id)
        elif retry_at is None and lost is None:
            observers.emit("job_failed", job=info, worker_id=worker_id, error=repr(error))
    if span is not None:
        span.end(
            error=error,
            continued_with=continued_with,
            retry_at=retry_at,
            chain_completed=error is None and isinstance(decision, Completed),
        )


def reaped(core: WorkerCore, row: Mapping[Any, Any], failed: bool) -> None:
    """An expired lease was taken back (``failed``: no attempts left)."""
    observers = core.ctx.observers
    if not observers.active:
        return
    info = job_info(row)
    observers.emit("job_reaped", job=info, worker_id=core.worker_id, failed=failed)
    if failed:
        observers.emit(
            "job_failed",
            job=info,
            worker_id=core.worker_id,
            error="lease expired, no attempts left",
        )


def lease(core: WorkerCore, state: AttemptState, event: str, **fields: Any) -> None:
    """A staged attempt's lease was renewed or outlived (``event``)."""
    observers = core.ctx.observers
    if observers.active:
        job = state.job
        info = JobInfo(job.id, job.type_name, job.chain_id, job.chain_type_name, job.attempt)
        observers.emit(event, job=info, worker_id=core.worker_id, **fields)


def pass_failed(core: WorkerCore, exc: Exception) -> None:
    """A slot's pass failed: ``worker_error``, and ``database_error`` for the database's."""
    observers = core.ctx.observers
    if not observers.active:
        return
    observers.emit("worker_error", worker_id=core.worker_id, error=exc)
    if isinstance(exc, DatabaseError):
        observers.emit("database_error", operation=exc.operation, error=exc)


def limit_reached(core: WorkerCore, type_name: str, max_running: int) -> None:
    """A job was left pending: ``max_running`` attempts of its type were running already."""
    log.debug(
        "worker %s: %s is at its limit of %d running; taking other work",
        core.worker_id,
        type_name,
        max_running,
    )
    observers = core.ctx.observers
    if observers.active:
        observers.emit(
            "job_limit_reached",
            type_name=type_name,
            worker_id=core.worker_id,
            max_running=max_running,
        )


def rate_limited(core: WorkerCore, type_name: str, delay: float) -> None:
    """A job was delayed ``delay`` seconds: its type's rate had no token."""
    log.debug(
        "worker %s: %s is over its rate; a job waits %.3f s", core.worker_id, type_name, delay
    )
    observers = core.ctx.observers
    if observers.active:
        observers.emit(
            "job_rate_limited", type_name=type_name, worker_id=core.worker_id, delay=delay
        )


def backlog_due(core: WorkerCore) -> bool:
    """True once per ``backlog_interval`` (for one slot of the worker), with observers."""
    if not core.ctx.observers.active or core.backlog_interval is None:
        return False
    now = time.monotonic()
    with core.observed_lock:
        if now < core.backlog_next:
            return False
        core.backlog_next = now + core.backlog_interval.total_seconds()
    return True


#: The states a backlog count reports, each type's always (zero when none).
BACKLOG_STATES = ("ready", "scheduled", "blocked", "running")


def report_backlog(core: WorkerCore, rows: list[Mapping[Any, Any]], now: dt.datetime) -> None:
    """Emit ``backlog`` from the backlog query's rows, with zeros for the worker's idle types.

    Every state of every type the worker handles is reported, so a graph or
    an alert sees 0, not a missing series, when a type has nothing waiting.
    """
    counts = [
        BacklogCount(
            type_name=row["type_name"],
            state=row["state"],
            count=row["count"],
            oldest_age=(
                max(0.0, (now - row["oldest"]).total_seconds())
                if row["state"] == "ready" and row["oldest"] is not None
                else None
            ),
        )
        for row in rows
    ]
    seen = {(c.type_name, c.state) for c in counts}
    counts += [
        BacklogCount(name, state, 0, 0.0 if state == "ready" else None)
        for name in core.type_names
        for state in BACKLOG_STATES
        if (name, state) not in seen
    ]
    core.ctx.observers.emit("backlog", counts=counts)
