"""What the two drivers' performers share: dispatch, bookkeeping, the effects without IO.

A performer runs flows for one thread or task (a slot, a drain, a lease
renewal). It dispatches each effect by :data:`PERFORMED_BY`; it remembers the
sessions and leases a flow opened, so that a flow ended by a
``BaseException`` (a cancelled task, ``SystemExit``) leaves nothing open; and
it performs the effects that need no IO the same way for both drivers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Collection
from typing import Any, Generic, Protocol, TypeVar

from queuert_sa._attempt import AttemptState

from . import _effects as fx
from ._config import WorkerCore

SessionT = TypeVar("SessionT")
LockT = TypeVar("LockT", bound="Releasable")


class Releasable(Protocol):
    def release(self) -> None: ...


class Hold(Generic[LockT]):
    """One task's hold on the SQLite writer lock (no lock: always a no-op)."""

    def __init__(self, lock: LockT | None) -> None:
        self.lock = lock
        self.held = False

    def wanted(self) -> bool:
        """Whether taking would acquire the lock (there is one, and it is not held)."""
        return self.lock is not None and not self.held

    def drop(self) -> None:
        if self.held and self.lock is not None:
            self.held = False
            self.lock.release()


class DriverWorker(Protocol):
    """What a performer asks of its worker besides the :class:`WorkerCore` settings."""

    def hold_lease(self, state: AttemptState, lease: dt.timedelta) -> None: ...

    def release_lease(self, state: AttemptState) -> None: ...

    def held_ids(self) -> Collection[uuid.UUID]: ...

    def is_stopping(self) -> bool: ...

    def hint_idle(self) -> None: ...


def _sync_object(handle: Any, attribute: str) -> Any:
    # AsyncSession/AsyncSessionTransaction wrap the sync objects the ORM tracks.
    return getattr(handle, attribute, handle)


class PerformerBase(Generic[SessionT]):
    """The dispatch table and bookkeeping of a performer (see the module documentation)."""

    def __init__(self, core: WorkerCore, worker: DriverWorker, hold: Hold[Any]) -> None:
        self.core = core
        self.worker = worker
        self.hold = hold
        self.sessions: list[SessionT] = []
        self.leases: list[AttemptState] = []
        self.perform: dict[type[Any], Callable[[Any], Any]] = {
            effect: getattr(self, name) for effect, name in fx.PERFORMED_BY.items()
        }

    def opened(self, session: SessionT) -> SessionT:
        """Remember a session a flow opened (closed by :meth:`forget` or the clean-up)."""
        self.sessions.append(session)
        return session

    def forget(self, session: SessionT) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def left_open(self) -> list[SessionT]:
        """Release the leases a dead flow left; the sessions to close, then drop the writer."""
        for state in list(self.leases):
            self.release_lease(fx.ReleaseLease(state))
        sessions, self.sessions = self.sessions, []
        return sessions

    # --- the effects without IO ----------------------------------------------------------

    def savepoint_open(self, effect: fx.SavepointOpen) -> bool:
        wanted = _sync_object(effect.savepoint, "sync_transaction")
        current = _sync_object(effect.session, "sync_session").get_nested_transaction()
        while current is not None:
            if current is wanted:
                return True
            current = current.parent
        return False

    def hold_lease(self, effect: fx.HoldLease) -> None:
        self.worker.hold_lease(effect.state, effect.lease)
        self.leases.append(effect.state)

    def release_lease(self, effect: fx.ReleaseLease) -> None:
        self.worker.release_lease(effect.state)
        if effect.state in self.leases:
            self.leases.remove(effect.state)

    def query(self, effect: fx.Query) -> object:
        if effect.what == "stopping":
            return self.worker.is_stopping()
        return self.worker.held_ids()

    def hint_idle(self, _: fx.HintIdle) -> None:
        self.worker.hint_idle()
