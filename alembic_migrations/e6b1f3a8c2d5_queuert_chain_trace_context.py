"""queuert: the trace context of a chain, shared by its jobs.

Revision ID: e6b1f3a8c2d5
Revises: d4a7c2e9f1b3
Create Date: 2026-12-02

``chain_trace_context`` holds the W3C ``traceparent`` of the span that created
the chain (an observer's, e.g. OpenTelemetry's), copied into every job of the
chain, so that a continuation's span is a sibling of the first job's under
the chain's span however many processes the chain crosses. Existing rows get
NULL: their later jobs are traced from their own job's context alone.

A nullable column without a default: a metadata-only change on PostgreSQL and
SQLite alike (no table rewrite).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "e6b1f3a8c2d5"
down_revision = "d4a7c2e9f1b3"
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
    op.add_column(
        f"{prefix}job",
        sa.Column("chain_trace_context", sa.String(255), nullable=True),
        schema=schema,
    )


def downgrade() -> None:
    prefix, schema = _prefix_and_schema()
    with op.batch_alter_table(f"{prefix}job", schema=schema) as batch:
        batch.drop_column("chain_trace_context")
