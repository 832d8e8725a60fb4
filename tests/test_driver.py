"""The worker's statements on the driver's cursor behave as they would through SQLAlchemy.

Each test sets up something an application does (a scoped session, error
listeners, ``hide_parameters``, a schema map, per-table binds, SQL logging)
and checks the outcome a user would see. Several failed before the
driver-level path learned to honour them.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Dialect, ExceptionContext, create_engine, event, func, select, text
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import queuert_sa as q
from queuert_sa.models import Job

from .app import Base, Effect, WorkIn, job_types, work
from .conftest import Db
from .faults import refusing_inserts


def start(client: q.Queuert, engine: object, n: int = 1) -> q.Chain[WorkIn, int]:
    with Session(client.engine) as s, s.begin():
        return client.start_chain(s, work, {"n": n, "sleep": 0})


def test_handler_writing_through_a_scoped_session_then_failing_keeps_nothing(db: Db) -> None:
    # Flask-SQLAlchemy style: the attempt's session is the application's
    # scoped session, which the handler may use without attempt.session.
    scoped = scoped_session(sessionmaker(db.engine))
    client = q.Queuert(db.engine, job_types)
    chain = start(client, db.engine)
    worker = client.worker(session_factory=scoped)

    @worker.handler(work)
    def partial(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        scoped.add(Effect(job_id=str(attempt.job.id), label="partial"))
        scoped.flush()
        raise RuntimeError("after a partial write")

    try:
        assert worker.drain() == 1
    finally:
        scoped.remove()
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)
    with Session(db.engine) as s:
        assert s.execute(select(func.count()).select_from(Effect)).scalar_one() == 0


def test_database_errors_reach_handle_error_listeners_and_hide_parameters(db: Db) -> None:
    engine = create_engine(db.url, hide_parameters=True)
    seen: list[str] = []

    def on_error(context: ExceptionContext) -> None:
        seen.append(type(context.original_exception).__name__)

    event.listen(engine, "handle_error", on_error)
    client = q.Queuert(engine, job_types)
    try:
        with (
            refusing_inserts(db, "NEW.type_name = 'work'"),
            Session(engine) as s,
            pytest.raises(q.DatabaseError) as info,
        ):
            client.start_chains(s, [work({"n": 4111_1111_1111_1111, "sleep": 0})])
    finally:
        engine.dispose()
    assert seen  # SQLAlchemy's error handling ran for the driver-level INSERT
    rendered = f"{info.value} {info.value.__cause__}"
    assert "4111111111111111" not in rendered
    assert "hidden due to hide_parameters" in rendered


def test_schema_translate_map_routes_jobs_to_the_mapped_schema(pg: Db) -> None:
    schema = f"tenant_{uuid.uuid4().hex[:8]}"
    with pg.engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    tenant = pg.engine.execution_options(schema_translate_map={None: schema})
    try:
        q.metadata.create_all(tenant)
        client = q.Queuert(tenant, job_types)
        chain = start(client, tenant, n=5)
        worker = client.worker()
        worker.handler(work)(lambda a: a.complete(a.input["n"]))
        assert worker.drain() == 1
        assert client.get_chain(chain.id, work).output == 5
        with pg.engine.connect() as conn:
            in_public = conn.execute(select(func.count()).select_from(Job)).scalar_one()
            in_tenant = conn.execute(
                text(f'SELECT status FROM "{schema}".queuert_job WHERE id = :id'),
                {"id": chain.id},
            ).scalar_one()
        assert (in_public, in_tenant) == (0, "completed")
    finally:
        with pg.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_session_binds_route_job_rows_to_the_queue_database(tmp_path: Path) -> None:
    app_engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    queue_engine = create_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    q.prepare_engine(app_engine)
    q.prepare_engine(queue_engine)
    Base.metadata.create_all(app_engine)
    q.metadata.create_all(queue_engine)
    client = q.Queuert(queue_engine, job_types)
    binds = {t: queue_engine for t in q.metadata.sorted_tables}
    try:
        with Session(bind=app_engine, binds=binds) as s, s.begin():
            s.add(Effect(job_id="-", label="business row"))
            chain = client.start_chain(s, work, {"n": 2, "sleep": 0})
        with queue_engine.connect() as conn:
            assert conn.execute(select(Job.status).where(Job.id == chain.id)).scalar_one() == (
                "pending"
            )
        with app_engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Effect)).scalar_one() == 1
    finally:
        app_engine.dispose()
        queue_engine.dispose()


def test_sql_logged_through_the_logging_module_includes_the_workers_statements(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    client = q.Queuert(db.engine, job_types)
    chain = start(client, db.engine, n=6)
    worker = client.worker()
    worker.handler(work)(lambda a: a.complete(a.input["n"]))
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
        assert worker.drain() == 1
    assert client.get_chain(chain.id, work).output == 6
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
    assert any("completed_by" in m for m in logged)


def test_compiled_statements_go_with_their_engine(tmp_path: Path) -> None:
    # An application (or a test suite) that makes and drops engines must not
    # accumulate the worker's compiled statements.
    dialects: list[weakref.ref[Dialect]] = []
    for i in range(3):
        engine = create_engine(f"sqlite:///{tmp_path / f'q{i}.db'}")
        q.prepare_engine(engine)
        q.metadata.create_all(engine)
        client = q.Queuert(engine, job_types)
        start(client, engine)
        worker = client.worker()
        worker.handler(work)(lambda a: a.complete(0))
        assert worker.drain() == 1
        engine.dispose()
        dialects.append(weakref.ref(engine.dialect))
        del engine, client, worker
    gc.collect()
    assert [ref() for ref in dialects] == [None, None, None]


_BATCH_NOW = dt.datetime(2026, 11, 22, 9, 30, 15, 123456, tzinfo=dt.UTC)


def _rows_of(db: Db, ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    with Session(db.engine) as s:
        by_id = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        return [
            (
                j.type_name,
                j.chain_type_name,
                j.chain_index,
                j.input,
                j.status,
                j.created_at,
                j.scheduled_at,
                j.attempt,
                j.deduplication_key is not None,
                j.chain_id == j.id,
                j.priority,
            )
            for j in (by_id[i] for i in ids)
        ]


def _driver_level_and_through_sqlalchemy(
    db: Db, starts: Callable[[], list[q.ChainStart[Any, Any]]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows ``start_chains(starts())`` writes on the driver's path, and through SQLAlchemy."""

    def batch(client: q.Queuert) -> list[uuid.UUID]:
        with Session(client.engine) as s, s.begin():
            return [c.id for c in client.start_chains(s, starts())]

    driver_level = _rows_of(db, batch(q.Queuert(db.engine, job_types, clock=lambda: _BATCH_NOW)))
    forced = create_engine(db.url)
    event.listen(forced, "before_cursor_execute", lambda *args: None)
    try:
        through_sqlalchemy = _rows_of(
            db, batch(q.Queuert(forced, job_types, clock=lambda: _BATCH_NOW))
        )
    finally:
        forced.dispose()
    return driver_level, through_sqlalchemy


def test_batched_start_writes_the_same_rows_as_sqlalchemy_would(db: Db) -> None:
    # The driver-level INSERT (an unnest of column arrays on PostgreSQL, an
    # executemany on SQLite) against the same batch through SQLAlchemy.
    now = _BATCH_NOW
    inputs: list[Any] = [
        {"n": 1, "sleep": 0},
        {"n": 2, "sleep": 0.25, "note": "naïve ✓ 'quoted' %(x)s"},
        {"n": 3, "sleep": 0, "nested": {"a": [1, None, {"b": True}]}},
    ]
    driver_level, through_sqlalchemy = _driver_level_and_through_sqlalchemy(
        db,
        lambda: [
            work(inputs[0]),
            work(inputs[1], run_in=dt.timedelta(minutes=5)),
            work(inputs[2], dedup=q.Dedup(f"key-{uuid.uuid4()}")),
            work(inputs[0], run_at=now + dt.timedelta(hours=1), priority=3),
            work(None),  # pyright: ignore[reportArgumentType] - stored as SQL NULL
        ],
    )
    assert driver_level == through_sqlalchemy
    assert [r[3] for r in driver_level] == [inputs[0], inputs[1], inputs[2], inputs[0], None]
    assert driver_level[1][6] == now + dt.timedelta(minutes=5)
    assert [r[10] for r in driver_level] == [0, 0, 0, 3, 0]
    with Session(db.engine) as s:  # SQL NULL, not a JSON null, on both paths
        nulls = s.scalar(select(func.count()).select_from(Job).where(Job.input.is_(None)))
    assert nulls == 2


def test_batched_start_of_alike_chains_writes_the_same_rows_as_sqlalchemy_would(
    db: Db,
) -> None:
    # Values shared by every row of the batch (here even the input object, and
    # a run_at) are sent once on PostgreSQL, not as an array each: the rows
    # must not tell.
    shared: Any = {"n": 7, "sleep": 0, "note": "%(id)s"}
    later = _BATCH_NOW + dt.timedelta(minutes=1)
    driver_level, through_sqlalchemy = _driver_level_and_through_sqlalchemy(
        db, lambda: [work(shared, run_at=later, priority=-2) for _ in range(3)]
    )
    assert driver_level == through_sqlalchemy
    assert (
        driver_level
        == [("work", "work", 0, shared, "pending", _BATCH_NOW, later, 0, False, True, -2)] * 3
    )


# --- aiosqlite: one call to the driver's thread per hot statement ---------------------


def test_aiosqlite_statements_run_on_the_driver_path_and_fail_as_sqlalchemys(
    tmp_path: Path,
) -> None:
    """An AsyncQueuert on aiosqlite: its batched INSERT and the BEGIN go to aiosqlite's
    connection in one call each, and a refusal by the database reaches ``handle_error`` listeners and the caller as
    ``q.DatabaseError``, the session still usable."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from queuert_sa.state.capabilities import capabilities_for

    url = f"sqlite:///{tmp_path / 'a.db'}"
    sync_engine = create_engine(url)
    q.metadata.create_all(sync_engine)
    db = Db("sqlite", url, sync_engine)
    calls: list[str] = []

    async def main() -> str:
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
        seen: list[str] = []
        event.listen(
            engine.sync_engine,
            "handle_error",
            lambda context: seen.append(type(context.original_exception).__name__),
        )
        client = q.AsyncQueuert(engine, job_types)
        try:
            assert capabilities_for(engine.sync_engine.dialect).driver_cursor
            async with AsyncSession(engine) as s:
                raw = await s.connection()
                driver = (await raw.get_raw_connection()).driver_connection
                real = driver.execute_fetchall
                real_many = driver.executemany

                def fetchall(sql: str, parameters: Any) -> Any:
                    calls.append(sql.split()[0])
                    return real(sql, parameters)

                def many(sql: str, parameters: Any) -> Any:
                    calls.append(sql.split()[0])
                    return real_many(sql, parameters)

                driver.execute_fetchall, driver.executemany = fetchall, many
                await client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(3)])
                with pytest.raises(q.DatabaseError) as info:
                    await client.start_chains(s, [work({"n": 9, "sleep": 0})])
                assert "refused by a trigger" in str(info.value.__cause__)
                await s.rollback()
                await client.start_chains(s, [work({"n": 10, "sleep": 0})])
                await s.commit()
            async with AsyncSession(engine) as s:
                count = await s.scalar(select(func.count()).select_from(Job))
            assert count == 1  # the first three were rolled back with the refused batch
            return ",".join(seen)
        finally:
            await engine.dispose()

    with refusing_inserts(db, "json_extract(NEW.input, '$.n') = 9"):
        seen = asyncio.run(main())
    sync_engine.dispose()
    # BEGIN too: the engine's begin hook emits it where the hot statements run.
    assert set(calls) == {"INSERT", "BEGIN"}, calls
    assert "IntegrityError" in seen or "OperationalError" in seen, seen


# --- psycopg's asyncio connection: one awaited call per hot statement -----------------


def test_psycopg_async_statements_run_on_the_driver_path_and_fail_as_sqlalchemys(
    pg: Db,
) -> None:
    """An AsyncQueuert on psycopg's asyncio driver: its statements go to psycopg's own
    ``AsyncCursor`` (prepared), an AsyncWorker completes a job through it, and a refusal by
    the database reaches ``handle_error`` listeners and the caller as ``q.DatabaseError``,
    the session still usable."""
    import asyncio

    import psycopg
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from queuert_sa.state.capabilities import capabilities_for

    sent: list[tuple[str, bool]] = []
    real_execute = psycopg.AsyncCursor.execute

    async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        # SQLAlchemy's adaptor never asks psycopg to prepare; the driver path does.
        sent.append((str(query).split()[0], bool(kwargs.get("prepare"))))
        return await real_execute(self, query, *args, **kwargs)

    async def main() -> tuple[str, str | None]:
        engine = create_async_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"))
        seen: list[str] = []
        event.listen(
            engine.sync_engine,
            "handle_error",
            lambda context: seen.append(type(context.original_exception).__name__),
        )
        async_job_types = q.JobTypes()
        echo = async_job_types.entry("echo", input=WorkIn, output=int)
        client = q.AsyncQueuert(engine, async_job_types)
        worker = client.worker(handle_signals="never")

        @worker.handler(echo)
        async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            return attempt.complete(attempt.input["n"] * 2)

        try:
            assert capabilities_for(engine.sync_engine.dialect).driver_cursor
            async with AsyncSession(engine) as s:
                await client.start_chains(s, [echo({"n": i, "sleep": 0}) for i in range(3)])
                with pytest.raises(q.DatabaseError) as info:
                    await client.start_chains(s, [echo({"n": 9, "sleep": 0})])
                assert "refused by a trigger" in str(info.value.__cause__)
                await s.rollback()
                chain = await client.start_chain(s, echo, {"n": 10, "sleep": 0})
                await s.commit()
            assert await worker.drain() == 1
            done = await client.get_chain(chain.id, echo)
            async with AsyncSession(engine) as s:
                count = await s.scalar(select(func.count()).select_from(Job))
            assert count == 1  # the first three were rolled back with the refused batch
            return ",".join(seen), done.status if done.output == 20 else None
        finally:
            await engine.dispose()

    psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
    try:
        with refusing_inserts(pg, "(NEW.input->>'n')::int = 9"):
            seen, status = asyncio.run(main())
    finally:
        psycopg.AsyncCursor.execute = real_execute  # type: ignore[method-assign]
    assert status == "completed"
    assert "CheckViolation" in seen, seen
    # The batched INSERT, the acquire and the completion went to psycopg's cursor, prepared.
    assert {("INSERT", True), ("UPDATE", True)} <= set(sent), sent


def test_aiosqlite_connections_back_in_the_pool_are_rolled_back_only_in_a_transaction(
    tmp_path: Path,
) -> None:
    """The pool rolls back each connection it takes back; on aiosqlite that is a call to
    its thread, so a prepared engine skips it when no transaction is open. A connection
    returned in the middle of a transaction is still rolled back: its write is gone and
    the write lock free for the next writer."""
    import asyncio

    import aiosqlite
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.util import greenlet_spawn

    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    rollbacks: list[bool] = []
    real_rollback = aiosqlite.Connection.rollback

    async def rollback(self: aiosqlite.Connection) -> None:
        rollbacks.append(self.in_transaction)
        await real_rollback(self)

    async def main() -> int:
        engine = create_async_engine(url)
        q.AsyncQueuert(engine, job_types)  # prepares the engine
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (n INTEGER)"))
            rollbacks.clear()
            async with engine.begin() as conn:  # committed, then back in the pool
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            assert rollbacks == []

            def abandon() -> None:  # a raw connection returned inside its transaction
                raw = engine.sync_engine.raw_connection()
                cursor = raw.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute("INSERT INTO t VALUES (2)")
                cursor.close()
                raw.close()

            await greenlet_spawn(abandon)
            assert rollbacks == [True]
            async with engine.begin() as conn:  # the write lock is free again
                await conn.execute(text("INSERT INTO t VALUES (3)"))
                total = await conn.scalar(text("SELECT sum(n) FROM t"))
            return int(total or 0)
        finally:
            await engine.dispose()

    aiosqlite.Connection.rollback = rollback  # type: ignore[method-assign]
    try:
        assert asyncio.run(main()) == 4
    finally:
        aiosqlite.Connection.rollback = real_rollback  # type: ignore[method-assign]
