"""queuert: indexes for keyset listings and race-safe deduplication.

Revision ID: 7c41d9e0b5a2
Revises: 2fac216ef489
Create Date: 2026-11-22

Listings page by key on ``(created_at, id)``, so the listing indexes gain
``id`` and chains can be listed by type. Deduplication looks up open chains in
an index of unfinished jobs only; continuations now inherit their chain's
``deduplication_key`` (back-filled here), and the roots' index gains
``created_at`` for windows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "7c41d9e0b5a2"
down_revision = "2fac216ef489"
branch_labels = None
depends_on = None

DEFAULT_TABLE_PREFIX = "queuert_"

_ROOT = "chain_index = 0"
_DEDUP_ROOT = "deduplication_key IS NOT NULL AND chain_index = 0"
_DEDUP_OPEN = "deduplication_key IS NOT NULL AND status <> 'completed'"

# (name, columns before, columns after, predicate); None = index absent.
_CHANGES: list[tuple[str, list[str] | None, list[str], str | None]] = [
    (
        "job_deduplication_idx",
        ["chain_type_name", "deduplication_key"],
        ["chain_type_name", "deduplication_key", "created_at"],
        _DEDUP_ROOT,
    ),
    ("job_open_deduplication_idx", None, ["chain_type_name", "deduplication_key"], _DEDUP_OPEN),
    ("chain_listing_idx", ["created_at"], ["created_at", "id"], _ROOT),
    ("chain_listing_type_name_idx", None, ["chain_type_name", "created_at", "id"], _ROOT),
    ("job_listing_idx", ["created_at"], ["created_at", "id"], None),
    ("job_listing_status_idx", ["status", "created_at"], ["status", "created_at", "id"], None),
    (
        "job_listing_type_name_idx",
        ["type_name", "created_at"],
        ["type_name", "created_at", "id"],
        None,
    ),
]


def _prefix_and_schema() -> tuple[str, str | None]:
    config = context.config
    prefix = config.get_main_option("queuert_sa.table_prefix") or DEFAULT_TABLE_PREFIX
    schema = config.get_main_option("queuert_sa.schema") or None
    if not prefix.replace("_", "").isalnum():
        raise ValueError(
            f"queuert_sa.table_prefix {prefix!r} must contain only letters, digits and underscores"
        )
    return prefix, schema


def _create(
    prefix: str, schema: str | None, name: str, columns: list[str], where: str | None
) -> None:
    partial = (
        {}
        if where is None
        else {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}
    )
    op.create_index(op.f(f"{prefix}{name}"), f"{prefix}job", columns, schema=schema, **partial)


def upgrade() -> None:
    prefix, schema = _prefix_and_schema()
    job = f"{prefix}job" if schema is None else f"{schema}.{prefix}job"
    for name, before, after, where in _CHANGES:
        if before is not None:
            op.drop_index(op.f(f"{prefix}{name}"), table_name=f"{prefix}job", schema=schema)
        _create(prefix, schema, name, after, where)
    # Continuations inherit their chain's key (earlier versions set it on roots only).
    op.execute(
        f"UPDATE {job} SET deduplication_key = (SELECT r.deduplication_key FROM {job} r "
        f"WHERE r.id = {job}.chain_id) WHERE chain_index > 0 AND deduplication_key IS NULL"
    )


def downgrade() -> None:
    prefix, schema = _prefix_and_schema()
    job = f"{prefix}job" if schema is None else f"{schema}.{prefix}job"
    op.execute(f"UPDATE {job} SET deduplication_key = NULL WHERE chain_index > 0")
    for name, before, _after, where in reversed(_CHANGES):
        op.drop_index(op.f(f"{prefix}{name}"), table_name=f"{prefix}job", schema=schema)
        if before is not None:
            _create(prefix, schema, name, before, where)
