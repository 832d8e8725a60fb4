"""queuert: failed and cancelled jobs, priorities.

Revision ID: d4a7c2e9f1b3
Revises: b5d3e8a1c4f7
Create Date: 2026-12-02

Two terminal statuses join ``completed``: ``failed`` (the last allowed
attempt failed, or the handler raised ``Fail``) and ``cancelled``
(``cancel_chain``), with the reason a chain was cancelled in
``cancel_reason``. Jobs gain a ``priority`` (higher runs first; existing rows
get 0, as before) and the acquisition index orders by it, then by due time.

On SQLite, changing the status CHECK constraint rebuilds the job table
(Alembic's batch mode): its rows and indexes are copied, which takes a while
on a large table and holds the write lock meanwhile.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "d4a7c2e9f1b3"
down_revision = "b5d3e8a1c4f7"
branch_labels = None
depends_on = None

DEFAULT_TABLE_PREFIX = "queuert_"

_BEFORE = ("blocked", "pending", "running", "completed")
_AFTER = (*_BEFORE, "failed", "cancelled")
_PENDING = "status = 'pending'"
_LEASED = "status = 'running' AND leased_until IS NOT NULL"
_DEDUP = "deduplication_key IS NOT NULL AND chain_index = 0"
_OPEN = "deduplication_key IS NOT NULL AND status <> 'completed'"


def _prefix_and_schema() -> tuple[str, str | None]:
    config = context.config
    prefix = config.get_main_option("queuert_sa.table_prefix") or DEFAULT_TABLE_PREFIX
    schema = config.get_main_option("queuert_sa.schema") or None
    if not prefix.replace("_", "").isalnum():
        raise ValueError(
            f"queuert_sa.table_prefix {prefix!r} must contain only letters, digits and underscores"
        )
    return prefix, schema


def _statuses(values: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def _acquisition_index(prefix: str, schema: str | None, columns: list[str | sa.TextClause]) -> None:
    op.create_index(
        op.f(f"{prefix}job_acquisition_idx"),
        f"{prefix}job",
        columns,
        schema=schema,
        postgresql_where=sa.text(_PENDING),
        sqlite_where=sa.text(_PENDING),
    )


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _table_before(prefix: str, schema: str | None) -> sa.Table | None:
    """The job table as revision b5d3e8a1c4f7 left it, for SQLite's offline SQL.

    Online, batch mode reads the table from the database; offline there is no
    database to read, so its rebuild is spelled out from this definition.
    """
    if not (context.is_offline_mode() and op.get_context().dialect.name == "sqlite"):
        return None
    job = f"{prefix}job"
    ref = f"{schema}.{job}.id" if schema else f"{job}.id"
    text = sa.String(255)
    when = sa.DateTime(timezone=True)
    table = sa.Table(
        job,
        sa.MetaData(),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type_name", text, nullable=False),
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("chain_type_name", text, nullable=False),
        sa.Column("chain_index", sa.Integer(), nullable=False),
        sa.Column("input", _json(), nullable=True),
        sa.Column("output", _json(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("scheduled_at", when, nullable=False),
        sa.Column("completed_at", when, nullable=True),
        sa.Column("completed_by", text, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", when, nullable=True),
        sa.Column("last_attempt_error", sa.Text(), nullable=True),
        sa.Column("leased_by", text, nullable=True),
        sa.Column("leased_until", when, nullable=True),
        sa.Column("deduplication_key", text, nullable=True),
        sa.Column("trace_context", text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{job}")),
        sa.ForeignKeyConstraint(["chain_id"], [ref], name=op.f(f"fk_{job}_chain_id")),
        sa.CheckConstraint(_statuses(_BEFORE), name=op.f(f"ck_{job}_status")),
        schema=schema,
    )
    for name, columns, where, unique in (
        ("chain_index_idx", ["chain_id", "chain_index"], None, True),
        ("job_expired_lease_idx", ["type_name", "leased_until"], _LEASED, False),
        (
            "job_deduplication_idx",
            ["chain_type_name", "deduplication_key", "created_at"],
            _DEDUP,
            False,
        ),
        ("job_open_deduplication_idx", ["chain_type_name", "deduplication_key"], _OPEN, False),
        ("chain_listing_idx", ["created_at", "id"], "chain_index = 0", False),
        (
            "chain_listing_type_name_idx",
            ["chain_type_name", "created_at", "id"],
            "chain_index = 0",
            False,
        ),
        ("job_listing_idx", ["created_at", "id"], None, False),
        ("job_listing_status_idx", ["status", "created_at", "id"], None, False),
        ("job_listing_type_name_idx", ["type_name", "created_at", "id"], None, False),
    ):
        partial = {} if where is None else {"sqlite_where": sa.text(where)}
        sa.Index(op.f(f"{prefix}{name}"), *(table.c[c] for c in columns), unique=unique, **partial)
    return table


def upgrade() -> None:
    prefix, schema = _prefix_and_schema()
    job = f"{prefix}job"
    op.drop_index(op.f(f"{prefix}job_acquisition_idx"), table_name=job, schema=schema)
    with op.batch_alter_table(job, schema=schema, copy_from=_table_before(prefix, schema)) as batch:
        batch.add_column(
            sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("cancel_reason", sa.Text(), nullable=True))
        batch.drop_constraint(op.f(f"ck_{job}_status"), type_="check")
        batch.create_check_constraint(op.f(f"ck_{job}_status"), sa.text(_statuses(_AFTER)))
    _acquisition_index(
        prefix, schema, ["type_name", sa.text("priority DESC"), "scheduled_at", "id"]
    )


def downgrade() -> None:
    prefix, schema = _prefix_and_schema()
    job = f"{prefix}job"
    table = job if schema is None else f"{schema}.{job}"
    # Failed and cancelled jobs have no earlier status: they read as completed.
    op.execute(f"UPDATE {table} SET status = 'completed' WHERE status IN ('failed', 'cancelled')")
    op.drop_index(op.f(f"{prefix}job_acquisition_idx"), table_name=job, schema=schema)
    with op.batch_alter_table(job, schema=schema) as batch:
        batch.drop_constraint(op.f(f"ck_{job}_status"), type_="check")
        batch.create_check_constraint(op.f(f"ck_{job}_status"), sa.text(_statuses(_BEFORE)))
        batch.drop_column("cancel_reason")
        batch.drop_column("priority")
    _acquisition_index(prefix, schema, ["type_name", "scheduled_at", "id"])
