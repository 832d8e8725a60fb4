"""The requests the worker flows make of a driver, as small records.

A flow (``_flow``) yields one of these and receives its result; the thread
driver performs it with plain calls, the asyncio driver awaits it (SQL through
``run_sync``). An effect that fails is thrown back into the flow, except a
handler's own exception, which :class:`CallHandler` returns as
:class:`HandlerEnded` so the flow never catches ``BaseException`` itself.

Sessions and savepoints are opaque handles: whatever the driver's
:class:`Open` and :class:`Savepoint` returned. :data:`PERFORMED_BY` names the
driver method that performs each effect, so both drivers dispatch alike.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from queuert_sa._attempt import AttemptState

from ._config import Registration

Unit = Callable[[Any], Any]
"""A state-layer operation or transition bound to its arguments: ``unit(session)``."""


@dataclass(frozen=True)
class Look:
    """Run ``unit`` on a connection of its own, ended by COMMIT (a read)."""

    unit: Unit


@dataclass(frozen=True)
class Open:
    """A new session for an attempt; on a single-writer database, in a write transaction."""


@dataclass(frozen=True)
class Run:
    """Run ``unit(session)`` in the session's transaction."""

    session: Any
    unit: Unit


@dataclass(frozen=True)
class End:
    """Commit, roll back (quietly: a connection that cannot is discarded) or close a session."""

    session: Any
    how: Literal["commit", "rollback", "close"]


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
class EndSavepoint:
    """Release (``commit=True``) or roll back the savepoint."""

    savepoint: Any
    commit: bool


@dataclass(frozen=True)
class Writer:
    """Take (``take=True``) or drop this task's hold on the SQLite writer lock; no-op elsewhere."""

    take: bool


@dataclass(frozen=True)
class CallHandler:
    """Call the handler on a view of ``state`` over ``session``; returns :class:`HandlerEnded`.

    The driver builds the view (``Attempt``/``AsyncAttempt``), applies its
    SAVEPOINT policy (lazy on threads) and, on asyncio, the atomic timeout.
    """

    registration: Registration
    state: AttemptState
    session: Any
    group: tuple[AttemptState, ...] = ()
    """A ``batch_handler``'s attempts (``state`` is the first): it takes them all at once."""


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
    """Run ``unit`` in a new session's transaction and commit it.

    ``"plain"``: the caller keeps its writer hold; ``"write"``: writer lock and
    ``BEGIN IMMEDIATE``; ``"owned"``: a write transaction, after checking that
    ``state`` still owns its job (raises the ownership error if not).
    """

    unit: Unit
    kind: Literal["plain", "write", "owned"]
    state: AttemptState | None = None


@dataclass(frozen=True)
class HoldLease:
    """Start renewing a staged attempt's lease (its first lease just committed)."""

    state: AttemptState
    lease: dt.timedelta


@dataclass(frozen=True)
class ReleaseLease:
    """Stop renewing the attempt's lease (no-op if it was never held)."""

    state: AttemptState


@dataclass(frozen=True)
class Query:
    """A fact about the worker: ``"stopping"`` (bool) or ``"held_ids"`` (leases it keeps)."""

    what: Literal["stopping", "held_ids"]


@dataclass(frozen=True)
class HintIdle:
    """Wake one idle slot, if any, to look for more work."""


@dataclass(frozen=True)
class Wait:
    """Wait up to ``seconds``: for a wake hint (``"hint"``) or for the worker to stop."""

    seconds: float
    until: Literal["hint", "stop"]


Effect = (
    Look
    | Open
    | Run
    | End
    | Savepoint
    | SavepointOpen
    | EndSavepoint
    | Writer
    | CallHandler
    | WriteOwned
    | InTransaction
    | HoldLease
    | ReleaseLease
    | Query
    | HintIdle
    | Wait
)

T = TypeVar("T")

Flow = Generator[Effect, Any, T]
"""A flow: yields effects, is sent their results, returns ``T``."""

#: The driver method that performs each effect (each driver has all of them).
PERFORMED_BY: dict[type[Any], str] = {
    Run: "run",
    Look: "look",
    Open: "open",
    End: "end",
    Savepoint: "savepoint",
    SavepointOpen: "savepoint_open",
    EndSavepoint: "end_savepoint",
    Writer: "writer",
    CallHandler: "call_handler",
    WriteOwned: "write_owned",
    InTransaction: "in_transaction",
    HoldLease: "hold_lease",
    ReleaseLease: "release_lease",
    Query: "query",
    HintIdle: "hint_idle",
    Wait: "wait",
}
