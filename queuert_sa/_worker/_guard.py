"""The attempt's session cannot end the worker's transaction.

While a handler runs, the ``Session`` it writes through (``attempt.session``,
the ``prepare()`` and ``transaction()`` sessions, and through them an
``AsyncSession``'s sync session and a ``scoped_session`` standing for it)
refuses ``commit()``, ``rollback()``, ``close()``, ``reset()`` and
``invalidate()`` at the call, with a :class:`HandlerError` that says what to do
instead. The refusal is kept on the attempt, which then fails and is retried
even if the handler catches the error: a handler that meant to commit or roll
back part of its work must not have the rest committed as if nothing happened.
SAVEPOINTs (``session.begin_nested()``) are the handler's own and stay free.

The guard is instance attributes shadowing the methods, so the worker's own
calls go to the class methods (:func:`end`) and are never refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa._attempt import AttemptState

from . import _policy as policy

#: The ``Session`` methods that would end (or abandon) the worker's transaction.
GUARDED = ("commit", "rollback", "close", "reset", "invalidate")


def guard(session: Session, state: AttemptState) -> Callable[[], None]:
    """Refuse the :data:`GUARDED` calls on ``session``; returns what lifts the guard.

    Re-entrant: a session already guarded (a scoped session handed out twice
    in one attempt) keeps the outer guard, and the inner lift leaves it on.
    """
    if GUARDED[0] in session.__dict__:
        return lambda: None

    def refusing(name: str) -> Callable[..., Any]:
        def refused(*args: object, **kwargs: object) -> Any:
            error = policy.session_refused(state.job_type, state.job.id, name)
            if state.refused is None:
                state.refused = error
            raise error

        return refused

    for name in GUARDED:
        setattr(session, name, refusing(name))

    def lift() -> None:
        for name in GUARDED:
            session.__dict__.pop(name, None)

    return lift


def end(session: Session, how: str) -> None:
    """The worker's own ``commit``/``rollback``/``close``/``invalidate``, past any guard."""
    getattr(type(session), how)(session)
