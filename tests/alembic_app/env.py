"""Alembic environment of the sample application (see docs/alembic.md)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from queuert_sa.alembic import (
    check_version_locations,
    exclude_queuert_tables,
    process_revision_directives,
)
from tests.alembic_app.models import Base

config = context.config
# Stops here, with the line to change, when queuert's revisions are not found.
check_version_locations(config)
target_metadata = Base.metadata

# Autogenerate compares the database with target_metadata: without this hook it
# would propose to drop queuert's tables, which are not in the app's MetaData.
include_object = exclude_queuert_tables(
    table_prefix=config.get_main_option("queuert_sa.table_prefix", "queuert_")
)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        include_object=include_object,
        process_revision_directives=process_revision_directives,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_object=include_object,
            process_revision_directives=process_revision_directives,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
