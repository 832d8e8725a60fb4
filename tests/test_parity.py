"""What the two workers, and the two clients, must do alike.

``Worker`` and ``AsyncWorker`` (and ``Queuert`` and ``AsyncQueuert``) once
were hand-kept twins and drifted apart; they now share one implementation.
Each test here pins, where a user can see it, one behaviour that had drifted,
on both sides.

The same rules pinned inside the scenario files:

* "writing the outcome failed" recorded by both workers:
  ``test_worker.py::test_outcome_that_fails_to_write_without_a_savepoint_keeps_nothing``;
* the provisional lease kept by a fast prepare() on both:
  ``test_staged.py::test_prepare_commits_the_handlers_lease``;
* idle looks keep prepared statements, with the driver's own prepare
  threshold: ``test_worker.py::test_prepared_statements_follow_the_drivers_setting``;
* ``AsyncWorker.handler`` typed against the job type: ``tests/typing/case_async_handlers.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

import queuert_sa as q

from .app import Effect, WorkIn, work
from .conftest import Db
from .test_notify_conformance import eventually
from .test_worker import FakeClock, effects
from .workers import Kit, open_kit

DAY = dt.timedelta(days=1)
DEADLINE_S = 15.0

#: Prepared on the worker's connection by psycopg before the worker runs (see below).
PROBE = "SELECT 1 AS queuert_prepared_probe"


def start(kit: Kit, n: int = 1) -> q.Chain[WorkIn, int]:
    with Session(kit.db.engine) as s, s.begin():
        return kit.client.start_chain(s, work, {"n": n, "sleep": 0})


# --- drifts 1 and 2: an idle look ends with COMMIT ------------------------------------


def prepare_probe_on_worker_connection(kit: Kit) -> None:
    """Have psycopg prepare PROBE on the worker's one pooled connection, then COMMIT.

    psycopg deallocates every statement it prepared (``DEALLOCATE ALL``) when the
    connection rolls back, whether the ROLLBACK is the application's or the
    pool's reset on return; a COMMIT keeps them.
    """
    engine = kit.worker_client.engine
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # the transaction is SQLAlchemy's: COMMIT ends it
            conn.connection.driver_connection.execute(PROBE, prepare=True)
            conn.commit()
        return
    assert isinstance(engine, AsyncEngine)

    async def prepare() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(PROBE, prepare=True)
            await conn.commit()

    kit.loop.run(prepare())


def probe_prepared(kit: Kit) -> int:
    return int(
        kit.scalar_on_worker_connection(
            f"SELECT count(*) FROM pg_prepared_statements WHERE statement = '{PROBE}'"
        )
    )


@pytest.mark.parametrize("how", ["drain", "polling"])
def test_idle_looks_keep_the_connections_prepared_statements(pg_kit: Kit, how: str) -> None:
    """An acquire that finds nothing, and the look for the next due job, end with
    COMMIT on both workers.

    A ROLLBACK makes psycopg DEALLOCATE ALL the statements it prepared on the
    connection, so a worker idling over an empty queue would throw them away at
    every poll, and prepare them again for the next jobs.

    Seen from the application: a statement psycopg prepared on the worker's
    (only) pooled connection is still prepared after the worker looked for
    work and found none (``drain()`` of an empty queue, or a started worker
    polling).
    """
    engine = pg_kit.new_engine(pool_size=1, max_overflow=0)
    kit = pg_kit.using(engine=engine)
    prepare_probe_on_worker_connection(kit)
    assert probe_prepared(kit) == 1
    worker = kit.worker(poll_interval=dt.timedelta(milliseconds=20), handle_signals="never")
    worker.handler(work)(lambda a: a.complete(a.input["n"]))
    if how == "drain":
        for _ in range(3):
            assert worker.drain() == 0
    else:
        looks: list[str] = []

        def record(conn: object, cursor: object, statement: str, *rest: object) -> None:
            if statement.lstrip().upper().startswith("UPDATE"):
                looks.append(statement)  # the acquire (nothing else updates here)

        event.listen(kit.worker_engine, "before_cursor_execute", record)
        try:
            worker.start()
            assert eventually(lambda: len(looks) >= 5, DEADLINE_S), "the worker did not poll"
            assert worker.stop() is True
        finally:
            event.remove(kit.worker_engine, "before_cursor_execute", record)
    assert probe_prepared(kit) == 1, "the worker's idle look rolled back its connection"


# --- smell 8: AsyncQueuert.cleanup re-implemented, and drifted ------------------------


def test_cleanup_refuses_a_batch_larger_than_the_limit(kit: Kit) -> None:
    """Both clients bound ``cleanup``'s batch size (each batch's ids are bound
    parameters; PostgreSQL takes at most 65,535)."""
    with pytest.raises(ValueError, match=r"between 1 and 10000"):
        kit.cleanup(older_than=DAY, batch_size=10_001)


@pytest.mark.parametrize("single", ["name", "job-type"])
def test_cleanup_refuses_a_single_type_not_wrapped_in_a_list(kit: Kit, single: str) -> None:
    """Both clients refuse ``cleanup(types="abc")`` instead of taking the string
    as the types ``a``, ``b`` and ``c``."""
    types: Any = "abc" if single == "name" else work
    with pytest.raises(TypeError, match=r"wrap a single one in \[\.\.\.\]"):
        kit.cleanup(older_than=DAY, types=types)


def test_cleanup_logs_how_many_chains_it_deleted(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    """Both clients log what ``cleanup`` deleted
    ("cleanup deleted %d chains ended before completed ...")."""
    clock = FakeClock()
    kit = kit.using(clock=clock)
    chain = start(kit)
    with Session(kit.db.engine) as s, s.begin():
        kit.client.complete_chain(s, chain.id, work, lambda c: c.complete(1))
    clock.advance(2 * DAY)
    caplog.set_level(logging.INFO, logger="queuert_sa")
    assert kit.cleanup(older_than=DAY) == 1
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("queuert_sa")]
    assert any(
        line.startswith("cleanup deleted 1 chains ended before completed") for line in lines
    ), lines


# --- drift 6: request_stop() on both workers -------------------------------------------


def test_request_stop_asks_run_to_stop_gracefully(kit: Kit) -> None:
    """``worker.request_stop()`` (both workers) asks ``run()`` to stop as a signal
    does: the attempt in flight finishes, then ``run()`` returns True. Called
    from another thread than ``run()``'s on the thread worker; from the event
    loop on the asyncio one."""
    worker = kit.worker(poll_interval=dt.timedelta(seconds=30), handle_signals="never")
    entered, release = threading.Event(), threading.Event()

    @worker.handler(work, on_thread=True)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        entered.set()
        assert release.wait(DEADLINE_S)
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        return attempt.complete(attempt.input["n"] + 1)

    running = worker.run_in_background()
    try:
        chain = start(kit, n=41)
        assert entered.wait(DEADLINE_S), "run() did not take the job"
        worker.request_stop()
        assert not running.done(), "run() returned with an attempt in flight"
    finally:
        release.set()
    assert running.result(DEADLINE_S) is True
    assert kit.client.get_chain(chain.id).output == 42
    assert effects(kit.db, "work") == 1


# --- smell 6: plain def handlers on AsyncWorker run on the application's engine -------


@pytest.fixture
def engines_made(monkeypatch: pytest.MonkeyPatch) -> list[Engine]:
    """Every ``Engine`` constructed from now on (``create_engine`` and ``create_async_engine``)."""
    made: list[Engine] = []
    original = Engine.__init__

    def init(self: Engine, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "__init__", init)
    return made


def sync_engine_for(db: Db) -> Engine:
    """The application's own sync engine for the test database, configured as it likes."""
    engine = create_engine(db.url, pool_size=2, max_overflow=0)
    if engine.dialect.name == "sqlite":
        q.prepare_engine(engine)
    return engine


def test_plain_def_handlers_on_the_async_worker_run_on_the_thread_engine_given(db: Db) -> None:
    """``aqueuert.worker(concurrency=..., thread_engine=sync_engine)``: the plain
    ``def`` handlers' attempts run on the application's own sync engine (its
    pool size, connect_args, SSL, event listeners), and no engine is created
    behind the user's back.
    """
    thread_engine = sync_engine_for(db)
    try:
        with open_kit("async", db) as kit:
            connected: list[Engine] = []
            binds: list[object] = []

            def on_connect(conn: Any) -> None:
                connected.append(conn.engine)

            event.listen(Engine, "engine_connect", on_connect)
            try:
                worker = kit.worker(concurrency=2, thread_engine=thread_engine)

                @worker.raw.handler(work)
                def plain(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
                    binds.append(attempt.session.get_bind())
                    attempt.session.add(Effect(job_id=str(attempt.job.id), label="plain"))
                    return attempt.complete(attempt.input["n"] * 2)

                first = start(kit, n=1)
                assert worker.drain() == 1
                worker.start()
                try:
                    later = start(kit, n=2)
                    done = kit.client.await_chain(later.id, timeout=dt.timedelta(seconds=10))
                finally:
                    assert worker.stop() is True
            finally:
                event.remove(Engine, "engine_connect", on_connect)
            assert kit.client.get_chain(first.id).output == 2
            assert done.output == 4
            assert effects(db, "plain") == 2
            assert binds, "the plain handler did not run"
            assert all(bind is thread_engine for bind in binds), binds
            ours = {id(thread_engine), id(kit.worker_engine), id(db.engine)}
            strangers = {repr(e) for e in connected if id(e) not in ours}
            assert not strangers, f"the worker connected through engines of its own: {strangers}"
            # The application's engine is left to the application: its pool was not disposed.
            assert thread_engine.pool.checkedin() >= 1
    finally:
        thread_engine.dispose()


def test_a_plain_def_handler_on_the_async_worker_needs_a_thread_engine(
    db: Db, engines_made: list[Engine]
) -> None:
    """Without ``thread_engine=``, registering a plain ``def`` handler on an
    ``AsyncWorker`` raises ``WorkerConfigError`` naming ``thread_engine=``; no
    engine is made for it."""
    with open_kit("async", db) as kit:
        before = list(engines_made)
        worker = kit.worker(concurrency=2)

        def plain(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
            return attempt.complete(0)

        with pytest.raises(q.WorkerConfigError, match=r"thread_engine="):
            worker.raw.handler(work)(plain)
        assert engines_made == before, "an engine was created behind the user's back"
        assert work.name not in worker.type_names


def test_the_thread_engine_is_the_only_engine_a_plain_handler_gets(
    db: Db, engines_made: list[Engine]
) -> None:
    """Registering, draining, starting and stopping an ``AsyncWorker`` with plain
    ``def`` handlers constructs no ``Engine``."""
    thread_engine = sync_engine_for(db)
    try:
        with open_kit("async", db) as kit:
            before = list(engines_made)
            worker = kit.worker(thread_engine=thread_engine)
            worker.raw.handler(work)(lambda a: a.complete(a.input["n"]))
            chain = start(kit, n=5)
            assert worker.drain() == 1
            worker.start()
            assert worker.stop() is True
            assert engines_made == before, "an engine was created behind the user's back"
            assert kit.client.get_chain(chain.id).output == 5
    finally:
        thread_engine.dispose()
