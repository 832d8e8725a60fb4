"""Group commit: several atomic attempts of one job type in one transaction.

A handler registered with ``batch=N`` (or a ``batch_handler``) has its slot,
once the first job is acquired, take up to ``N - 1`` more due jobs of that
type in one more statement. Each attempt runs as it would alone, but:

* its own writes sit in its own SAVEPOINT (opened on the handler's first use
  of ``attempt.session``), so a handler that raises undoes only its own writes
  and its job alone is retried;
* the completions are written together, one batch of statements, and the
  group commits once: the per-job cost of a transaction is paid once per group;
* if that write or the COMMIT fails, nothing of the group is kept, and every
  attempt of it is counted afresh with its backoff (exactly as a single
  attempt whose COMMIT failed).

A ``batch_handler`` gets the whole group at once; the group shares one
SAVEPOINT and, if the function raises, every job of it is retried.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa import _transitions as transitions
from queuert_sa._attempt import AttemptState
from queuert_sa._rules import Completed
from queuert_sa.state import operations as ops
from queuert_sa.state import settlement

from . import _policy as policy
from . import _running as running
from . import _units as units
from ._config import Registration, WorkerCore
from ._effects import (
    CallHandler,
    End,
    EndSavepoint,
    Flow,
    HandlerEnded,
    InTransaction,
    Query,
    Run,
    Savepoint,
    SavepointOpen,
    Unit,
)


@dataclass
class Member:
    """One attempt of a group: its acquired row, its state and how it ended."""

    row: Any
    state: AttemptState | None
    error: BaseException | None


Ran = tuple[tuple[uuid.UUID, bool], ...]
"""The group's jobs, in order, with whether each attempt failed."""


def more(
    core: WorkerCore, registration: Registration, exclude: Collection[uuid.UUID], limit: int
) -> Unit:
    """The statement taking up to ``limit`` more due jobs of the group's type."""
    ctx = core.ctx
    now = ctx.clock()
    return partial(
        ops.acquire_jobs,
        models=ctx.models,
        caps=ctx.capabilities,
        type_names=(registration.job_type.name,),
        limit=limit,
        worker_id=core.worker_id,
        lease_until=now + core.lease_bound,
        now=now,
        exclude_ids=exclude,
    )


def group(
    core: WorkerCore, session: Any, registration: Registration, rows: list[Any]
) -> Flow[tuple[Ran, BaseException | None]]:
    """Run the group's attempts, write what they decided, commit once; count each.

    Returns the jobs attempted and a ``SystemExit``/``KeyboardInterrupt`` a
    handler raised, which the caller raises once the session is closed.
    """
    ctx = core.ctx
    started = time.perf_counter()
    members: list[Member] = []
    unstarted: list[Any] = []
    retries: dict[uuid.UUID, Any] = {}
    try:
        if registration.whole:
            members = yield from _run_whole(core, session, registration, rows)
        else:
            for index, row in enumerate(rows):
                if index and (yield Query("stopping")):
                    unstarted = rows[index:]  # the worker stops: give the rest back
                    break
                state, error, lost, _ = yield from running.run(
                    core, session, registration, row, grouped=True
                )
                assert not lost  # a grouped attempt writes only inside its SAVEPOINT
                members.append(Member(row, state, error))
                if policy.ends_process(error):
                    unstarted = rows[index + 1 :]  # the worker stops: give the rest back
                    break
        completed = [
            (m.state.job, m.state.decision)
            for m in members
            if m.error is None and m.state is not None and isinstance(m.state.decision, Completed)
        ]
        yield Run(
            session,
            partial(
                transitions.complete_jobs,
                ctx=ctx,
                completed=completed,
                worker_id=core.worker_id,
            ),
        )
        for member in members:
            if member.error is not None:
                retries[member.row["id"]] = yield from _reschedule(
                    core, session, registration, member
                )
        if unstarted:
            ids = [row["id"] for row in unstarted]
            yield Run(session, partial(ops.return_jobs, models=ctx.models, job_ids=ids))
        yield End(session, "commit")
    except Exception as failure:
        yield End(session, "rollback")
        retries = yield from _record_lost(core, registration, members, failure)
        for member in members:
            member.error = member.error or failure
    stop: BaseException | None = None
    for member in members:
        core.count(
            member.row,
            member.error,
            retries.get(member.row["id"]),
            duration=time.perf_counter() - started,
            decision=member.state.decision if member.state is not None else None,
        )
        if policy.ends_process(member.error):
            stop = stop or member.error
    return tuple((m.row["id"], m.error is not None) for m in members), stop


def _reschedule(
    core: WorkerCore, session: Any, registration: Registration, member: Member
) -> Flow[Any]:
    """Reschedule a failed attempt of the group in the group's transaction; when it runs again."""
    assert member.error is not None
    ctx = core.ctx
    retry_at, text = core.retry(registration, member.error, member.row["attempt"])
    if member.state is not None and member.state.write_failed:
        text = policy.lost_attempt_text(member.error, None, text)
    reschedule = partial(
        settlement.reschedule_job,
        models=ctx.models,
        job_id=member.row["id"],
        scheduled_at=retry_at,
        error=text,
        now=ctx.clock(),
    )
    yield Run(session, reschedule)
    return retry_at


def _record_lost(
    core: WorkerCore, registration: Registration, members: Sequence[Member], failure: BaseException
) -> Flow[dict[uuid.UUID, Any]]:
    """The group's transaction was rolled back: count every attempt of it afresh, with backoff."""
    ctx = core.ctx
    now = ctx.clock()
    records: list[tuple[uuid.UUID, Any, str]] = []
    for member in members:
        error = member.error or failure
        retry_at, text = core.retry(registration, error, member.row["attempt"])
        text = policy.lost_attempt_text(error, failure, text, group=True)
        records.append((member.row["id"], retry_at, text))

    def record(session: Session) -> None:
        for job_id, retry_at, text in records:
            settlement.record_failed_attempt(
                session, ctx.models, job_id=job_id, scheduled_at=retry_at, error=text, now=now
            )

    yield InTransaction(record, "plain")
    return {job_id: retry_at for job_id, retry_at, _ in records}


# --- a batch handler ---------------------------------------------------------------------


def _run_whole(
    core: WorkerCore, session: Any, registration: Registration, rows: list[Any]
) -> Flow[list[Member]]:
    """Run a ``batch_handler`` on the group; every attempt ends as the call does."""
    members: list[Member] = []
    ready: list[tuple[Any, AttemptState]] = []
    for row in rows:
        try:
            ready.append((row, (yield from running.state_of(core, session, registration, row))))
        except Exception as exc:
            members.append(Member(row, None, exc))
    if ready:
        error = yield from _call_whole(core, session, registration, [s for _, s in ready])
        members.extend(Member(row, state, error) for row, state in ready)
    return members


def _call_whole(
    core: WorkerCore, session: Any, registration: Registration, states: list[AttemptState]
) -> Flow[BaseException | None]:
    """Call the batch handler in one SAVEPOINT and write its continuations; its error, if any."""
    lead = states[0]
    if core.eager_savepoints:
        try:
            lead.savepoint = yield Savepoint(session)
        except Exception as exc:
            return exc  # the group's COMMIT fails and records it
    ended: HandlerEnded = yield CallHandler(registration, lead, session, group=tuple(states))
    error = ended.error or next((s.refused for s in states if s.refused is not None), None)
    savepoint = lead.savepoint
    if error is None:
        if savepoint is not None and not (yield SavepointOpen(session, savepoint)):
            error = policy.session_misuse(registration.job_type, lead.job.id)
        else:
            error = policy.batch_result_problem(registration.job_type, states, ended.value)
    if error is not None:
        yield from running.undo(session, savepoint)
        return error
    continued = [s for s in states if not isinstance(s.decision, Completed)]
    try:
        if continued and savepoint is None:
            savepoint = lead.savepoint = yield Savepoint(session)
        for state in continued:
            yield Run(session, partial(units.write_decided, ctx=core.ctx, state=state))
        if savepoint is not None:
            yield EndSavepoint(savepoint, commit=True)
    except Exception as exc:
        for state in states:
            state.write_failed = True
        yield from running.undo(session, savepoint)
        return exc
    return None
