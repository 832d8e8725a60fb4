"""A chain read or locked as a whole: its first job and its latest.

A chain *is* its first job (``chain_id == id``, ``chain_index == 0``); its
status is that of its latest job. Same rules as :mod:`.operations`.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import RowMapping, func, or_, select

from queuert_sa.models import Models

from .capabilities import Capabilities
from .operations import Executor, database_errors


def get_chain(
    executor: Executor, models: Models, chain_id: uuid.UUID
) -> tuple[RowMapping, RowMapping] | None:
    """(first job, latest job) of a chain in one round trip; ``None`` if no such chain."""
    table = models.job_table
    latest_index = (
        select(func.max(table.c.chain_index)).where(table.c.chain_id == chain_id).scalar_subquery()
    )
    stmt = (
        select(table)
        .where(
            table.c.chain_id == chain_id,
            or_(table.c.chain_index == 0, table.c.chain_index == latest_index),
        )
        .order_by(table.c.chain_index)
    )
    with database_errors("read chain", models):
        rows = executor.execute(stmt).mappings().all()
    if not rows or rows[0]["chain_index"] != 0 or rows[0]["id"] != chain_id:
        return None
    return rows[0], rows[-1]


def lock_chain(
    executor: Executor, models: Models, caps: Capabilities, chain_id: uuid.UUID
) -> tuple[RowMapping, RowMapping] | None:
    """(first job, latest job) of a chain, the latest locked until the transaction ends.

    The lock waits for an atomic attempt holding that job to finish. None if
    there is no such chain.
    """
    table = models.job_table
    latest = (
        select(table)
        .where(table.c.chain_id == chain_id)
        .order_by(table.c.chain_index.desc())
        .limit(1)
    )
    if caps.skip_locked:
        latest = latest.with_for_update(key_share=True)
    root = select(table).where(table.c.id == chain_id, table.c.chain_index == 0)
    newest = select(func.max(table.c.chain_index)).where(table.c.chain_id == chain_id)
    with database_errors("lock chain", models):
        latest_row = executor.execute(latest).mappings().first()
        # Waiting for the lock, the chain may have moved on (an attempt
        # continued it): read again until the locked job is the newest.
        for _ in range(100):
            if latest_row is None:
                return None
            if executor.execute(newest).scalar() == latest_row["chain_index"]:
                break
            latest_row = executor.execute(latest).mappings().first()
        if latest_row is None:
            return None
        root_row = (
            latest_row
            if latest_row["chain_index"] == 0
            else executor.execute(root).mappings().first()
        )
    if root_row is None or root_row["id"] != chain_id:
        return None
    return root_row, latest_row


def chain_trace_contexts(
    executor: Executor, models: Models, chain_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, str | None]:
    """Each chain's stored ``chain_trace_context`` (from its first job), by chain id."""
    if not chain_ids:
        return {}
    table = models.job_table
    stmt = select(table.c.id, table.c.chain_trace_context).where(
        table.c.id.in_(list(chain_ids)), table.c.chain_index == 0
    )
    with database_errors("read chain trace contexts", models):
        return {row.id: row.chain_trace_context for row in executor.execute(stmt)}
