"""SQL for fleet-wide concurrency limits: may this acquired job run, with ``max_running`` of its type?

Attempts of a type running anywhere are of two kinds. An atomic attempt's
``running`` row is not committed, so other workers cannot see it; a staged
attempt's is, once its ``prepare()`` committed. So, on PostgreSQL, the
acquiring transaction of a limited type first takes one of the type's
``max_running`` slot locks (transaction-scoped advisory locks: held by every
atomic attempt until it ends, and by every acquisition until it commits),
then counts the slot locks held and the committed running rows of the type:
if the two together exceed the limit, the job may not run. An acquirer that
commits becomes visible before its lock goes, so the count can only be too
high for a moment, never too low. On SQLite one writer at a time holds the
database, so counting the committed running rows under the write lock is
exact.
"""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import func, select, text

from queuert_sa.models import JobStatus, Models

from .capabilities import Capabilities
from .operations import Executor, database_errors

_TAKE_SLOT = text(
    "SELECT (SELECT k FROM generate_series(0, :slots - 1) AS k "
    "WHERE pg_try_advisory_xact_lock(:space, k) LIMIT 1) AS slot"
)

_HELD_SLOTS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND classid = CAST(:space AS oid) AND objsubid = 2 AND objid < CAST(:slots AS oid) "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def slot_space(models: Models, type_name: str) -> int:
    """The advisory-lock space of a type's slots: a stable non-negative 31-bit number."""
    table = models.job_table
    name = f"{table.schema or ''}.{table.name}\0{type_name}".encode()
    digest = hashlib.blake2b(name, digest_size=4, person=b"queuert-limit").digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def may_run(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    job_id: uuid.UUID,
    type_name: str,
    max_running: int,
) -> bool:
    """Whether the job just acquired (``running`` in this transaction) keeps within the limit.

    On PostgreSQL a True answer holds a slot lock until the transaction ends.
    """
    table = models.job_table
    others = (
        select(func.count())
        .select_from(table)
        .where(
            table.c.type_name == type_name,
            table.c.status == JobStatus.RUNNING,
            table.c.id != job_id,
        )
    )
    with database_errors("check a concurrency limit", models):
        if caps.single_writer:
            return int(executor.execute(others).scalar_one()) < max_running
        space = slot_space(models, type_name)
        params = {"space": space, "slots": max_running}
        if executor.execute(_TAKE_SLOT, params).scalar_one() is None:
            return False  # every slot is held: that many attempts are being acquired or run
        held = int(executor.execute(_HELD_SLOTS, params).scalar_one())
        return held + int(executor.execute(others).scalar_one()) <= max_running
