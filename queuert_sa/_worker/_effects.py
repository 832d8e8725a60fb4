"""The requests the worker flows make of a driver, as small records.

A flow (``_flow``) yields one of these and receives its result; the thread
driver performs it with plain calls, the asyncio driver awaits it (SQL through
``run_sync``). An effect that fails is thrown back into the flow, except a
handler's own exception, which :class:`CallHandler` returns as
:class:`HandlerEnded` so the flow never catches ``BaseException`` itself.

Sessions and savepoints are opaque handles: whatever the driver's
:class:`Open` and :class:`Savepoint` returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from queuert_sa._attempt import AttemptState

from ._config import Registration

Unit = Callable[[Any], Any]
"""A state-layer operation or transition bound to its arguments: ``unit(session)``."""


@dataclass(frozen=True)
class Look:
    """Run ``unit`` on a connection of its own, ended by COMMIT (a read; see ``_threads``)."""

    unit: Unit


@dataclass(frozen=True)
class Open:
    """A new session for an attempt; on a single-writer database, in a write transaction."""


@dataclass(frozen=True)
class Run:
    """Run ``unit(session)`` in the given session's transaction."""

    session: Any
    unit: Unit


@dataclass(frozen=True)
class Commit:
    session: Any


@dataclass(frozen=True)
class Rollback:
    """Roll back, quietly: a connection that cannot is discarded."""

    session: Any


@dataclass(frozen=True)
class Close:
    """Close the session (idempotent)."""

    session: Any


@dataclass(frozen=True)
class Savepoint:
    """``begin_nested()`` on the session; returns the savepoint."""

    session: Any


@dataclass(frozen=True)
class SavepointOpen:
    """Whether the savepoint is still open in the session (no IO)."""

    session: Any
    savepoint: Any


@dataclass(frozen=True)
class ReleaseSavepoint:
    savepoint: Any


@dataclass(frozen=True)
class RollbackSavepoint:
    savepoint: Any


@dataclass(frozen=True)
class TakeWriter:
    """Take this slot's hold on the SQLite writer lock (no-op elsewhere, or if held)."""


@dataclass(frozen=True)
class DropWriter:
    """Release this slot's hold on the writer lock, if held."""


@dataclass(frozen=True)
class CallHandler:
    """Call the handler on a view of ``state`` over ``session``; returns :class:`HandlerEnded`.

    The driver builds the view (``Attempt``/``AsyncAttempt``), applies its
    SAVEPOINT policy (lazy on threads) and, on asyncio, the atomic timeout.
    """

    registration: Registration
    state: AttemptState
    session: Any


@dataclass(frozen=True)
class HandlerEnded:
    """What the handler returned, or the exception it raised (``error``)."""

    value: object = None
    error: BaseException | None = None


@dataclass(frozen=True)
class WriteOwned:
    """Write a staged outcome recorded outside ``transaction()``, as ``transaction()`` would."""

    state: AttemptState
    session: Any


@dataclass(frozen=True)
class InTransaction:
    """Run ``unit`` in a new session's transaction and commit (the slot keeps its hold)."""

    unit: Unit


@dataclass(frozen=True)
class InWriteTransaction:
    """Run ``unit`` in a new write transaction (writer lock, BEGIN IMMEDIATE) and commit."""

    unit: Unit


@dataclass(frozen=True)
class InOwnedTransaction:
    """Run ``unit`` in a new write transaction after checking the attempt still owns its job."""

    state: AttemptState
    unit: Unit


@dataclass(frozen=True)
class HoldLease:
    """Start renewing a staged attempt's lease (its first lease just committed)."""

    state: AttemptState
    lease: Any


@dataclass(frozen=True)
class ReleaseLease:
    """Stop renewing the attempt's lease (no-op if it was never held)."""

    state: AttemptState


@dataclass(frozen=True)
class HeldIds:
    """The jobs whose leases this worker keeps (never reap those)."""


@dataclass(frozen=True)
class Stopping:
    """Whether the worker was asked to stop."""


@dataclass(frozen=True)
class HintIdle:
    """Wake one idle slot, if any, to look for more work."""


@dataclass(frozen=True)
class Sleep:
    """Sleep up to ``seconds`` or until a wake hint."""

    seconds: float


@dataclass(frozen=True)
class Pause:
    """Wait up to ``seconds`` or until the worker stops (recovery backoff)."""

    seconds: float


Effect = (
    Look
    | Open
    | Run
    | Commit
    | Rollback
    | Close
    | Savepoint
    | SavepointOpen
    | ReleaseSavepoint
    | RollbackSavepoint
    | TakeWriter
    | DropWriter
    | CallHandler
    | WriteOwned
    | InTransaction
    | InWriteTransaction
    | InOwnedTransaction
    | HoldLease
    | ReleaseLease
    | HeldIds
    | Stopping
    | HintIdle
    | Sleep
    | Pause
)

#: Ids a drain does not take again (its failed jobs).
Exclude = Collection[uuid.UUID]
