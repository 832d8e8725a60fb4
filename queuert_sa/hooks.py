"""Post-commit effects, buffered per transaction and driven by ``Session`` events.

Anything that must not happen unless the caller's transaction commits (waking
workers, chain-completed signals) is registered with :func:`on_commit`. The
effect is attached to the session's innermost transaction: the root one or the
current SAVEPOINT (``begin_nested()``).

* SAVEPOINT released: its effects move to the enclosing transaction.
* SAVEPOINT rolled back: its effects are dropped; the outer ones stay.
* Root COMMIT: effects run after the COMMIT, in the order they were added.
  An exception in an effect is logged, never raised into the caller's commit.
* Root ROLLBACK (or close without commit): everything is dropped.

Applications may use :func:`on_commit` for their own side effects too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from queuert_sa._logs import get_logger

__all__ = ["on_commit", "pending_effects"]

log = get_logger("queuert_sa.hooks")

_KEY = "queuert_sa.hooks"

Effect = Callable[[], None]


@dataclass
class _Buffers:
    by_transaction: dict[SessionTransaction, list[Effect]] = field(default_factory=lambda: {})


def _frame(tx: SessionTransaction) -> SessionTransaction:
    # Effects live on the root or a SAVEPOINT, never on an ORM "subtransaction".
    while tx.parent is not None and not tx.nested:
        tx = tx.parent
    return tx


def _after_commit(session: Session) -> None:
    buffers: _Buffers | None = session.info.get(_KEY)
    if buffers is None:
        return
    # During after_commit the committing transaction is still the current one:
    # the innermost SAVEPOINT when a SAVEPOINT is released, else the root.
    tx = session.get_nested_transaction() or session.get_transaction()
    if tx is None:
        return
    effects = buffers.by_transaction.pop(tx, None)
    if not effects:
        return
    if tx.nested and tx.parent is not None:
        buffers.by_transaction.setdefault(_frame(tx.parent), []).extend(effects)
        return
    for effect in effects:
        try:
            effect()
        except Exception:
            log.exception("post-commit effect %r failed; the transaction is committed", effect)


def _after_transaction_end(session: Session, tx: SessionTransaction) -> None:
    buffers: _Buffers | None = session.info.get(_KEY)
    if buffers is not None:
        # Still here = not committed (after_commit pops first): drop it.
        buffers.by_transaction.pop(tx, None)


_listening = False
_listening_lock = threading.Lock()


def _install(session: Session) -> _Buffers:
    global _listening
    if not _listening:
        # Listeners on the Session class, installed once: per-instance
        # listeners would cost an event-dispatch copy for every new session.
        # Sessions that never buffered an effect pay one dict lookup per event.
        with _listening_lock:
            if not _listening:
                event.listen(Session, "after_commit", _after_commit)
                event.listen(Session, "after_transaction_end", _after_transaction_end)
                _listening = True
    buffers: _Buffers | None = session.info.get(_KEY)
    if buffers is None:
        buffers = _Buffers()
        session.info[_KEY] = buffers
    return buffers


def on_commit(session: Session, effect: Effect) -> None:
    """Run ``effect()`` after the session's current transaction commits.

    Begins the session's transaction if none is active (as any SQL through the
    session would). If the innermost transaction is a SAVEPOINT, the effect is
    dropped when that SAVEPOINT rolls back.
    """
    buffers = _install(session)
    tx = session.get_nested_transaction() or session.get_transaction()
    if tx is None:
        tx = session.begin()
    buffers.by_transaction.setdefault(_frame(tx), []).append(effect)


def pending_effects(session: Session) -> int:
    """Number of effects waiting for a commit (for tests and diagnostics)."""
    buffers: _Buffers | None = session.info.get(_KEY)
    if buffers is None:
        return 0
    return sum(len(v) for v in buffers.by_transaction.values())
