"""SQL for the operator's overview: counts by type and status, throughput, chains by id.

Each read is one statement (or two, for chains: their first and latest
jobs), never one per row shown, and each uses an index or reads one group
per type and status.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Integer, RowMapping, bindparam, cast, func, select

from queuert_sa.models import JobStatus, Models

from .operations import Executor, database_errors
from .queries import latest_jobs


def status_counts(executor: Executor, models: Models) -> list[RowMapping]:
    """How many jobs each type has in each status: ``type_name``, ``status``, ``count``."""
    table = models.job_table
    stmt = (
        select(table.c.type_name, table.c.status, func.count().label("count"))
        .group_by(table.c.type_name, table.c.status)
        .order_by(table.c.type_name, table.c.status)
    )
    with database_errors("count jobs by status", models):
        return list(executor.execute(stmt).mappings())


def _minute(column: ColumnElement[dt.datetime], dialect: str) -> ColumnElement[Any]:
    """Minutes since the epoch of a timestamp column, as a number (whole on grouping)."""
    if dialect == "postgresql":
        return func.floor(func.extract("epoch", column) / 60)
    # SQLite keeps UTC wall-clock text; strftime('%s') reads it as seconds.
    return cast(func.strftime("%s", column), Integer) / 60


def ended_per_minute(
    executor: Executor, models: Models, *, since: dt.datetime, dialect: str
) -> dict[str, dict[int, int]]:
    """Jobs that ended since ``since``, by status and minute: ``{status: {epoch minute: count}}``.

    Reads the partial index on ``completed_at`` (ended jobs only), so its cost
    follows the jobs of the period, not the table.
    """
    table = models.job_table
    minute = _minute(table.c.completed_at, dialect).label("minute")
    rows = (
        select(table.c.status, minute)
        .where(
            table.c.completed_at >= bindparam("since", since, type_=table.c.completed_at.type),
            table.c.completed_at.is_not(None),
        )
        .subquery("ended")
    )
    stmt = select(rows.c.status, rows.c.minute, func.count().label("count")).group_by(
        rows.c.status, rows.c.minute
    )
    found: dict[str, dict[int, int]] = defaultdict(dict)
    with database_errors("count ended jobs per minute", models):
        for row in executor.execute(stmt).mappings():
            found[JobStatus(row["status"]).value][int(row["minute"])] = int(row["count"])
    return dict(found)


def chains_by_id(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[RowMapping, RowMapping]]:
    """(first job, latest job) of each of these chains that exists, in two statements."""
    if not chain_ids:
        return {}
    table = models.job_table
    stmt = select(table).where(table.c.id.in_(list(chain_ids)), table.c.chain_index == 0)
    with database_errors("read chains", models):
        roots = {row["id"]: row for row in executor.execute(stmt).mappings()}
    latest = latest_jobs(executor, models, list(roots))
    return {chain_id: (root, latest.get(chain_id, root)) for chain_id, root in roots.items()}


def blockers_of_jobs(
    executor: Executor, models: Models, job_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The blocker chain ids of each of these jobs, in slot order (jobs without any left out)."""
    if not job_ids:
        return {}
    blocker = models.job_blocker_table
    stmt = (
        select(blocker.c.job_id, blocker.c.blocked_by_chain_id)
        .where(blocker.c.job_id.in_(list(job_ids)))
        .order_by(blocker.c.job_id, blocker.c.index)
    )
    found: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    with database_errors("read blockers", models):
        for row in executor.execute(stmt).mappings():
            found[row["job_id"]].append(row["blocked_by_chain_id"])
    return dict(found)
