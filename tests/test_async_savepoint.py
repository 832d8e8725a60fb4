"""The AsyncWorker's atomic SAVEPOINT opens when the handler first reaches the database.

Every way an async handler can write through ``attempt.session`` (add, execute,
the connection, a bulk write in ``run_sync``, its own ``begin_nested``) is
undone when it then raises, and kept exactly once when it returns; a handler
that never touches the database sends no SAVEPOINT at all. Both engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, WorkIn, job_types, work
from .conftest import Db
from .workers import async_url

Write = Callable[[AsyncSession, str], Awaitable[None]]


async def by_add(session: AsyncSession, job_id: str) -> None:
    session.add(Effect(job_id=job_id, label="add"))


async def by_add_then_read(session: AsyncSession, job_id: str) -> None:
    session.add(Effect(job_id=job_id, label="add-read"))
    await session.execute(text("SELECT 1"))  # a Core statement: no autoflush first


async def by_execute(session: AsyncSession, job_id: str) -> None:
    await session.execute(insert(Effect).values(job_id=job_id, label="execute"))


async def by_flush(session: AsyncSession, job_id: str) -> None:
    session.add(Effect(job_id=job_id, label="flush"))
    await session.flush()


async def by_connection(session: AsyncSession, job_id: str) -> None:
    conn = await session.connection()
    await conn.execute(insert(Effect).values(job_id=job_id, label="connection"))


async def by_bulk_in_run_sync(session: AsyncSession, job_id: str) -> None:
    def bulk(sync: Session) -> None:
        sync.bulk_insert_mappings(Effect, [{"job_id": job_id, "label": "bulk"}])  # type: ignore[arg-type]

    await session.run_sync(bulk)


async def by_own_savepoint(session: AsyncSession, job_id: str) -> None:
    async with session.begin_nested():
        session.add(Effect(job_id=job_id, label="own-savepoint"))


WRITES = [
    by_add,
    by_add_then_read,
    by_execute,
    by_flush,
    by_connection,
    by_bulk_in_run_sync,
    by_own_savepoint,
]


def run_one(db: Db, write: Write | None, *, fail: bool) -> list[str]:
    """Start one job, run it on an AsyncWorker whose handler writes with ``write`` and then
    raises (``fail``) or completes; return the statements that began with SAVEPOINT."""
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        client.start_chain(s, work, {"n": 1, "sleep": 0})
    savepoints: list[str] = []

    async def main() -> None:
        engine = create_async_engine(async_url(db))

        def seen(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
            if statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
                savepoints.append(statement.split()[0].upper())

        event.listen(engine.sync_engine, "before_cursor_execute", seen)
        worker = q.AsyncQueuert(engine, job_types).worker(max_attempts=5)

        @worker.handler(work)
        async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            if write is not None:
                await write(attempt.session, str(attempt.job.id))
            if fail:
                raise RuntimeError("the handler failed after writing")
            return attempt.complete(1)

        try:
            assert await worker.drain(max_jobs=1) == 1
        finally:
            await engine.dispose()

    asyncio.run(main())
    return savepoints


def effects(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Effect)).scalar_one()


def job_state(db: Db) -> tuple[str, int, str | None]:
    with Session(db.engine) as s:
        job = s.scalars(select(Job)).one()
        return job.status, job.attempt, job.last_attempt_error


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.__name__)
def test_a_handler_that_wrote_and_raised_keeps_nothing(db: Db, write: Write) -> None:
    run_one(db, write, fail=True)
    assert effects(db) == 0
    status, attempt, error = job_state(db)
    assert (status, attempt) == ("pending", 1)
    assert error is not None
    assert "the handler failed after writing" in error


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.__name__)
def test_a_handler_that_wrote_and_completed_keeps_its_write_once(db: Db, write: Write) -> None:
    run_one(db, write, fail=False)
    assert effects(db) == 1
    assert job_state(db)[:2] == ("completed", 1)


def test_a_handler_that_never_reaches_the_database_sends_no_savepoint(db: Db) -> None:
    assert run_one(db, None, fail=False) == []
    assert job_state(db)[:2] == ("completed", 1)
    assert run_one(db, None, fail=True) == []  # a second job, failing: retried as usual
    with Session(db.engine) as s:
        failed = s.scalars(select(Job).where(Job.status == "pending")).one()
    assert failed.attempt == 1
