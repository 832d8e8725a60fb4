"""One handle over both workers, so that each worker scenario is written once and runs on each.

A scenario gets a :class:`Kit` (fixtures ``kit`` and ``pg_kit`` in conftest.py,
parametrised over ``kind`` in :data:`KINDS` and, for ``kit``, over the ``db``
engines):

* **Producing and reading** are synchronous, as in a web process:
  ``kit.client`` is a ``Queuert`` on the test database's engine. It shares the
  worker's notify adapter (an ``InMemoryNotify``) and clock.
* **The worker under test**, ``kit.worker(**options)``, is behind one
  synchronous :class:`WorkerHandle` (``handler``, ``drain``, ``start``,
  ``stop``, ``run_in_background``, ``request_stop``, ``completed``, ``failed``).
  Kind ``"thread"``: a ``Worker`` of ``kit.client`` itself. Kind ``"async"``:
  an ``AsyncWorker`` of an ``AsyncQueuert`` on an async engine for the same
  database (``sqlite+aiosqlite`` / psycopg's async mode), whose coroutines run
  on an event loop in a thread of its own (:class:`Loop`); the handle submits
  them there and waits.
* **Handlers are written once**, as plain functions of an attempt whose
  ``session`` is a sync ``Session``:

  - ``"thread"``: registered as they are, and get the real ``q.Attempt``;
  - ``"async"``, atomic: registered as an ``async def`` that runs the body with
    ``await attempt.session.run_sync(...)``. The body's session is the
    attempt's ``AsyncSession``'s own sync ``Session``, inside the attempt's
    transaction. The body runs on the loop, so it must not wait for anything;
  - ``"async"``, staged, or ``on_thread=True``: an ``async def`` that runs the
    body on a thread (``asyncio.to_thread``) with the attempt bridged to the
    loop. ``prepare()`` and ``transaction()`` enter the ``AsyncAttempt``'s own
    async context managers, and each session call runs on the loop through
    ``run_sync``. Use it for bodies that wait (events, sleeps) and for the
    staged API;
  - ``async_body=``: a hand-written ``async def`` for the async kind, where the
    scenario itself differs between the workers.

Only the public API is used (names importable from ``queuert_sa``, and
``queuert_sa.models``), so the tests hold whatever the workers look like inside.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading
from collections.abc import Callable, Coroutine, Generator, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q

from . import app

if TYPE_CHECKING:
    from .conftest import Db

KINDS = ["thread", "async"]

#: Longest a harness call waits for the event loop (a test's own deadlines are shorter).
LOOP_DEADLINE_S = 60.0

T = TypeVar("T")
Body = Callable[[Any], Any]
"""A handler body written once: takes an attempt with a sync ``session``, returns the outcome."""


def async_url(db: Db) -> str:
    """The test database's URL with an asyncio driver (psycopg serves both modes)."""
    url = make_url(db.url)
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


# --- the event loop of the async kind -------------------------------------------------


class _Carried(Exception):
    """SystemExit/KeyboardInterrupt on its way out of the loop to the caller.

    Raised as such inside a task, asyncio would re-raise it from the loop itself
    and end the loop's thread.
    """

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


async def _carry(awaitable: Coroutine[Any, Any, T]) -> T:
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Carried(exc) from None


class Loop:
    """An event loop running in a thread of its own; the test's thread submits to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-event-loop", daemon=True
        )
        self.thread.start()

    def submit(self, awaitable: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self.thread:
            awaitable.close()
            raise RuntimeError("a harness call from the event loop's own thread would deadlock")
        return asyncio.run_coroutine_threadsafe(_carry(awaitable), self.loop)

    def run(self, awaitable: Coroutine[Any, Any, T], timeout: float = LOOP_DEADLINE_S) -> T:
        """Run a coroutine on the loop and wait for its result (or exception)."""
        return self.result(self.submit(awaitable), timeout)

    @staticmethod
    def result(future: concurrent.futures.Future[T], timeout: float = LOOP_DEADLINE_S) -> T:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"the event loop did not finish the call in {timeout} s") from None
        except _Carried as carried:
            raise carried.exc from None

    def call(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` on the loop's thread (as a callback, soon)."""
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        async def finish() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            if self.thread.is_alive():
                self.run(finish())
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(LOOP_DEADLINE_S)
            assert not self.thread.is_alive(), "the test's event loop did not stop"
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()


# --- attempts as a handler body written once sees them ---------------------------------


class _InlineAttempt:
    """An ``AsyncAttempt`` with ``session`` = its ``AsyncSession``'s sync ``Session``."""

    def __init__(self, attempt: q.AsyncAttempt[Any, Any], session: Session) -> None:
        self._attempt = attempt
        self.session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attempt, name)


class _SessionBridge:
    """A sync face of an ``AsyncSession`` for code on another thread.

    Every attribute is taken for a method of the sync ``Session``, and each call
    runs on the loop through ``run_sync``.
    """

    def __init__(self, session: AsyncSession, loop: Loop) -> None:
        self._session = session
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(
                self._session.run_sync(lambda s: getattr(s, name)(*args, **kwargs))
            )

        return call


class _SignalBridge:
    """An ``AsyncAttemptSignal`` for a body on another thread: ``wait`` awaits it on the loop."""

    def __init__(self, signal: q.AsyncAttemptSignal, loop: Loop) -> None:
        self._signal = signal
        self._loop = loop

    @property
    def reason(self) -> str | None:
        return self._signal.reason

    def is_set(self) -> bool:
        return self._signal.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._loop.run(self._signal.wait(timeout)))

    def __bool__(self) -> bool:
        return self._signal.is_set()


class _ThreadedAttempt:
    """An ``AsyncAttempt`` for a body running on another thread: its calls bridged to the loop."""

    def __init__(self, attempt: q.AsyncAttempt[Any, Any], loop: Loop) -> None:
        self._attempt = attempt
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attempt, name)

    @property
    def session(self) -> _SessionBridge:
        return _SessionBridge(self._attempt.session, self._loop)

    @property
    def signal(self) -> _SignalBridge:
        return _SignalBridge(self._attempt.signal, self._loop)

    def prepare(self) -> AbstractContextManager[_SessionBridge]:
        return self._enter(self._attempt.prepare)

    def transaction(self) -> AbstractContextManager[_SessionBridge]:
        return self._enter(self._attempt.transaction)

    @contextmanager
    def _enter(self, open_block: Callable[[], Any]) -> Generator[_SessionBridge]:
        block = open_block()
        session = self._loop.run(block.__aenter__())
        try:
            yield _SessionBridge(session, self._loop)
        except BaseException as exc:
            if not self._loop.run(block.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._loop.run(block.__aexit__(None, None, None))


# --- the worker behind one handle ------------------------------------------------------


class Running:
    """``run()`` of a worker, going on in the background."""

    def __init__(self, result: Callable[[float], bool], done: Callable[[], bool]) -> None:
        self._result = result
        self._done = done

    def result(self, timeout: float = LOOP_DEADLINE_S) -> bool:
        """What ``run()`` returned, waiting up to ``timeout`` for it."""
        return self._result(timeout)

    def done(self) -> bool:
        return self._done()


class WorkerHandle:
    """A ``Worker`` or an ``AsyncWorker``, driven synchronously from the test's thread."""

    def __init__(self, kit: Kit, raw: q.Worker | q.AsyncWorker) -> None:
        self.kit = kit
        self.kind = kit.kind
        self.raw = raw
        self._started = False

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.kind} {self.raw!r}>"

    @property
    def worker_id(self) -> str:
        return self.raw.worker_id

    @property
    def completed(self) -> int:
        return self.raw.completed

    @property
    def failed(self) -> int:
        return self.raw.failed

    @property
    def type_names(self) -> tuple[str, ...]:
        return self.raw.type_names

    def handler(
        self,
        job_type: q.JobType[Any, Any],
        *,
        on_thread: bool = False,
        async_body: Callable[[Any], Coroutine[Any, Any, Any]] | None = None,
        **options: Any,
    ) -> Callable[[Body], Body]:
        """Register a body written once (see the module doc); returns it unchanged.

        ``on_thread``: on the async kind, run the body on a thread with the
        attempt bridged to the loop (always so for ``mode="staged"``).
        ``async_body``: on the async kind, register this ``async def`` instead.
        """

        # Called now, as the worker's own handler() is: a bad type or option raises here.
        decorate: Callable[[Any], Any] = self.raw.handler(job_type, **options)

        def register(body: Body) -> Body:
            if isinstance(self.raw, q.Worker):
                decorate(body)
                return body
            loop = self.kit.loop
            if async_body is not None:
                fn = async_body
            elif on_thread or options.get("mode") == "staged":

                async def fn(attempt: q.AsyncAttempt[Any, Any]) -> Any:
                    return await asyncio.to_thread(body, _ThreadedAttempt(attempt, loop))

            else:

                async def fn(attempt: q.AsyncAttempt[Any, Any]) -> Any:
                    return await attempt.session.run_sync(
                        lambda s: body(_InlineAttempt(attempt, s))
                    )

            decorate(fn)
            return body

        return register

    def batch_handler(
        self, job_type: q.JobType[Any, Any], **options: Any
    ) -> Callable[[Body], Body]:
        """Register a batch body written once: takes the list of attempts, returns the outcomes.

        On the async kind it runs on the loop, in the group's sync ``Session``.
        """
        decorate: Callable[[Any], Any] = self.raw.batch_handler(job_type, **options)

        def register(body: Body) -> Body:
            if isinstance(self.raw, q.Worker):
                decorate(body)
                return body

            async def fn(attempts: list[q.AsyncAttempt[Any, Any]]) -> Any:
                return await attempts[0].session.run_sync(
                    lambda s: body([_InlineAttempt(a, s) for a in attempts])
                )

            decorate(fn)
            return body

        return register

    def drain(self, *, max_jobs: int | None = None) -> int:
        if isinstance(self.raw, q.Worker):
            return self.raw.drain(max_jobs=max_jobs)
        return self.kit.loop.run(self.raw.drain(max_jobs=max_jobs))

    def start(self) -> None:
        self._started = True
        if isinstance(self.raw, q.Worker):
            self.raw.start()
        else:
            self.kit.loop.run(self.raw.start())

    def stop(self, timeout: dt.timedelta | None = None) -> bool:
        if isinstance(self.raw, q.Worker):
            return self.raw.stop(timeout)
        grace = (timeout or self.raw.shutdown_grace).total_seconds()
        return self.kit.loop.run(self.raw.stop(timeout), timeout=grace + LOOP_DEADLINE_S)

    def run_in_background(self) -> Running:
        """``run()`` on a thread of its own (thread kind) or as a task on the loop (async)."""
        self._started = True
        raw = self.raw
        if isinstance(raw, q.Worker):
            outcome: list[bool] = []
            thread = threading.Thread(
                target=lambda: outcome.append(raw.run()), name="worker-run", daemon=True
            )
            thread.start()

            def joined(timeout: float) -> bool:
                thread.join(timeout)
                assert not thread.is_alive(), f"run() did not return within {timeout} s"
                assert outcome, "run() raised"
                return outcome[0]

            return Running(joined, lambda: not thread.is_alive())
        future = self.kit.loop.submit(raw.run())
        return Running(lambda timeout: Loop.result(future, timeout), future.done)

    def request_stop(self) -> None:
        """Ask ``run()`` to stop gracefully: from this thread (thread kind), on the loop (async)."""
        raw = self.raw
        if isinstance(raw, q.Worker):
            raw.request_stop()
        else:
            self.kit.loop.call(raw.request_stop)

    def close(self) -> None:
        if self._started:
            self.stop()


# --- the kit ---------------------------------------------------------------------------


class _Shared:
    """What the kits derived from one another share, closed once at the end of the test."""

    def __init__(self, kind: str) -> None:
        self.loop = Loop() if kind == "async" else None
        self.handles: list[WorkerHandle] = []
        self.async_engines: list[AsyncEngine] = []
        self.sync_engines: list[Engine] = []
        self.default_async_engine: AsyncEngine | None = None

    def close(self) -> None:
        try:
            for handle in reversed(self.handles):
                handle.close()
        finally:
            try:
                if self.loop is not None:
                    engines = self.async_engines

                    async def dispose() -> None:
                        for engine in engines:
                            await engine.dispose()

                    try:
                        self.loop.run(dispose())
                    finally:
                        self.loop.close()
            finally:
                for engine in self.sync_engines:
                    engine.dispose()


class Kit:
    """One worker kind on one test database: producer client, workers, engines."""

    def __init__(
        self,
        kind: str,
        db: Db,
        notify: q.InMemoryNotify,
        *,
        shared: _Shared | None = None,
        job_types: q.JobTypes = app.job_types,
        clock: Callable[[], dt.datetime] | None = None,
        engine: Engine | AsyncEngine | None = None,
    ) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.db = db
        self.notify = notify
        self.job_types = job_types
        self.clock = clock
        self._shared = shared or _Shared(kind)
        self._engine = engine
        options: dict[str, Any] = {"notify": notify}
        if clock is not None:
            options["clock"] = clock
        self.client = q.Queuert(db.engine, job_types, **options)
        """The producer: starts chains and reads, on the test database's sync engine."""
        self.worker_client: q.Queuert | q.AsyncQueuert
        if kind == "thread":
            if engine is None or engine is db.engine:
                self.worker_client = self.client
            else:
                assert isinstance(engine, Engine)
                self.worker_client = q.Queuert(engine, job_types, **options)
        else:
            async_engine = engine if engine is not None else self._default_async_engine()
            assert isinstance(async_engine, AsyncEngine)
            self.worker_client = q.AsyncQueuert(async_engine, job_types, **options)

    @property
    def loop(self) -> Loop:
        assert self._shared.loop is not None, "the thread kind has no event loop"
        return self._shared.loop

    @property
    def is_async(self) -> bool:
        return self.kind == "async"

    def _default_async_engine(self) -> AsyncEngine:
        if self._shared.default_async_engine is None:
            new = self.new_engine()
            assert isinstance(new, AsyncEngine)
            self._shared.default_async_engine = new
        engine = self._shared.default_async_engine
        assert engine is not None
        return engine

    def new_engine(self, **options: Any) -> Engine | AsyncEngine:
        """An engine of this kind's flavour on the test database; disposed at the end."""
        if self.kind == "thread":
            engine = create_engine(self.db.url, **options)
            if engine.dialect.name == "sqlite":
                q.prepare_engine(engine)
            self._shared.sync_engines.append(engine)
            return engine
        async_engine = create_async_engine(async_url(self.db), **options)
        self._shared.async_engines.append(async_engine)
        return async_engine

    def using(
        self,
        *,
        job_types: q.JobTypes | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        engine: Engine | AsyncEngine | None = None,
    ) -> Kit:
        """A kit like this one (same loop, notify, database) with other types, clock or engine."""
        return Kit(
            self.kind,
            self.db,
            self.notify,
            shared=self._shared,
            job_types=job_types or self.job_types,
            clock=clock or self.clock,
            engine=engine or self._engine,
        )

    @property
    def worker_engine(self) -> Engine:
        """The sync ``Engine`` under the worker's statements (an async engine's ``sync_engine``)."""
        engine = self.worker_client.engine
        return engine if isinstance(engine, Engine) else engine.sync_engine

    def worker(self, **options: Any) -> WorkerHandle:
        """A worker of this kind (``Queuert.worker`` / ``AsyncQueuert.worker`` options)."""
        handle = WorkerHandle(self, self.worker_client.worker(**options))
        self._shared.handles.append(handle)
        return handle

    def scalar_on_worker_connection(self, sql: str) -> Any:
        """One value read on a connection of the worker's engine (from its pool).

        Ended by COMMIT: a ROLLBACK would make psycopg deallocate the
        connection's prepared statements, which some tests look at.
        """
        engine = self.worker_client.engine
        if isinstance(engine, Engine):
            with engine.connect() as conn:
                value = conn.exec_driver_sql(sql).scalar_one()
                conn.commit()
                return value

        async def read() -> Any:
            async with engine.connect() as conn:
                value = (await conn.exec_driver_sql(sql)).scalar_one()
                await conn.commit()
                return value

        return self.loop.run(read())

    def cleanup(self, **options: Any) -> int:
        """``cleanup`` through the worker's client (``Queuert`` / ``AsyncQueuert``)."""
        client = self.worker_client
        if isinstance(client, q.Queuert):
            return client.cleanup(**options)
        return self.loop.run(client.cleanup(**options))

    def close(self) -> None:
        self._shared.close()


@contextmanager
def open_kit(kind: str, db: Db, notify: q.InMemoryNotify | None = None) -> Iterator[Kit]:
    kit = Kit(kind, db, notify or q.InMemoryNotify())
    try:
        yield kit
    finally:
        kit.close()
