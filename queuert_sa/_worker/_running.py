"""Running an attempt's handler, one of the flows' steps (see :mod:`._flow`).

Builds the attempt's state from its acquired row, calls the handler through
the driver, checks what it returned, and writes an atomic outcome inside the
handler's SAVEPOINT (or, in a group, leaves a completion to the group).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from queuert_sa import _transitions as transitions
from queuert_sa._attempt import AttemptState
from queuert_sa._entities import Chain
from queuert_sa._logs import get_logger, job_fields
from queuert_sa._rules import Completed
from queuert_sa._snapshots import job_from_row

from . import _policy as policy
from . import _reports as reports
from . import _units as units
from ._config import Registration, WorkerCore
from ._effects import (
    CallHandler,
    End,
    EndSavepoint,
    Flow,
    HandlerEnded,
    Run,
    Savepoint,
    SavepointOpen,
    WriteOwned,
)

log = get_logger("queuert_sa.worker")


def run(
    core: WorkerCore, session: Any, registration: Registration, row: Any, *, grouped: bool = False
) -> Flow[tuple[AttemptState | None, BaseException | None, bool, BaseException | None]]:
    """Run the handler (``grouped``: in a group's transaction, see :func:`_run_atomic`).

    Returns its state, the exception that ended the attempt, whether all was
    rolled back, and a ``SystemExit``/``KeyboardInterrupt`` raised after a
    staged outcome committed (the job is done; the exception is raised once
    the attempt is counted).
    """
    try:
        state = yield from state_of(core, session, registration, row)
    except Exception as exc:
        return None, exc, False, None
    if registration.mode == "atomic":
        # The server-side time limit was set by the acquiring statement.
        error, lost = yield from run_atomic(core, session, registration, state, grouped=grouped)
        return state, error, lost, None
    error = yield from run_staged(core, session, registration, state)
    if not state.written or error is None:
        return state, error, False, None
    # The outcome is committed: the job is done, whatever the handler did afterwards.
    log.warning(
        "job %s (%s): the handler raised %r after its outcome was committed",
        row["id"],
        row["type_name"],
        error,
        extra=job_fields(row, core.worker_id),
    )
    return state, None, False, error if policy.ends_process(error) else None


def state_of(
    core: WorkerCore, session: Any, registration: Registration, row: Any
) -> Flow[AttemptState]:
    """The attempt's state: its job, read from the acquired row, and its blockers."""
    ctx = core.ctx
    job_type = registration.job_type
    blockers: list[Chain[Any, Any]] = []
    if job_type.blocker_types:
        blockers = yield Run(session, partial(transitions.job_blockers, ctx=ctx, job_id=row["id"]))
    state = AttemptState(
        job_types=ctx.job_types,
        job_type=job_type,
        job=job_from_row(row, job_type),
        worker_id=core.worker_id,
        mode=registration.mode,
        blockers=blockers,
    )
    reports.began(core, state)
    return state


def run_atomic(
    core: WorkerCore,
    session: Any,
    registration: Registration,
    state: AttemptState,
    *,
    grouped: bool = False,
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

    ``grouped``: one of a group sharing the transaction. A completion is left
    for the group to write with the others' (:func:`_group`); a continuation
    is written inside the attempt's SAVEPOINT, opened for it if the handler
    did not, so that its failure undoes only this attempt.
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
        yield from undo(session, savepoint)
        return error, False
    write: Run | None = Run(session, partial(units.write_decided, ctx=core.ctx, state=state))
    if grouped:
        if isinstance(state.decision, Completed):
            # Written with the group's; releasing the SAVEPOINT flushes the
            # handler's own writes.
            write = None
            if savepoint is None:
                return None, False  # the handler wrote nothing
        elif savepoint is None:
            try:
                savepoint = state.savepoint = yield Savepoint(session)
            except Exception as exc:
                return exc, False  # the group's COMMIT fails and records it
    if savepoint is None:
        assert write is not None
        try:
            yield write
        except Exception as exc:
            state.write_failed = True
            yield End(session, "rollback")
            return exc, True
        return None, False
    try:
        if write is not None:
            yield write
        yield EndSavepoint(savepoint, commit=True)
    except Exception as exc:
        state.write_failed = True
        yield from undo(session, savepoint)
        return exc, False
    return None, False


def undo(session: Any, savepoint: Any) -> Flow[None]:
    """Roll back the handler's SAVEPOINT if it is still open."""
    if savepoint is None or not (yield SavepointOpen(session, savepoint)):
        return
    try:
        yield EndSavepoint(savepoint, commit=False)
    except Exception:
        # The connection is gone (e.g. the server ended a timed-out
        # transaction); the commit path records the attempt.
        log.debug("rolling back the handler's savepoint failed", exc_info=True)


def run_staged(
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
