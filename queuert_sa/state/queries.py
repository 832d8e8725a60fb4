"""SQL for the listings (keyset-paginated reads of chains and jobs) and the backlog count.

Every listing orders by a unique key (``(created_at, id)``, or ``chain_index``
within a chain) and continues strictly after the last row of the previous
page, so rows inserted or deleted meanwhile never shift a page. Each fetches
``limit + 1`` rows to know whether another page follows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    tuple_,
)

from queuert_sa.models import JobStatus, Models

from .operations import Executor, database_errors

Order = Literal["asc", "desc"]

_ROOT: ColumnElement[int] = literal_column("0")


@dataclass(frozen=True, kw_only=True)
class Filters:
    """What a chain or job listing is narrowed to; ``None`` means no condition."""

    type_names: Sequence[str] | None = None
    chain_type_names: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    chain_ids: Sequence[uuid.UUID] | None = None
    job_ids: Sequence[uuid.UUID] | None = None
    created_since: dt.datetime | None = None
    created_before: dt.datetime | None = None
    roots_only: bool = False


def _keyset(
    table: Table, order: Order, after: tuple[dt.datetime, uuid.UUID] | None
) -> list[ColumnElement[bool]]:
    if after is None:
        return []
    key = tuple_(table.c.created_at, table.c.id)
    bound = tuple_(_bound(after[0], table.c.created_at), _bound(after[1], table.c.id))
    return [key > bound] if order == "asc" else [key < bound]


def _bound(value: Any, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``value`` bound with ``column``'s type (so UUIDs and aware datetimes convert)."""
    return bindparam(None, value, type_=column.type)


def _ordered(stmt: Select[Any], table: Table, order: Order, limit: int) -> Select[Any]:
    if order == "asc":
        return stmt.order_by(table.c.created_at, table.c.id).limit(limit + 1)
    return stmt.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)


def _created(table: Table, filters: Filters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.created_since is not None:
        conditions.append(table.c.created_at >= filters.created_since)
    if filters.created_before is not None:
        conditions.append(table.c.created_at < filters.created_before)
    return conditions


def latest_jobs(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, RowMapping]:
    """The latest job (highest ``chain_index``) of each of these chains."""
    if not chain_ids:
        return {}
    table = models.job_table
    newer = table.alias("newer")
    stmt = select(table).where(
        table.c.chain_id.in_(list(chain_ids)),
        table.c.chain_index
        == select(func.max(newer.c.chain_index))
        .where(newer.c.chain_id == table.c.chain_id)
        .scalar_subquery(),
    )
    with database_errors("read latest jobs", models):
        return {row["chain_id"]: row for row in executor.execute(stmt).mappings()}


def list_chains(
    executor: Executor,
    models: Models,
    *,
    filters: Filters,
    order: Order,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[tuple[RowMapping, RowMapping]]:
    """Up to ``limit + 1`` chains as (first job, latest job), by the root's ``(created_at, id)``.

    ``type_names`` filters the chain's type; ``statuses`` the latest job's
    status (evaluated per chain, not from an index); ``job_ids`` the chains
    containing those jobs; ``roots_only`` keeps the chains no job declares as a
    blocker (a NOT EXISTS on the blocker table's ``blocked_by_chain_id`` index).
    """
    table = models.job_table
    conditions = [table.c.chain_index == _ROOT, *_created(table, filters)]
    conditions += _keyset(table, order, after)
    if filters.type_names is not None:
        conditions.append(table.c.chain_type_name.in_(list(filters.type_names)))
    if filters.chain_ids is not None:
        conditions.append(table.c.id.in_(list(filters.chain_ids)))
    if filters.job_ids is not None:
        member = table.alias("member")
        conditions.append(
            table.c.id.in_(select(member.c.chain_id).where(member.c.id.in_(list(filters.job_ids))))
        )
    if filters.roots_only:
        blocker = models.job_blocker_table
        conditions.append(
            ~select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id == table.c.id).exists()
        )
    if filters.statuses is not None:
        latest = table.alias("latest")
        status = (
            select(latest.c.status)
            .where(latest.c.chain_id == table.c.id)
            .order_by(latest.c.chain_index.desc())
            .limit(1)
            .scalar_subquery()
        )
        conditions.append(status.in_(list(filters.statuses)))
    stmt = _ordered(select(table).where(*conditions), table, order, limit)
    with database_errors("list chains", models):
        roots = list(executor.execute(stmt).mappings())
    latest_rows = latest_jobs(executor, models, [row["id"] for row in roots])
    return [(root, latest_rows.get(root["id"], root)) for root in roots]


def list_jobs(
    executor: Executor,
    models: Models,
    *,
    filters: Filters,
    order: Order,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[RowMapping]:
    """Up to ``limit + 1`` jobs by ``(created_at, id)``."""
    table = models.job_table
    conditions = [*_created(table, filters), *_keyset(table, order, after)]
    if filters.type_names is not None:
        conditions.append(table.c.type_name.in_(list(filters.type_names)))
    if filters.chain_type_names is not None:
        conditions.append(table.c.chain_type_name.in_(list(filters.chain_type_names)))
    if filters.statuses is not None:
        conditions.append(table.c.status.in_(list(filters.statuses)))
    if filters.chain_ids is not None:
        conditions.append(table.c.chain_id.in_(list(filters.chain_ids)))
    if filters.job_ids is not None:
        conditions.append(table.c.id.in_(list(filters.job_ids)))
    stmt = _ordered(select(table).where(*conditions), table, order, limit)
    with database_errors("list jobs", models):
        return list(executor.execute(stmt).mappings())


def list_chain_jobs(
    executor: Executor,
    models: Models,
    *,
    chain_id: uuid.UUID,
    order: Order,
    after: int | None,
    limit: int,
) -> list[RowMapping]:
    """Up to ``limit + 1`` jobs of one chain by ``chain_index``."""
    table = models.job_table
    conditions: list[ColumnElement[bool]] = [table.c.chain_id == chain_id]
    stmt = select(table)
    if order == "asc":
        if after is not None:
            conditions.append(table.c.chain_index > after)
        stmt = stmt.where(*conditions).order_by(table.c.chain_index)
    else:
        if after is not None:
            conditions.append(table.c.chain_index < after)
        stmt = stmt.where(*conditions).order_by(table.c.chain_index.desc())
    with database_errors("list chain jobs", models):
        return list(executor.execute(stmt.limit(limit + 1)).mappings())


def list_blocked_jobs(
    executor: Executor,
    models: Models,
    *,
    chain_id: uuid.UUID,
    order: Order,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[RowMapping]:
    """Up to ``limit + 1`` jobs that declare ``chain_id`` as a blocker (kept after unblocking)."""
    table, blocker = models.job_table, models.job_blocker_table
    stmt = (
        select(table)
        .join(blocker, blocker.c.job_id == table.c.id)
        .where(blocker.c.blocked_by_chain_id == chain_id, *_keyset(table, order, after))
    )
    with database_errors("list blocked jobs", models):
        return list(executor.execute(_ordered(stmt, table, order, limit)).mappings())


#: The open statuses the backlog counts (terminal jobs are history, not backlog).
_OPEN_STATUSES = (JobStatus.PENDING, JobStatus.BLOCKED, JobStatus.RUNNING)


def backlog(executor: Executor, models: Models, *, now: dt.datetime) -> list[RowMapping]:
    """Open jobs by type and state in one statement: ``type_name``, ``state``, ``count``, ``oldest``.

    ``state`` is ``ready`` (pending and due), ``scheduled`` (pending, due
    later), ``blocked`` or ``running``; ``oldest`` the earliest ``scheduled_at``
    of the group (for ``ready``: when the longest-waiting job became due).
    """
    table = models.job_table
    at = bindparam("now", now, type_=table.c.scheduled_at.type)
    state = case(
        (and_(table.c.status == JobStatus.PENDING, table.c.scheduled_at <= at), "ready"),
        (table.c.status == JobStatus.PENDING, "scheduled"),
        else_=cast(table.c.status, String),
    ).label("state")
    # Grouped in an outer query: PostgreSQL would not match a GROUP BY
    # expression holding a parameter to the same one in the select list.
    rows = (
        select(table.c.type_name, state, table.c.scheduled_at)
        .where(table.c.status.in_(_OPEN_STATUSES))
        .subquery("open_jobs")
    )
    stmt = (
        select(
            rows.c.type_name,
            rows.c.state,
            func.count().label("count"),
            func.min(rows.c.scheduled_at).label("oldest"),
        )
        .group_by(rows.c.type_name, rows.c.state)
        .order_by(rows.c.type_name, rows.c.state)
    )
    with database_errors("count the backlog", models):
        return list(executor.execute(stmt).mappings())


def waiting_untaken(
    executor: Executor, models: Models, *, handled: Collection[str], due_before: dt.datetime
) -> list[RowMapping]:
    """Pending jobs due since before ``due_before``, of types not in ``handled``, by type.

    One statement over the acquisition index (pending jobs only): ``type_name``,
    ``count``, ``oldest`` (the earliest ``scheduled_at``), by type name.
    """
    table = models.job_table
    stmt = (
        select(
            table.c.type_name,
            func.count().label("count"),
            func.min(table.c.scheduled_at).label("oldest"),
        )
        .where(table.c.status == JobStatus.PENDING, table.c.scheduled_at < due_before)
        .group_by(table.c.type_name)
        .order_by(table.c.type_name)
    )
    if handled:
        stmt = stmt.where(table.c.type_name.not_in(sorted(handled)))
    with database_errors("count the jobs no worker takes", models):
        return list(executor.execute(stmt).mappings())
