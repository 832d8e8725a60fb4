"""Blockers: chains a job waits for, attached, read and released.

A job may wait for other chains (its blockers, one per slot); it starts
``blocked`` until all of them complete. Here: reading the blocker chains
(locking them, so "is it completed?" and attaching a dependent are one step),
attaching them, listing a job's blockers, and unblocking the dependents of a
chain that completed. Same rules as :mod:`.operations`.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import RowMapping, Select, Update, bindparam, case, func, select, update

from queuert_sa.models import JobStatus, Models

from .capabilities import Capabilities
from .operations import Executor, database_errors


def read_blocker_chains(
    executor: Executor, models: Models, caps: Capabilities, chain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, bool]]:
    """For each existing chain: (its type, whether it is completed), locking its latest job.

    The lock makes "is it completed?" and the attaching of a dependent one
    step: a blocker completing at this moment either finishes first (and is
    seen completed) or waits for the caller's commit (and then sees the
    dependent and unblocks it). A chain that moved on while we waited for the
    lock is read again.
    """
    table = models.job_table
    ids = list(chain_ids)
    roots = select(table.c.id, table.c.type_name).where(
        table.c.id.in_(ids), table.c.chain_index == 0
    )
    inner = table.alias("newer")
    latest = (
        select(table.c.chain_id, table.c.chain_index, table.c.status)
        .where(
            table.c.chain_id.in_(ids),
            table.c.chain_index
            == select(func.max(inner.c.chain_index))
            .where(inner.c.chain_id == table.c.chain_id)
            .scalar_subquery(),
        )
        .order_by(table.c.id)
    )
    if caps.skip_locked:
        latest = latest.with_for_update(key_share=True)
    newest = (
        select(table.c.chain_id, func.max(table.c.chain_index))
        .where(table.c.chain_id.in_(ids))
        .group_by(table.c.chain_id)
    )
    locked: dict[uuid.UUID, tuple[int, bool]] = {}
    with database_errors("read blocker chains", models):
        types: dict[uuid.UUID, str] = {row.id: row.type_name for row in executor.execute(roots)}
        for _ in range(100):
            locked = {
                row.chain_id: (row.chain_index, row.status == JobStatus.COMPLETED)
                for row in executor.execute(latest)
            }
            current = {row[0]: row[1] for row in executor.execute(newest)}
            if all(locked[c][0] == i for c, i in current.items() if c in locked):
                break
    return {
        chain_id: (type_name, locked[chain_id][1])
        for chain_id, type_name in types.items()
        if chain_id in locked
    }


def insert_blockers(
    executor: Executor, models: Models, rows: Sequence[tuple[uuid.UUID, uuid.UUID, int]]
) -> None:
    """Attach blocker chains to jobs: ``(job_id, blocked_by_chain_id, slot index)`` rows."""
    if not rows:
        return
    table = models.job_blocker_table
    with database_errors("attach blockers", models):
        executor.execute(
            table.insert(),
            [{"job_id": j, "blocked_by_chain_id": c, "index": i} for j, c, i in rows],
        )


def blocker_chain_ids(executor: Executor, models: Models, job_id: uuid.UUID) -> list[uuid.UUID]:
    """The chains a job waits for, in slot order."""
    table = models.job_blocker_table
    stmt = (
        select(table.c.blocked_by_chain_id).where(table.c.job_id == job_id).order_by(table.c.index)
    )
    with database_errors("read blockers", models):
        return list(executor.execute(stmt).scalars())


@functools.cache
def _unblock_statements(models: Models, row_locks: bool) -> tuple[Select[Any], Select[Any], Update]:
    # Built once per set of tables: constructing these correlated statements
    # costs more than running them.
    job = models.job_table
    blocker = models.job_blocker_table
    chain_ids = bindparam("chain_ids", expanding=True, type_=job.c.chain_id.type)
    # First the blocker rows of these chains (their index), then those jobs:
    # in one statement SQLite walks every blocked job instead.
    find = select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id.in_(chain_ids))
    waiting = bindparam("waiting", expanding=True, type_=job.c.id.type)
    lock = (
        select(job.c.id)
        .where(job.c.id.in_(waiting), job.c.status == JobStatus.BLOCKED)
        .order_by(job.c.id)
    )
    if row_locks:
        lock = lock.with_for_update(key_share=True)
    slot = blocker.alias("slot")
    last = job.alias("last")
    newer = job.alias("newer")
    slot_done = (
        select(last.c.id)
        .where(
            last.c.chain_id == slot.c.blocked_by_chain_id,
            last.c.status == JobStatus.COMPLETED,
            # Correlated to ``last`` (the enclosing query's table), not to
            # ``slot``: a subquery two levels down would not correlate to it and
            # would take the maximum over every blocker chain.
            last.c.chain_index
            == select(func.max(newer.c.chain_index))
            .where(newer.c.chain_id == last.c.chain_id)
            .scalar_subquery(),
        )
        .exists()
    )
    open_slot = select(slot.c.job_id).where(slot.c.job_id == job.c.id, ~slot_done).exists()
    now = bindparam("now", type_=job.c.scheduled_at.type)
    ids = bindparam("ids", expanding=True, type_=job.c.id.type)
    unblock = (
        update(job)
        .where(job.c.id.in_(ids), job.c.status == JobStatus.BLOCKED, ~open_slot)
        .values(
            status=JobStatus.PENDING,
            scheduled_at=case((job.c.scheduled_at < now, now), else_=job.c.scheduled_at),
        )
        .returning(job.c.id, job.c.type_name, job.c.chain_id, job.c.chain_type_name, job.c.attempt)
    )
    return find, lock, unblock


def unblock_dependents(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    chain_ids: Sequence[uuid.UUID],
    now: dt.datetime,
) -> list[RowMapping]:
    """After ``chain_ids`` completed: make pending every blocked job whose blockers are all done.

    Returns ``id``, ``type_name``, ``chain_id``, ``chain_type_name`` and
    ``attempt`` of the jobs unblocked. The dependents of
    all the chains are locked first, in one statement and in id order, so two
    blockers completing in parallel transactions cannot both miss each other
    (the second waits, then sees the first committed), nor lock the same
    dependents in opposite orders.
    """
    find, lock, unblock = _unblock_statements(models, caps.skip_locked)
    with database_errors("unblock dependents", models):
        # A job waiting on two of these chains comes once per chain.
        waiting = set(executor.execute(find, {"chain_ids": list(chain_ids)}).scalars())
        if not waiting:
            return []
        ids = list(executor.execute(lock, {"waiting": sorted(waiting)}).scalars())
        if not ids:
            return []
        return list(executor.execute(unblock, {"ids": ids, "now": now}).mappings())
