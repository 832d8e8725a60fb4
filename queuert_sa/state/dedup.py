"""Deduplication: serialising starts with the same key, and finding the duplicate.

Same rules as :mod:`.operations`. Constants that partial indexes are defined
with (``chain_index = 0``, ``status <> 'completed'``) are written as SQL
literals, not bound parameters, so both PostgreSQL and SQLite can prove the
index predicate and use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Collection

from sqlalchemy import ColumnElement, exists, literal_column, select, text

from queuert_sa.models import Models

from .capabilities import Capabilities
from .operations import Executor, database_errors, take_write_lock

_ROOT: ColumnElement[int] = literal_column("0")
_COMPLETED: ColumnElement[str] = literal_column("'completed'")
#: Ended without completing: no longer open, yet inside the open index's predicate.
_ENDED: tuple[ColumnElement[str], ...] = (literal_column("'failed'"), literal_column("'cancelled'"))


def dedup_lock_key(models: Models, chain_type_name: str, key: str) -> int:
    """A stable signed 64-bit advisory-lock key for (table, chain type, dedup key)."""
    table = models.job_table
    name = f"{table.schema or ''}.{table.name}\0{chain_type_name}\0{key}".encode()
    digest = hashlib.blake2b(name, digest_size=8, person=b"queuert-dedup").digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_dedup_keys(
    executor: Executor, models: Models, caps: Capabilities, keys: Collection[tuple[str, str]]
) -> str | None:
    """Serialise transactions starting chains with these (chain type, key) pairs.

    PostgreSQL: a transaction-scoped advisory lock per pair, taken in a fixed
    order (no deadlock between two batches); the second transaction waits until
    the first commits or rolls back, then sees its chain. Returns the
    transaction's isolation level (deduplication needs READ COMMITTED, so that
    the lookup after the wait sees the committed chain). SQLite: the write lock.
    """
    if caps.single_writer:
        take_write_lock(executor, models, caps)
        return None
    isolation: str | None = None
    stmt = text("SELECT pg_advisory_xact_lock(:key), current_setting('transaction_isolation')")
    with database_errors("lock deduplication keys", models):
        for lock_key in sorted({dedup_lock_key(models, t, k) for t, k in keys}):
            isolation = executor.execute(stmt, {"key": lock_key}).one()[1]
    return isolation


def find_duplicate(
    executor: Executor,
    models: Models,
    *,
    chain_type_name: str,
    key: str,
    scope: str,
    since: dt.datetime | None,
    exclude: Collection[uuid.UUID],
) -> uuid.UUID | None:
    """The id of a chain that a start with this dedup key duplicates, if any.

    ``open``: a chain with an unfinished job (its latest; continuations carry
    the key), found in the index of unfinished keyed jobs; a failed or
    cancelled chain is not open (until ``retry_job`` revives it). ``any``: the newest
    chain root with the key. ``since`` bounds the chain's start (its root's
    ``created_at``); ``exclude`` chains never match.
    """
    table = models.job_table
    if scope == "open":
        conditions: list[ColumnElement[bool]] = [
            table.c.chain_type_name == chain_type_name,
            table.c.deduplication_key == key,
            table.c.status != _COMPLETED,
            table.c.status.not_in(_ENDED),
        ]
        if exclude:
            conditions.append(table.c.chain_id.not_in(list(exclude)))
        if since is not None:
            root = table.alias("root")
            conditions.append(
                exists().where(root.c.id == table.c.chain_id, root.c.created_at >= since)
            )
        stmt = select(table.c.chain_id).where(*conditions).limit(1)
    else:
        conditions = [
            table.c.chain_type_name == chain_type_name,
            table.c.deduplication_key == key,
            table.c.chain_index == _ROOT,
        ]
        if exclude:
            conditions.append(table.c.id.not_in(list(exclude)))
        if since is not None:
            conditions.append(table.c.created_at >= since)
        stmt = (
            select(table.c.id)
            .where(*conditions)
            .order_by(table.c.created_at.desc(), table.c.id.desc())
            .limit(1)
        )
    with database_errors("look up duplicate chain", models):
        return executor.execute(stmt).scalar()
