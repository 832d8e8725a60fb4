"""The thread driver's IO: its performer, waker and SQLite writer lock.

:class:`Performer` performs the shared flows' effects with plain calls, for
one thread (a slot, a drain, the lease keeper), and is the
:class:`StagedPort` of the attempts it runs; the atomic SAVEPOINT opens
lazily, on the handler's first use of ``attempt.session``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, SessionTransaction

from queuert_sa._attempt import Attempt, AttemptState
from queuert_sa._logs import get_logger
from queuert_sa.state.capabilities import BEGIN_IMMEDIATE
from queuert_sa.state.operations import database_errors

from . import _effects as fx
from . import _reports as reports
from . import _staged as staged
from ._guard import end, guard
from ._performer import Hold, PerformerBase

if TYPE_CHECKING:
    from ._threads import Worker

log = get_logger("queuert_sa.worker")

T = TypeVar("T")

# SQLite admits one writer per database file. Worker threads of one process
# queue on this lock instead of spinning in SQLite's busy handler.
_sqlite_writer_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_sqlite_writer_locks_guard = threading.Lock()


def writer_lock(engine: Engine) -> threading.Lock:
    with _sqlite_writer_locks_guard:
        lock = _sqlite_writer_locks.get(engine)
        if lock is None:
            lock = _sqlite_writer_locks[engine] = threading.Lock()
        return lock


class WriterHold(Hold[threading.Lock]):
    """One thread's hold on the SQLite writer lock (no-op on PostgreSQL)."""

    def take(self) -> None:
        if self.wanted():
            assert self.lock is not None
            self.lock.acquire()
            self.held = True


class Waker:
    """Wake hints for idle slots. Hints are counted, so one that arrives
    between "found nothing" and "sleep" is not lost: the sleep returns at once."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._hints = 0
        self._limit = limit
        self._closed = False
        self._idle = 0

    def hint(self, count: int = 1) -> None:
        with self._cond:
            self._hints = min(self._hints + count, self._limit)
            self._cond.notify(count)

    def hint_idle(self) -> None:
        """Wake one slot that is asleep now, if any (no hint is kept for later)."""
        with self._cond:
            if self._idle > self._hints:
                self._hints += 1
                self._cond.notify(1)

    def wait(self, timeout: float) -> None:
        with self._cond:
            if self._hints == 0 and not self._closed:
                self._idle += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._idle -= 1
            if self._hints > 0:
                self._hints -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _rollback_quietly(session: Session) -> None:
    try:
        end(session, "rollback")
    except Exception:
        log.debug("rollback failed (connection lost?)", exc_info=True)


class Performer(PerformerBase[Session]):
    """Performs the flows' effects with plain calls, for one thread (a slot, drain, keeper).

    Also the :class:`StagedPort` of the attempts it runs.
    """

    def __init__(self, worker: Worker, hold: WriterHold) -> None:
        super().__init__(worker, worker, hold)
        self._worker = worker
        self._hold = hold

    def drive(self, steps: fx.Flow[T], *, outermost: bool = True) -> T:
        """Run a flow to its end; the outermost one cleans up after a ``BaseException``."""
        try:
            effect = steps.send(None)
            while True:
                try:
                    result = self.perform[type(effect)](effect)
                except Exception as exc:
                    effect = steps.throw(exc)
                else:
                    effect = steps.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except BaseException:
            steps.close()
            if outermost:
                for session in self.left_open():
                    try:
                        end(session, "close")
                    except Exception:
                        log.debug("closing a session failed", exc_info=True)
                self.hold.drop()  # after the close: its transaction held the write lock
            raise

    # --- sessions ----------------------------------------------------------------------

    def open(self, _: fx.Open) -> Session:
        session = self._worker.session_factory()
        try:
            if self._worker.ctx.capabilities.single_writer:
                with database_errors("begin a write transaction", self._worker.ctx.models):
                    session.connection(execution_options={BEGIN_IMMEDIATE: True})
        except BaseException:
            session.close()
            raise
        return self.opened(session)

    def end(self, effect: fx.End) -> None:
        session = effect.session
        if effect.how == "rollback":
            _rollback_quietly(session)
            return
        end(session, effect.how)
        if effect.how == "close":
            self.forget(session)

    @staticmethod
    def run(effect: fx.Run) -> Any:
        return effect.unit(effect.session)

    def look(self, effect: fx.Look) -> Any:
        # Connecting happens here, before any state operation: translate its errors too.
        with database_errors("connect to the database", self._worker.ctx.models):
            conn = self._worker.engine.connect()
        with conn:
            result = effect.unit(conn)
            # Ended by COMMIT: the pool's reset would roll back, which makes
            # psycopg drop every prepared statement of the connection.
            conn.commit()
            return result

    @staticmethod
    def savepoint(effect: fx.Savepoint) -> SessionTransaction:
        return effect.session.begin_nested()  # type: ignore[no-any-return]

    @staticmethod
    def end_savepoint(effect: fx.EndSavepoint) -> None:
        if effect.commit:
            effect.savepoint.commit()
        else:
            effect.savepoint.rollback()

    def writer(self, effect: fx.Writer) -> None:
        if effect.take:
            self._hold.take()
        else:
            self._hold.drop()

    def wait(self, effect: fx.Wait) -> None:
        if effect.until == "hint":
            self._worker.waker.wait(effect.seconds)
        else:
            self._worker.stopping.wait(effect.seconds)

    @contextmanager
    def _write_transaction(self) -> Generator[Session]:
        """A new session in a write transaction (SQLite: writer lock + BEGIN IMMEDIATE).

        Commits on success, rolls back on error, always closes.
        """
        self._hold.take()
        try:
            # A scoped session factory returns the attempt's own (guarded)
            # session here: the worker's calls go past the guard.
            session = self._worker.session_factory()
            try:
                if self._worker.ctx.capabilities.single_writer:
                    with database_errors("begin a write transaction", self._worker.ctx.models):
                        session.connection(execution_options={BEGIN_IMMEDIATE: True})
                yield session
                end(session, "commit")
            except BaseException:
                _rollback_quietly(session)
                raise
            finally:
                end(session, "close")
        finally:
            self._hold.drop()

    def in_transaction(self, effect: fx.InTransaction) -> Any:
        if effect.kind == "plain":
            with self._worker.session_factory() as session, session.begin():
                return effect.unit(session)
        if effect.kind == "write":
            with self._write_transaction() as session:
                return effect.unit(session)
        assert effect.state is not None
        with self.owned_transaction(effect.state) as session:
            return effect.unit(session)

    # --- the handler and its staged port -------------------------------------------------

    def call_handler(self, effect: fx.CallHandler) -> fx.HandlerEnded:
        state, session = effect.state, effect.session
        staged = effect.registration.mode == "staged"

        def open_savepoint() -> None:
            if state.savepoint is None:  # a batch handler's attempts share one
                state.savepoint = session.begin_nested()

        opener = None if staged or state.savepoint is not None else open_savepoint
        port = self if staged else None
        attempts: list[Attempt[Any, Any]] = [
            Attempt(s, session, port=port, on_first_use=opener) for s in effect.group or (state,)
        ]
        lift = guard(session, state)
        leave = reports.enter(self.core, state)
        try:
            return fx.HandlerEnded(
                value=effect.registration.fn(attempts if effect.group else attempts[0])
            )
        except BaseException as exc:
            return fx.HandlerEnded(error=exc)
        finally:
            leave()
            lift()

    def write_owned(self, effect: fx.WriteOwned) -> None:
        with Attempt(effect.state, effect.session, port=self).transaction():
            pass

    def commit_prepare(self, state: AttemptState, session: Session) -> None:
        self.drive(staged.commit_prepare(self._worker, state, session), outermost=False)

    @contextmanager
    def owned_transaction(self, state: AttemptState) -> Generator[Session]:
        with self._write_transaction() as session:
            self.drive(staged.check_ownership(self._worker, state, session), outermost=False)
            lift = guard(session, state)
            try:
                yield session
            finally:
                lift()

    def write_outcome(self, state: AttemptState, session: Session) -> None:
        self.drive(staged.write_outcome(self._worker, state, session), outermost=False)
