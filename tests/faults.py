"""Faults the database itself raises, for tests of what happens when a write fails there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

import queuert_sa as q

from .conftest import Db


def uuid_literal(db: Db, value: uuid.UUID) -> str:
    """``value`` as a SQL literal comparable with the job table's id columns."""
    return f"'{value.hex}'" if db.kind == "sqlite" else f"'{value}'::uuid"


@contextmanager
def refusing_inserts(db: Db, condition: str) -> Iterator[None]:
    """While open, the database refuses (an ``IntegrityError``) inserting a job row for
    which ``condition`` holds (SQL over ``NEW.<column>``): a write that fails in the
    database, not in queuert's checks."""
    table = q.models.Job.__table__.name
    with db.engine.begin() as conn:
        if db.kind == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_insert BEFORE INSERT ON {table} WHEN {condition} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_insert() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN IF {condition} THEN RAISE EXCEPTION 'refused by a trigger' "
                    "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_insert BEFORE INSERT ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_insert()"
                )
            )
    try:
        yield
    finally:
        with db.engine.begin() as conn:
            if db.kind == "sqlite":
                conn.execute(text("DROP TRIGGER refuse_insert"))
            else:
                conn.execute(text(f"DROP TRIGGER refuse_insert ON {table}"))
                conn.execute(text("DROP FUNCTION refuse_insert()"))
