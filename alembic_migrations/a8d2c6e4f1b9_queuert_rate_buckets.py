"""queuert: token buckets for rate-limited job types.

Revision ID: a8d2c6e4f1b9
Revises: f3c9a7d1e2b4
Create Date: 2026-12-02

A handler declared with ``rate=q.Rate(14, per=timedelta(seconds=1))`` takes a
token from its type's bucket (or from its key's, for a per-key rate) before
an attempt runs; a job that finds none is delayed until one is due. The
bucket rows are shared by every worker: the limit holds across the fleet. A
small table, one row per limited type (or key), written in short
transactions of their own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "a8d2c6e4f1b9"
down_revision = "f3c9a7d1e2b4"
branch_labels = None
depends_on = None

DEFAULT_TABLE_PREFIX = "queuert_"


def _prefix_and_schema() -> tuple[str, str | None]:
    config = context.config
    prefix = config.get_main_option("queuert_sa.table_prefix") or DEFAULT_TABLE_PREFIX
    schema = config.get_main_option("queuert_sa.schema") or None
    if not prefix.replace("_", "").isalnum():
        raise ValueError(
            f"queuert_sa.table_prefix {prefix!r} must contain only letters, digits and underscores"
        )
    return prefix, schema


def upgrade() -> None:
    prefix, schema = _prefix_and_schema()
    op.create_table(
        f"{prefix}rate_bucket",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=f"pk_{prefix}rate_bucket"),
        schema=schema,
    )


def downgrade() -> None:
    prefix, schema = _prefix_and_schema()
    op.drop_table(f"{prefix}rate_bucket", schema=schema)
