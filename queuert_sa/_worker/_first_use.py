"""The asyncio worker's atomic SAVEPOINT, opened when the handler first reaches the database.

The thread worker opens it when the handler first reads ``attempt.session``.
An ``AsyncSession`` cannot: the property is not awaited. So, while an async
handler runs, the methods of the attempt's sync session that reach the
database (:data:`REACHING`: ``execute``, ``flush``, ``get``, ``connection``,
``begin_nested``, ...) are shadowed by instance attributes, as the guard
shadows ``commit`` (see :mod:`._guard`). Every one of them runs inside the
greenlet ``AsyncSession`` runs sync code in, so the first call can emit the
SAVEPOINT before it does anything else, and then lifts the shadows.

``add()`` and ``add_all()`` reach nothing (``AsyncSession`` calls them
outside that greenlet): objects added before the SAVEPOINT are taken out
and added back inside it, so a rollback to it drops them. A handler that
only added objects gets its SAVEPOINT when it returns (:func:`settle`).

A handler that never reaches the database costs no SAVEPOINT round trips:
two of the five statements of a no-op attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, SessionTransaction

from queuert_sa._attempt import AttemptState

#: The ``Session`` methods that reach the database (or would stage a write through it
#: after loading); shadowed while an async handler has no SAVEPOINT yet.
REACHING = (
    "execute",
    "scalar",
    "scalars",
    "get",
    "get_one",
    "flush",
    "connection",
    "begin_nested",
    "merge",
    "merge_all",
    "refresh",
    "delete",
    "delete_all",
    "bulk_save_objects",
    "bulk_insert_mappings",
    "bulk_update_mappings",
)


def open_on_first_use(session: Session, state: AttemptState) -> Callable[[], None]:
    """Shadow :data:`REACHING` on ``session``: the first call opens ``state.savepoint``.

    Returns what lifts the shadows (idempotent).
    """
    names = [name for name in REACHING if hasattr(type(session), name)]

    def lift() -> None:
        for name in names:
            session.__dict__.pop(name, None)

    def shadow(name: str) -> Callable[..., Any]:
        method = getattr(type(session), name)

        def call(*args: Any, **kwargs: Any) -> Any:
            lift()
            if state.savepoint is None:
                state.savepoint = begin_nested(session)
            return method(session, *args, **kwargs)

        return call

    for name in names:
        setattr(session, name, shadow(name))
    return lift


def begin_nested(session: Session) -> SessionTransaction:
    """A SAVEPOINT that objects added before it belong to (a rollback to it drops them)."""
    pending = list(session.new)
    for instance in pending:
        session.expunge(instance)
    savepoint = type(session).begin_nested(session)
    session.add_all(pending)
    return savepoint


def needs_savepoint(session: Session, state: AttemptState) -> bool:
    """Whether a handler that has returned left objects added but no SAVEPOINT for them."""
    return state.savepoint is None and bool(session.new)
