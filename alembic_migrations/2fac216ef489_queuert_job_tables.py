"""queuert: create the job and job blocker tables.

Revision ID: 2fac216ef489
Revises:
Create Date: 2026-11-22

First revision of queuert_sa's own Alembic branch (label ``queuert``). The
table prefix and schema come from the Alembic config's main options
``queuert_sa.table_prefix`` (default ``queuert_``) and ``queuert_sa.schema``
(default: the connection's default schema); they must not change once the
tables exist.

Frozen in time: the DDL is spelled out here rather than taken from
``queuert_sa.models``, so later changes to the models arrive as new revisions.
Every name goes through ``op.f()`` so that the application's own
``naming_convention`` (which Alembic applies to ``op`` calls) cannot rename
queuert's constraints.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "2fac216ef489"
down_revision = None
branch_labels = ("queuert",)
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


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    prefix, schema = _prefix_and_schema()
    job = f"{prefix}job"
    blocker = f"{prefix}job_blocker"
    job_id = f"{schema}.{job}.id" if schema else f"{job}.id"

    op.create_table(
        job,
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type_name", sa.String(255), nullable=False),
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("chain_type_name", sa.String(255), nullable=False),
        sa.Column("chain_index", sa.Integer(), nullable=False),
        sa.Column("input", _json(), nullable=True),
        sa.Column("output", _json(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_by", sa.String(255), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_error", sa.Text(), nullable=True),
        sa.Column("leased_by", sa.String(255), nullable=True),
        sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deduplication_key", sa.String(255), nullable=True),
        sa.Column("trace_context", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{job}")),
        sa.ForeignKeyConstraint(["chain_id"], [job_id], name=op.f(f"fk_{job}_chain_id")),
        sa.CheckConstraint(
            "status IN ('blocked', 'pending', 'running', 'completed')",
            name=op.f(f"ck_{job}_status"),
        ),
        schema=schema,
    )

    def index(
        name: str, columns: list[str], *, where: str | None = None, unique: bool = False
    ) -> None:
        # One predicate for both dialects that support partial indexes.
        partial: dict[str, Any] = {}
        if where is not None:
            partial = {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}
        op.create_index(op.f(name), job, columns, unique=unique, schema=schema, **partial)

    # Also the race guard that makes continue_with idempotent.
    index(f"{prefix}chain_index_idx", ["chain_id", "chain_index"], unique=True)
    index(
        f"{prefix}job_acquisition_idx",
        ["type_name", "scheduled_at", "id"],
        where="status = 'pending'",
    )
    index(
        f"{prefix}job_expired_lease_idx",
        ["type_name", "leased_until"],
        where="status = 'running' AND leased_until IS NOT NULL",
    )
    index(
        f"{prefix}job_deduplication_idx",
        ["chain_type_name", "deduplication_key"],
        where="deduplication_key IS NOT NULL AND chain_index = 0",
    )
    index(f"{prefix}chain_listing_idx", ["created_at"], where="chain_index = 0")
    index(f"{prefix}job_listing_idx", ["created_at"])
    index(f"{prefix}job_listing_status_idx", ["status", "created_at"])
    index(f"{prefix}job_listing_type_name_idx", ["type_name", "created_at"])

    op.create_table(
        blocker,
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("blocked_by_chain_id", sa.Uuid(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("trace_context", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "blocked_by_chain_id", name=op.f(f"pk_{blocker}")),
        sa.ForeignKeyConstraint(["job_id"], [job_id], name=op.f(f"fk_{blocker}_job_id")),
        sa.ForeignKeyConstraint(
            ["blocked_by_chain_id"], [job_id], name=op.f(f"fk_{blocker}_blocked_by_chain_id")
        ),
        schema=schema,
    )
    op.create_index(
        op.f(f"{prefix}job_blocker_chain_idx"), blocker, ["blocked_by_chain_id"], schema=schema
    )


def downgrade() -> None:
    prefix, schema = _prefix_and_schema()
    # Dropping a table drops its indexes; the blocker table references the job table.
    op.drop_table(f"{prefix}job_blocker", schema=schema)
    op.drop_table(f"{prefix}job", schema=schema)
