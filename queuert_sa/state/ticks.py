"""SQL for recurring schedules: the open tick chains of a schedule.

A tick's chain is a chain root whose ``deduplication_key`` starts with the
schedule's prefix (``schedule:<name>:``); the open ones are found through the
open-deduplication index (chain type, key).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, RowMapping, literal_column, select

from queuert_sa.models import JobStatus, Models

from .operations import Executor, database_errors

_ROOT: ColumnElement[int] = literal_column("0")


def pending_ticks(
    executor: Executor, models: Models, *, type_name: str, key_prefix: str
) -> list[RowMapping]:
    """The pending tick chains of a schedule: ``id``, ``deduplication_key``, ``scheduled_at``."""
    table = models.job_table
    pattern = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    stmt = (
        select(table.c.id, table.c.deduplication_key, table.c.scheduled_at)
        .where(
            table.c.chain_type_name == type_name,
            table.c.chain_index == _ROOT,
            table.c.deduplication_key.like(pattern, escape="\\"),
            table.c.status == JobStatus.PENDING,
        )
        .order_by(table.c.scheduled_at)
    )
    with database_errors("read a schedule's ticks", models):
        return list(executor.execute(stmt).mappings())


def last_ticks(
    executor: Executor, models: Models, *, type_name: str, key_prefix: str, limit: int
) -> list[RowMapping]:
    """The latest tick chains of a schedule (any status), newest tick first."""
    table = models.job_table
    pattern = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    stmt = (
        select(table.c.id, table.c.deduplication_key, table.c.scheduled_at, table.c.created_at)
        .where(
            table.c.chain_type_name == type_name,
            table.c.chain_index == _ROOT,
            table.c.deduplication_key.like(pattern, escape="\\"),
        )
        .order_by(table.c.scheduled_at.desc())
        .limit(limit)
    )
    with database_errors("read a schedule's ticks", models):
        return list(executor.execute(stmt).mappings())
