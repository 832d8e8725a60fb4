"""Removing chains: explicit deletion, and retention of completed chains.

Deletion locks the chains to remove (a cascade adds the chains their jobs
declare as blockers), finds the jobs outside the set that still reference one,
and deletes jobs and blocker rows. Retention walks the chains completed before
a cutoff, skips those another transaction holds or a kept chain still declares
as a blocker, and deletes the rest with the same statement.

Same rules as :mod:`.operations`. Constants that partial indexes are defined
with (``chain_index = 0``, ``status <> 'completed'``) are written as SQL
literals, not bound parameters, so both PostgreSQL and SQLite can prove the
index predicate and use it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    tuple_,
)

from queuert_sa.models import Models

from .blockers import read_blocker_chains
from .capabilities import Capabilities
from .operations import Executor, database_errors, take_write_lock

_ROOT: ColumnElement[int] = literal_column("0")
_COMPLETED: ColumnElement[str] = literal_column("'completed'")

#: Retention cutoffs: per terminal status, jobs that reached it before this time may go.
Cutoffs = Mapping[str, dt.datetime]


# --- deletion ------------------------------------------------------------------------


def lock_chains(
    executor: Executor, models: Models, caps: Capabilities, chain_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Lock every job of these chains for deletion; the ids of the chains that exist.

    Each chain's latest job is locked first, waiting for an atomic attempt
    on it to end (and following the chain if that attempt continued it), so
    no worker can take or continue the chain afterwards. Then every job is
    locked ``FOR UPDATE``, which also keeps new dependents (whose foreign
    key takes ``KEY SHARE``) off them until the caller's transaction ends.
    Locking the first job before the latest would deadlock with an attempt
    whose continuation's foreign key needs that first job.
    """
    if not chain_ids:
        return set()
    table = models.job_table
    take_write_lock(executor, models, caps)
    if caps.skip_locked:
        # One statement for all chains: each latest job, re-read until newest.
        read_blocker_chains(executor, models, caps, chain_ids)
    stmt = (
        select(table.c.id, table.c.chain_id, table.c.chain_index)
        .where(table.c.chain_id.in_(list(chain_ids)))
        .order_by(table.c.id)
    )
    if caps.skip_locked:
        stmt = stmt.with_for_update()
    with database_errors("lock chains", models):
        rows = executor.execute(stmt).all()
    return {row.chain_id for row in rows if row.chain_index == 0 and row.id == row.chain_id}


def lock_whole_chains(
    executor: Executor, models: Models, caps: Capabilities, chain_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """Of these chains, those whose every job this transaction could lock without waiting.

    For retention on PostgreSQL: a chain any of whose jobs another
    transaction holds (a producer attaching it as a blocker holds its latest
    job) is skipped, never waited for. Without row locks (SQLite, one writer)
    every chain qualifies.
    """
    if not chain_ids or not caps.skip_locked:
        return set(chain_ids)
    table = models.job_table
    ids = list(chain_ids)
    locked = (
        select(table.c.id, table.c.chain_id)
        .where(table.c.chain_id.in_(ids))
        .with_for_update(skip_locked=True)
    )
    total = (
        select(table.c.chain_id, func.count())
        .where(table.c.chain_id.in_(ids))
        .group_by(table.c.chain_id)
    )
    with database_errors("lock chains to clean up", models):
        got = Counter(row.chain_id for row in executor.execute(locked))
        return {chain_id for chain_id, n in executor.execute(total) if got[chain_id] == n}


def blocker_chains_of(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> set[uuid.UUID]:
    """The chains that jobs of these chains declare as blockers."""
    if not chain_ids:
        return set()
    job, blocker = models.job_table, models.job_blocker_table
    stmt = (
        select(blocker.c.blocked_by_chain_id)
        .join(job, job.c.id == blocker.c.job_id)
        .where(job.c.chain_id.in_(list(chain_ids)))
        .distinct()
    )
    with database_errors("read blockers of chains", models):
        return set(executor.execute(stmt).scalars())


def outside_references(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """(job, its chain, blocker chain) for jobs outside ``chain_ids`` blocked by one inside."""
    if not chain_ids:
        return []
    ids = list(chain_ids)
    job, blocker = models.job_table, models.job_blocker_table
    stmt = (
        select(blocker.c.job_id, job.c.chain_id, blocker.c.blocked_by_chain_id)
        .join(job, job.c.id == blocker.c.job_id)
        .where(blocker.c.blocked_by_chain_id.in_(ids), job.c.chain_id.not_in(ids))
        .order_by(blocker.c.blocked_by_chain_id, blocker.c.job_id)
    )
    with database_errors("check blocker references", models):
        return [(r[0], r[1], r[2]) for r in executor.execute(stmt)]


def delete_chain_rows(executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]) -> int:
    """Delete the jobs of these chains and every blocker row touching them; jobs deleted.

    The caller has checked that no job outside the set references them.
    """
    if not chain_ids:
        return 0
    ids = list(chain_ids)
    job, blocker = models.job_table, models.job_blocker_table
    jobs_of_set = select(job.c.id).where(job.c.chain_id.in_(ids))
    with database_errors("delete chains", models):
        executor.execute(
            delete(blocker).where(
                or_(blocker.c.job_id.in_(jobs_of_set), blocker.c.blocked_by_chain_id.in_(ids))
            )
        )
        result = cast(
            CursorResult[Any], executor.execute(delete(job).where(job.c.chain_id.in_(ids)))
        )
    return result.rowcount


# --- retention -------------------------------------------------------------------------


def _finished_before(models: Models, chain_id: Any, cutoffs: Cutoffs) -> ColumnElement[bool]:
    """Every job of chain ``chain_id`` reached a terminal status before that status's cutoff.

    Statuses without a cutoff (failed or cancelled, unless asked) keep their chain.
    """
    table = models.job_table
    step = table.alias("step")
    gone = or_(
        *(
            and_(step.c.status == literal_column(f"'{status}'"), step.c.completed_at < cutoff)
            for status, cutoff in cutoffs.items()
        )
    )
    return ~exists().where(step.c.chain_id == chain_id, ~gone)


def retention_candidates(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    cutoffs: Cutoffs,
    type_names: Sequence[str] | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
    lock: bool = True,
) -> list[tuple[uuid.UUID, dt.datetime]]:
    """Oldest chains that ended before their status's cutoff, after the ``(created_at, id)`` key.

    Chain roots are walked in ``(created_at, id)`` order on the chain listing
    index; rows other transactions hold are skipped on PostgreSQL (with
    ``lock=False``, a dry run's, nothing is locked and nothing skipped).
    """
    table = models.job_table
    conditions: list[ColumnElement[bool]] = [
        table.c.chain_index == _ROOT,
        # A chain that ended before its cutoff started before it.
        table.c.created_at < max(cutoffs.values()),
        _finished_before(models, table.c.id, cutoffs),
    ]
    if type_names is not None:
        conditions.append(table.c.chain_type_name.in_(list(type_names)))
    if after is not None:
        # A row comparison, so the walk resumes from this key in the index
        # (an OR of the two parts makes both engines rescan the backlog).
        key = tuple_(table.c.created_at, table.c.id)
        conditions.append(
            key
            > tuple_(
                bindparam(None, after[0], type_=table.c.created_at.type),
                bindparam(None, after[1], type_=table.c.id.type),
            )
        )
    stmt = (
        select(table.c.id, table.c.created_at)
        .where(*conditions)
        .order_by(table.c.created_at, table.c.id)
        .limit(limit)
    )
    if caps.skip_locked and lock:
        stmt = stmt.with_for_update(skip_locked=True)
    with database_errors("find chains to clean up", models):
        return [(row.id, row.created_at) for row in executor.execute(stmt)]


def still_needed(
    executor: Executor,
    models: Models,
    *,
    chain_ids: Collection[uuid.UUID],
    cutoffs: Cutoffs,
    type_names: Sequence[str] | None,
) -> set[uuid.UUID]:
    """Those of ``chain_ids`` that a chain retention keeps declares as a blocker.

    A dependent chain is kept if it is not finished before its cutoff (open,
    ended recently, or failed or cancelled without a cutoff for those) or, with ``type_names``, is of another type. Its
    blockers are kept with it: a running dependent reads their outputs.
    """
    if not chain_ids:
        return set()
    job, blocker = models.job_table, models.job_blocker_table
    kept = ~_finished_before(models, job.c.chain_id, cutoffs)
    if type_names is not None:
        kept = or_(kept, job.c.chain_type_name.not_in(list(type_names)))
    stmt = (
        select(blocker.c.blocked_by_chain_id)
        .join(job, job.c.id == blocker.c.job_id)
        .where(blocker.c.blocked_by_chain_id.in_(list(chain_ids)), kept)
        .distinct()
    )
    with database_errors("check chains still needed", models):
        return set(executor.execute(stmt).scalars())


def count_by_chain_type(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> dict[str, tuple[int, int]]:
    """Per chain type of these chains: (chains, jobs). What a dry run would delete."""
    if not chain_ids:
        return {}
    job = models.job_table
    stmt = (
        select(job.c.chain_type_name, func.count(job.c.chain_id.distinct()), func.count())
        .where(job.c.chain_id.in_(list(chain_ids)))
        .group_by(job.c.chain_type_name)
    )
    with database_errors("count chains to clean up", models):
        return {row[0]: (int(row[1]), int(row[2])) for row in executor.execute(stmt)}
