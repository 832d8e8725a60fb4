"""The asyncio driver's IO: its performer, waker and SQLite writer lock.

:class:`AsyncPerformer` performs the shared flows' effects by awaiting them,
for one task (a slot, a drain, a lease renewal), and is the
:class:`AsyncStagedPort` of the attempts it runs. A flow runs in one greenlet
(``greenlet_spawn``), as SQLAlchemy runs an ``AsyncSession``'s sync code:
its statements are the sync ones, called directly on the sessions' sync
sides, and only what must be awaited (the driver's IO, the handler, the
writer lock, a wait) leaves the greenlet, through ``await_``. One greenlet
per flow, not one per statement: most of an asyncio attempt's Python time
had been that bridging. The handler is awaited under the atomic timeout; the
SAVEPOINT opens when the handler first reaches the database
(:mod:`._first_use`); a cancelled flow is closed and its sessions closed,
which rolls its transaction back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import weakref
from collections import deque
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import greenlet_spawn

from queuert_sa._attempt import AsyncAttempt, AttemptState
from queuert_sa._logs import get_logger
from queuert_sa.state._awaited import await_
from queuert_sa.state.capabilities import BEGIN_IMMEDIATE
from queuert_sa.state.operations import database_errors

from . import _effects as fx
from . import _first_use as first_use
from . import _reports as reports
from . import _staged as staged
from ._guard import end, guard
from ._performer import Hold, PerformerBase

if TYPE_CHECKING:
    from ._asyncio import AsyncWorker

log = get_logger("queuert_sa.worker")

T = TypeVar("T")

# One writer per SQLite database: the async workers of one event loop queue
# on one lock per engine (asyncio locks belong to their loop).
_writer_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Engine, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def writer_lock(engine: Engine) -> asyncio.Lock:
    per_loop = _writer_locks.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    lock = per_loop.get(engine)
    if lock is None:
        lock = per_loop[engine] = asyncio.Lock()
    return lock


class WriterHold(Hold[asyncio.Lock]):
    """A task's hold on the SQLite writer lock (no-op without one)."""

    async def take(self) -> None:
        if self.wanted():
            assert self.lock is not None
            await self.lock.acquire()
            self.held = True


class Waker:
    """Counted wake hints for idle slot tasks (see the thread worker's ``_Waker``)."""

    def __init__(self, limit: int) -> None:
        self._hints = 0
        self._limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def _wake_one(self) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def hint_idle(self) -> None:
        """Wake one slot that is asleep now, if any (no hint is kept for later)."""
        self._wake_one()

    def hint(self, count: int = 1) -> None:
        for _ in range(count):
            if not self._wake_one():
                self._hints = min(self._hints + 1, self._limit)

    async def wait(self, timeout: float) -> None:
        if self._hints > 0:
            self._hints -= 1
            return
        if self._closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def close(self) -> None:
        self._closed = True
        while self._wake_one():
            pass


async def _rollback_quietly(session: AsyncSession) -> None:
    try:
        await session.run_sync(end, "rollback")
    except Exception:
        log.debug("rollback failed (connection lost?); discarding the connection", exc_info=True)
        # A connection whose rollback failed (e.g. cancelled in the middle of a
        # statement) may still hold its transaction, and on SQLite the write
        # lock: close it now rather than when it is garbage-collected.
        with contextlib.suppress(Exception):
            await session.run_sync(end, "invalidate")


def _commit_and_close(session: Session) -> None:
    end(session, "commit")
    end(session, "close")


def _rollback_inline(session: AsyncSession) -> None:
    """:func:`_rollback_quietly`, from inside a flow's greenlet."""
    try:
        end(session.sync_session, "rollback")
    except Exception:
        log.debug("rollback failed (connection lost?); discarding the connection", exc_info=True)
        with contextlib.suppress(Exception):
            end(session.sync_session, "invalidate")


async def wait_for_event(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class AsyncPerformer(PerformerBase[AsyncSession]):
    """Performs the flows' effects by awaiting them, for one task (a slot, drain, renewal).

    Also the :class:`AsyncStagedPort` of the attempts it runs.
    """

    def __init__(self, worker: AsyncWorker, hold: WriterHold) -> None:
        super().__init__(worker, worker, hold)
        self._worker = worker
        self._hold = hold

    async def drive(self, steps: fx.Flow[T], *, outermost: bool = True) -> T:
        """Run a flow to its end, in one greenlet; the outermost one cleans up after cancellation."""
        return await greenlet_spawn(self._drive, steps, outermost)

    def _drive(self, steps: fx.Flow[T], outermost: bool) -> T:
        # In the flow's greenlet: the effects without awaits run as plain calls,
        # the others' coroutines are awaited by the task, through ``await_``.
        perform = self.perform
        try:
            effect = steps.send(None)
            while True:
                try:
                    result = perform[type(effect)](effect)
                    if inspect.isawaitable(result):
                        result = await_(result)
                except Exception as exc:
                    effect = steps.throw(exc)
                else:
                    effect = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except BaseException:
            # Cancelled (stop() after the grace period, a second signal):
            # closing the sessions rolls back the whole transaction,
            # acquisition included, so the job is pending again as it was.
            steps.close()
            if outermost:
                for session in self.left_open():
                    with contextlib.suppress(Exception):
                        end(session.sync_session, "close")
                self.hold.drop()  # after the close: its transaction held the write lock
            raise

    # --- sessions ----------------------------------------------------------------------

    # Called in the flow's greenlet (see :meth:`_drive`): sync calls on the
    # sessions' sync sides, whose IO SQLAlchemy awaits through ``await_``.

    def open(self, _: fx.Open) -> AsyncSession:
        session = self._worker.session_factory()
        try:
            if self._worker.ctx.capabilities.single_writer:
                with database_errors("begin a write transaction", self._worker.ctx.models):
                    session.sync_session.connection(execution_options={BEGIN_IMMEDIATE: True})
        except BaseException:
            end(session.sync_session, "close")
            raise
        return self.opened(session)

    def end(self, effect: fx.End) -> None:
        session = effect.session
        if effect.how == "rollback":
            _rollback_inline(session)
            return
        end(session.sync_session, effect.how)
        if effect.how == "close":
            self.forget(session)

    @staticmethod
    def run(effect: fx.Run) -> Any:
        return effect.unit(effect.session.sync_session)

    def look(self, effect: fx.Look) -> Any:
        # Connecting happens here, before any state operation: translate its errors too.
        with database_errors("connect to the database", self._worker.ctx.models):
            conn = self._worker.engine.sync_engine.connect()
        try:
            result = effect.unit(conn)
            # Ended by COMMIT: a ROLLBACK makes psycopg drop its prepared statements.
            conn.commit()
            return result
        finally:
            conn.close()

    @staticmethod
    def savepoint(effect: fx.Savepoint) -> SessionTransaction:
        session: AsyncSession = effect.session
        return session.sync_session.begin_nested()

    @staticmethod
    def end_savepoint(effect: fx.EndSavepoint) -> None:
        savepoint = effect.savepoint
        if isinstance(savepoint, AsyncSessionTransaction):
            savepoint = savepoint.sync_transaction
        assert isinstance(savepoint, SessionTransaction)
        if effect.commit:
            savepoint.commit()
        else:
            savepoint.rollback()

    async def writer(self, effect: fx.Writer) -> None:
        if effect.take:
            await self._hold.take()
        else:
            self._hold.drop()

    async def wait(self, effect: fx.Wait) -> None:
        if effect.until == "hint":
            await self._worker.waker.wait(effect.seconds)
        else:
            await wait_for_event(self._worker.stopping, effect.seconds)

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncGenerator[AsyncSession]:
        """A new session in a write transaction (SQLite: writer lock + BEGIN IMMEDIATE)."""
        await self._hold.take()
        try:
            session = self._worker.session_factory()
            closed = False
            try:
                if self._worker.ctx.capabilities.single_writer:
                    with database_errors("begin a write transaction", self._worker.ctx.models):
                        await session.connection(execution_options={BEGIN_IMMEDIATE: True})
                yield session
                await greenlet_spawn(_commit_and_close, session.sync_session)  # one hop, not two
                closed = True
            except BaseException:
                await _rollback_quietly(session)
                raise
            finally:
                if not closed:
                    await session.run_sync(end, "close")
        finally:
            self._hold.drop()

    async def in_transaction(self, effect: fx.InTransaction) -> Any:
        if effect.kind == "plain":
            async with self._worker.session_factory() as session, session.begin():
                return await session.run_sync(effect.unit)
        if effect.kind == "write":
            async with self._write_transaction() as session:
                return await session.run_sync(effect.unit)
        assert effect.state is not None
        async with self.owned_transaction(effect.state) as session:
            return await session.run_sync(effect.unit)

    # --- the handler and its staged port -------------------------------------------------

    async def call_handler(self, effect: fx.CallHandler) -> fx.HandlerEnded:
        registration = effect.registration
        state = effect.state
        staged = registration.mode == "staged"
        port = self if staged else None
        attempts: list[AsyncAttempt[Any, Any]] = [
            AsyncAttempt(s, effect.session, port=port) for s in effect.group or (state,)
        ]
        given = attempts if effect.group else attempts[0]
        session = effect.session.sync_session
        lift = guard(session, state)
        # The atomic SAVEPOINT, unless opened up front: when the handler reaches the database.
        on_first_use = not staged and state.savepoint is None
        lift_shadows = first_use.open_on_first_use(session, state) if on_first_use else None
        leave = reports.enter(self.core, state)
        try:
            if staged:
                value = await registration.fn(given)
            else:
                async with asyncio.timeout(registration.timeout.total_seconds()):
                    value = await registration.fn(given)
            ended = fx.HandlerEnded(value=value)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task was cancelled (stop(), a second signal)
            # A future the handler awaited was cancelled by someone else: its error.
            ended = fx.HandlerEnded(error=exc)
        except BaseException as exc:
            ended = fx.HandlerEnded(error=exc)
        finally:
            leave()
            lift()
            if lift_shadows is not None:
                lift_shadows()
        if on_first_use and first_use.needs_savepoint(session, state):
            # Objects added, the database never reached: their SAVEPOINT, now.
            try:
                state.savepoint = await greenlet_spawn(first_use.begin_nested, session)
            except Exception as exc:
                return fx.HandlerEnded(error=ended.error or exc)
        return ended

    async def write_owned(self, effect: fx.WriteOwned) -> None:
        async with AsyncAttempt(effect.state, effect.session, port=self).transaction():
            pass

    async def commit_prepare(
        self,
        state: AttemptState,
        session: AsyncSession,
        savepoint: AsyncSessionTransaction | None = None,
    ) -> None:
        steps = staged.commit_prepare(self._worker, state, session)
        if savepoint is None:
            await self.drive(steps, outermost=False)
            return
        await greenlet_spawn(self._release_then_drive, savepoint, steps)

    def _release_then_drive(self, savepoint: AsyncSessionTransaction, steps: fx.Flow[None]) -> None:
        # prepare()'s SAVEPOINT released and the flow run in one greenlet, not two.
        sync = savepoint.sync_transaction
        assert sync is not None  # begun: prepare() awaited begin_nested()
        sync.commit()
        self._drive(steps, outermost=False)

    @asynccontextmanager
    async def owned_transaction(self, state: AttemptState) -> AsyncGenerator[AsyncSession]:
        async with self._write_transaction() as session:
            await self.drive(staged.check_ownership(self._worker, state, session), outermost=False)
            lift = guard(session.sync_session, state)
            try:
                yield session
            finally:
                lift()

    async def write_outcome(self, state: AttemptState, session: AsyncSession) -> None:
        await self.drive(staged.write_outcome(self._worker, state, session), outermost=False)
