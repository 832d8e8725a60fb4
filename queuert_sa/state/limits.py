"""SQL for fleet-wide limits: may this acquired job run, with ``max_running`` of its type
running already; and the token buckets of rate-limited types (``q.Rate``).

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

import datetime as dt
import hashlib
import uuid
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

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


def take_token(
    executor: Executor,
    models: Models,
    caps: Capabilities,
    *,
    name: str,
    burst: int,
    per_second: float,
    now: float,
) -> float:
    """Take one token from bucket ``name`` (made full if new); 0.0, or the seconds until one is due.

    ``now`` is in seconds since the epoch. On PostgreSQL the bucket row is
    locked for the rest of the transaction: run it in a short one of its own.
    """
    table = models.rate_bucket_table
    new = {"name": name, "tokens": float(burst), "updated": now}
    if caps.single_writer:
        insert: Any = sqlite_insert(table).values(new).on_conflict_do_nothing()
    else:
        insert = pg_insert(table).values(new).on_conflict_do_nothing()
    current = select(table.c.tokens, table.c.updated).where(table.c.name == name)
    locked = current.with_for_update() if caps.skip_locked else current
    with database_errors("take a rate-limit token", models):
        found = executor.execute(current).first()
        if found is None:
            executor.execute(insert)
        else:
            # Most callers of a busy bucket find no token: they answer from a plain read,
            # so only the callers that may get one queue for the row's lock.
            had, at = float(found.tokens), float(found.updated)
            ahead = min(float(burst), had + max(0.0, now - at) * per_second)
            if ahead < 1.0:
                return (1.0 - ahead) / per_second
        tokens, updated = executor.execute(locked).one()
        tokens = min(float(burst), tokens + max(0.0, now - updated) * per_second)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / per_second
        values = {"tokens": tokens, "updated": max(now, updated)}
        executor.execute(update(table).where(table.c.name == name).values(values))
    return wait


def delay_job(executor: Executor, models: Models, *, job_id: uuid.UUID, until: dt.datetime) -> None:
    """Make a pending job due at ``until`` (a rate limit's next token), if it is still pending."""
    table = models.job_table
    stmt = (
        update(table)
        .where(table.c.id == job_id, table.c.status == JobStatus.PENDING)
        .values(scheduled_at=until)
    )
    with database_errors("delay a rate-limited job", models):
        executor.execute(stmt)
