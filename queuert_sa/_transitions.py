"""Chain transitions: every multi-statement change of job rows, written once.

Each function is a unit of work on the caller's ``Session`` (or connection),
inside its current transaction: it runs state-layer operations, buffers the
post-commit notifications with :mod:`hooks`, and never commits. The sync
client calls them directly, the async client through ``run_sync``, and both
workers write an attempt's outcome with :func:`write_outcome` — as does
``complete_chain`` for work finished outside a worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, cast

from sqlalchemy.orm import Session

from queuert_sa._logs import get_logger

from . import _observing as observing
from . import _start_checks as checks
from . import hooks
from ._context import Context
from ._entities import Chain, Dedup, Job, assemble
from ._errors import (
    ChainCancelledError,
    ChainNotFoundError,
    DeduplicationError,
    InvalidBlockersError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobNotTriggerableError,
    JobTypeMismatchError,
)
from ._ids import coerce_id, new_ids
from ._job_types import ChainStart, JobType
from ._rules import (
    Completed,
    Continued,
    Decision,
    check_blocker_refs,
    check_priority,
    check_schedule,
    scheduled_time,
)
from ._snapshots import chain_from_rows, job_from_row, job_snapshot
from .models import JobStatus
from .notify import NotifyAdapter
from .state import NewJob
from .state import blockers as ops_blockers
from .state import chains as ops_chains
from .state import operations as ops

log = get_logger("queuert_sa")

_CHAIN = cast("type[Chain[Any, Any]]", Chain)

# --- notifications after COMMIT -----------------------------------------------------


def wake_after_commit(session: Session, ctx: Context, counts: Counter[str]) -> None:
    """Wake workers of these types (type name -> jobs) once the transaction commits."""
    notify = ctx.notify
    for type_name, count in counts.items():
        hooks.on_commit(session, partial(notify.notify_job_scheduled, type_name, count))


def lost_after_commit(session: Session, ctx: Context, job_id: uuid.UUID) -> None:
    """Tell the staged attempt running ``job_id`` that it lost the job, after COMMIT."""
    hooks.on_commit(session, partial(ctx.notify.notify_job_ownership_lost, job_id))


# --- starting chains ------------------------------------------------------------------


def resolve_blockers(
    session: Session,
    ctx: Context,
    wanted: Sequence[tuple[JobType[Any, Any], list[uuid.UUID]]],
    batch: Mapping[uuid.UUID, str] | None = None,
) -> list[JobStatus]:
    """Check that the blocker chains exist and fit their slots; the new jobs' statuses.

    Locks each blocker chain's latest job (see ``read_blocker_chains``). A job
    whose blockers are all completed starts ``pending``, otherwise ``blocked``.
    ``batch``: chains started in the same INSERT (id -> type), which may be
    blockers too (open, so their dependents start ``blocked``).
    """
    batch = batch or {}
    ids = {c for _, chain_ids in wanted for c in chain_ids if c not in batch}
    if ids:
        # SQLite: become the writer before reading, so the read is not stale
        # when the INSERT comes (another writer committing in between would
        # fail the transaction with "database is locked").
        ops.take_write_lock(session, ctx.models, ctx.capabilities)
    found = (
        ops_blockers.read_blocker_chains(session, ctx.models, ctx.capabilities, ids) if ids else {}
    )
    statuses: list[JobStatus] = []
    for job_type, chain_ids in wanted:
        done = True
        for index, chain_id in enumerate(chain_ids):
            info = (batch[chain_id], False) if chain_id in batch else found.get(chain_id)
            if info is None:
                raise InvalidBlockersError(
                    f"Job type {job_type.name!r}: blocker chain {chain_id} (slot {index}) does "
                    "not exist (a chain's id is its first job's id).",
                    type_name=job_type.name,
                )
            expected = job_type.blocker_type_at(index)
            if expected is not None and info[0] != expected.name:
                raise InvalidBlockersError(
                    f"Job type {job_type.name!r}: blocker slot {index} takes a {expected.name!r} "
                    f"chain; {chain_id} is a {info[0]!r} chain.",
                    type_name=job_type.name,
                )
            done = done and info[1]
        statuses.append(JobStatus.PENDING if done else JobStatus.BLOCKED)
    return statuses


def check_no_cycle(
    jobs: Sequence[NewJob], blockers: Sequence[tuple[JobType[Any, Any], list[uuid.UUID]]]
) -> None:
    """Refuse chains of one batch that wait for each other (or for themselves): none would run."""
    waits = {job.id: set(ids) for job, (_, ids) in zip(jobs, blockers, strict=True)}
    done: set[uuid.UUID] = set()

    def visit(chain_id: uuid.UUID, path: list[uuid.UUID]) -> None:
        if chain_id in path:
            loop = " -> ".join(str(c) for c in [*path[path.index(chain_id) :], chain_id])
            raise InvalidBlockersError(
                f"These chains of one start_chains batch wait for each other, so none would "
                f"ever run: {loop}. A chain may wait for any other chain of the batch, or one "
                "already started, but not for one that (through others) waits for it.",
                type_name=jobs[0].type_name,
            )
        if chain_id in done or chain_id not in waits:
            return
        for blocker in waits[chain_id]:
            visit(blocker, [*path, chain_id])
        done.add(chain_id)

    for job in jobs:
        visit(job.id, [])


def start_chains(
    session: Session, ctx: Context, starts: Sequence[ChainStart[Any, Any]]
) -> list[Chain[Any, Any]]:
    """Insert the first jobs of ``starts`` (validated first), deduplicated, blockers resolved."""
    now = ctx.clock()
    # One draw for the batch's ids (one lock, one clock read, one read of random bits).
    generated = iter(new_ids(sum(1 for start in starts if start.id is None)))
    # Each start's type, looked up and checked once per batch, not once per start.
    types: dict[object, JobType[Any, Any]] = {}
    jobs: list[NewJob] = []
    blockers: list[tuple[JobType[Any, Any], list[uuid.UUID]]] = []
    any_blockers = any_given_id = any_dedup = False
    for start in starts:
        job_type = types.get(start.job_type)
        if job_type is None:
            job_type = types[start.job_type] = ctx.job_types.resolve(start.job_type)
            job_type.require_entry()
        name = job_type.name
        run_at, run_in, dedup = start.run_at, start.run_in, start.dedup
        scheduled_at = now
        if run_at is not None or run_in is not None:
            check_schedule(name, run_at, run_in)
            scheduled_at = scheduled_time(now, run_at, run_in)
        priority = check_priority(name, start.priority) if start.priority is not None else 0
        if dedup is not None:
            if not isinstance(dedup, Dedup):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise DeduplicationError(
                    f"dedup= takes a queuert_sa.Dedup, got {type(dedup).__name__}."
                )
            any_dedup = True
        if start.blockers:
            blockers.append((job_type, check_blocker_refs(job_type, start.blockers)))
            any_blockers = True
        else:
            if job_type.blocker_slots:  # slots to fill: refused (the error says which)
                job_type.require_blocker_count(0)
            blockers.append((job_type, []))
        encoded = job_type.encode_input(start.input)
        if start.id is not None:
            job_id = coerce_id(start.id)
            any_given_id = True
        else:
            job_id = next(generated)
        jobs.append(
            NewJob(
                id=job_id,
                type_name=name,
                chain_id=job_id,
                chain_type_name=name,
                chain_index=0,
                input=encoded,
                status=JobStatus.PENDING,
                created_at=now,
                scheduled_at=scheduled_at,
                deduplication_key=dedup.key if dedup is not None else None,
                priority=priority or 0,
            )
        )
    duplicates = checks.find_duplicates(session, ctx, starts, jobs, now) if any_dedup else {}
    fresh = [i for i in range(len(jobs)) if i not in duplicates]
    if len(fresh) < len(jobs):
        jobs = [jobs[i] for i in fresh]
        blockers = [blockers[i] for i in fresh]
    if any_given_id:
        given = [job.id for i, job in zip(fresh, jobs, strict=True) if starts[i].id is not None]
        checks.check_new_ids(session, ctx, given)
    if any_blockers and any(chain_ids for _, chain_ids in blockers):
        batch = {job.id: job.type_name for job in jobs}
        check_no_cycle(jobs, blockers)
        statuses = resolve_blockers(session, ctx, blockers, batch)
        jobs = [dataclasses.replace(j, status=s) for j, s in zip(jobs, statuses, strict=True)]
    spans = None
    if ctx.observers.active:
        jobs, spans = observing.trace_new_jobs(
            session, ctx, jobs, None, [chain_ids for _, chain_ids in blockers]
        )
    ops.insert_jobs(session, ctx.models, jobs)
    if any_blockers:
        ops_blockers.insert_blockers(
            session,
            ctx.models,
            [
                (job.id, chain_id, index)
                for job, (_, chain_ids) in zip(jobs, blockers, strict=True)
                for index, chain_id in enumerate(chain_ids)
            ],
        )
    if spans is not None:
        observing.created_after_commit(
            session, ctx.observers, jobs, spans, [chain_ids for _, chain_ids in blockers]
        )
    wake_after_commit(
        session, ctx, Counter(job.type_name for job in jobs if job.status == JobStatus.PENDING)
    )
    created = [
        assemble(  # Chain(...), without the cost of its frozen __init__
            _CHAIN,
            id=job.id,
            type_name=job.type_name,
            input=starts[i].input,
            status=job.status,
            output=None,
            created_at=job.created_at,
            completed_at=None,
            current_job_id=job.id,
            current_type_name=job.type_name,
            current_index=0,
            priority=job.priority,
            deduplicated=False,
        )
        for i, job in zip(fresh, jobs, strict=True)
    ]
    if not duplicates:
        return created
    results: list[Chain[Any, Any]] = []
    fresh_chains = iter(created)
    for i in range(len(starts)):
        duplicate = duplicates.get(i)
        if duplicate is None:
            results.append(next(fresh_chains))
        elif isinstance(duplicate, int):  # an earlier start of this batch
            results.append(dataclasses.replace(results[duplicate], deduplicated=True))
        else:
            results.append(duplicate)
    return results


# --- finishing a job ------------------------------------------------------------------


def write_outcome(
    session: Session, ctx: Context, job: Job[Any], decision: Decision, worker_id: str | None
) -> None:
    """Write what an attempt (or ``complete_chain``) decided for ``job``.

    Completes the job (with its output, or ``None`` when continuing), inserts
    the continuation unless one exists at that ``chain_index``, unblocks the
    jobs waiting for a completed chain, and buffers the post-commit
    notifications.
    """
    now = ctx.clock()
    if isinstance(decision, Continued):
        _insert_continuation(session, ctx, job, decision, now)
        output = None
    else:
        output = decision.output
    has_dependents = ops.complete_job(
        session, ctx.models, job_id=job.id, output=output, worker_id=worker_id, now=now
    )
    if ctx.observers.active:
        _observe_finished(session, ctx, job, decision, worker_id, now)
    if isinstance(decision, Completed):
        chain = [job.chain_id]
        _chains_completed(session, ctx, chain, chain if has_dependents else [], now)


def _observe_finished(
    session: Session,
    ctx: Context,
    job: Job[Any],
    decision: Decision,
    worker_id: str | None,
    now: dt.datetime,
) -> None:
    chain_created_at = None
    if isinstance(decision, Completed):
        if job.chain_index == 0:
            chain_created_at = job.created_at
        else:
            root = ops.get_job(session, ctx.models, job.chain_id)
            chain_created_at = root["created_at"] if root is not None else job.created_at
    observing.finished_after_commit(
        session,
        ctx.observers,
        job,
        continued=isinstance(decision, Continued),
        worker_id=worker_id,
        now=now,
        chain_created_at=chain_created_at,
    )


def complete_jobs(
    session: Session,
    ctx: Context,
    completed: Sequence[tuple[Job[Any], Completed]],
    worker_id: str | None,
) -> None:
    """:func:`write_outcome` for a group's completed jobs, in one batch of statements.

    Their dependents are looked for in one statement after the completions
    (a fresh snapshot: a dependent that attached while the group ran, before
    it took a job's row, is seen).
    """
    if not completed:
        return
    now = ctx.clock()
    ops.complete_jobs(
        session,
        ctx.models,
        outputs=[(job.id, decision.output) for job, decision in completed],
        worker_id=worker_id,
        now=now,
    )
    if ctx.observers.active:
        for job, decision in completed:
            _observe_finished(session, ctx, job, decision, worker_id, now)
    chain_ids = [job.chain_id for job, _ in completed]
    _chains_completed(session, ctx, chain_ids, chain_ids, now)


def _notify_completed(notify: NotifyAdapter, chain_ids: Sequence[uuid.UUID]) -> None:
    for chain_id in chain_ids:
        notify.notify_chain_completed(chain_id)


def _chains_completed(
    session: Session,
    ctx: Context,
    chain_ids: Sequence[uuid.UUID],
    depended: Sequence[uuid.UUID],
    now: dt.datetime,
) -> None:
    """Signal completed chains after COMMIT, and free the jobs waiting on the ``depended`` ones."""
    hooks.on_commit(session, partial(_notify_completed, ctx.notify, chain_ids))
    unblocked = (
        ops_blockers.unblock_dependents(
            session, ctx.models, ctx.capabilities, chain_ids=depended, now=now
        )
        if depended
        else []
    )
    if unblocked and ctx.observers.active:
        observing.unblocked_after_commit(session, ctx.observers, unblocked)
    wake_after_commit(session, ctx, Counter(row["type_name"] for row in unblocked))


def _insert_continuation(
    session: Session, ctx: Context, job: Job[Any], next_job: Continued, now: dt.datetime
) -> None:
    if next_job.explicit_id:
        checks.check_new_ids(session, ctx, [next_job.id], (job.chain_id, job.chain_index + 1))
    status = JobStatus.PENDING
    if next_job.blockers:
        (status,) = resolve_blockers(session, ctx, [(next_job.target, next_job.blockers)])
    new = NewJob(
        id=next_job.id,
        type_name=next_job.target.name,
        chain_id=job.chain_id,
        chain_type_name=job.chain_type_name,
        chain_index=job.chain_index + 1,
        input=next_job.input,
        status=status,
        created_at=now,
        scheduled_at=scheduled_time(now, next_job.run_at, next_job.run_in),
        # Inherited, so "is this chain open?" is one indexed lookup.
        deduplication_key=job.deduplication_key,
        priority=job.priority if next_job.priority is None else next_job.priority,
        # Copied whether or not this process traces: a later one may.
        chain_trace_context=job.chain_trace_context,
    )
    spans = None
    if ctx.observers.active:
        (new,), spans = observing.trace_new_jobs(session, ctx, [new], job, [next_job.blockers])
    created = ops.insert_continuation(session, ctx.models, ctx.capabilities, new)
    if created and spans is not None:
        observing.created_after_commit(session, ctx.observers, [new], spans, [next_job.blockers])
    if created:
        ops_blockers.insert_blockers(
            session, ctx.models, [(next_job.id, c, i) for i, c in enumerate(next_job.blockers)]
        )
    if created and status == JobStatus.PENDING:
        wake_after_commit(session, ctx, Counter({next_job.target.name: 1}))


def job_blockers(session: ops.Executor, ctx: Context, job_id: uuid.UUID) -> list[Chain[Any, Any]]:
    """The chains a job waits for (or waited for), in slot order."""
    chains: list[Chain[Any, Any]] = []
    for chain_id in ops_blockers.blocker_chain_ids(session, ctx.models, job_id):
        found = ops_chains.get_chain(session, ctx.models, chain_id)
        if found is not None:
            chains.append(chain_from_rows(ctx.job_types, *found))
    return chains


def lock_current_job(
    session: Session, ctx: Context, chain_id: uuid.UUID, chain_type: JobType[Any, Any]
) -> tuple[Job[Any], JobType[Any, Any], list[Chain[Any, Any]]]:
    """Lock a chain's open current job for ``complete_chain``: (job, its type, completed blockers).

    Waits for an atomic attempt on that job to end (row lock). A failed job
    may be completed by hand. Raises :class:`ChainNotFoundError`,
    :class:`JobTypeMismatchError`, :class:`JobAlreadyCompletedError` or
    :class:`ChainCancelledError`.
    """
    ops.take_write_lock(session, ctx.models, ctx.capabilities)
    found = ops_chains.lock_chain(session, ctx.models, ctx.capabilities, chain_id)
    if found is None:
        raise ChainNotFoundError(chain_id)
    root, latest = found
    if root["type_name"] != chain_type.name:
        raise JobTypeMismatchError(expected=chain_type.name, actual=root["type_name"], id=chain_id)
    if latest["status"] == JobStatus.COMPLETED:
        raise JobAlreadyCompletedError(latest["id"])
    if latest["status"] == JobStatus.CANCELLED:
        raise ChainCancelledError(
            chain_from_rows(ctx.job_types, root, latest), reason=latest["cancel_reason"]
        )
    current_type = ctx.job_types.get(latest["type_name"])
    blockers = job_blockers(session, ctx, latest["id"]) if current_type.blocker_types else []
    job = job_from_row(latest, current_type)
    return job, current_type, [chain for chain in blockers if chain.is_completed]


# --- operating: trigger -------------------------------------------------------------------


def trigger_job(session: Session, ctx: Context, job_id: uuid.UUID) -> Job[Any]:
    """Make a pending job due now; wake workers after COMMIT. Returns the job as updated."""
    row = ops.trigger_job(session, ctx.models, job_id=job_id, now=ctx.clock())
    if row is None:
        current = ops.get_job(session, ctx.models, job_id)
        if current is None:
            raise JobNotFoundError(job_id)
        raise JobNotTriggerableError(job_id, status=str(current["status"]))
    wake_after_commit(session, ctx, Counter({row["type_name"]: 1}))
    ctx.observers.after_commit(session, "job_triggered", job=observing.job_info(row))
    return job_snapshot(ctx.job_types, row)
