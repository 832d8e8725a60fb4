"""A sample application's Alembic setup that runs queuert's branch next to its own."""
