"""queuert: tell PostgreSQL's planner that blocker chains are looked up one by one.

Revision ID: b5d3e8a1c4f7
Revises: 7c41d9e0b5a2
Create Date: 2026-12-02

Completing a job checks whether any job waits on its chain
(``job_blocker.blocked_by_chain_id = <chain>``). When many jobs wait on one
chain, the column's statistics say "one value covers every row", and for a
lookup of a value it does not know yet the planner then reads the whole table
instead of its index: with 90,000 jobs waiting on one chain, each completion
took milliseconds. Declaring the column's values distinct (``n_distinct =
-1``) keeps every such lookup on the index. PostgreSQL only; nothing on SQLite.
"""

from __future__ import annotations

from alembic import context, op

revision = "b5d3e8a1c4f7"
down_revision = "7c41d9e0b5a2"
branch_labels = None
depends_on = None

DEFAULT_TABLE_PREFIX = "queuert_"


def _blocker_table() -> str:
    config = context.config
    prefix = config.get_main_option("queuert_sa.table_prefix") or DEFAULT_TABLE_PREFIX
    schema = config.get_main_option("queuert_sa.schema") or None
    if not prefix.replace("_", "").isalnum():
        raise ValueError(
            f"queuert_sa.table_prefix {prefix!r} must contain only letters, digits and underscores"
        )
    return f"{prefix}job_blocker" if schema is None else f"{schema}.{prefix}job_blocker"


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE {_blocker_table()} ALTER COLUMN blocked_by_chain_id SET (n_distinct = -1)"
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE {_blocker_table()} ALTER COLUMN blocked_by_chain_id RESET (n_distinct)"
        )
