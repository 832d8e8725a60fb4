"""The sync client: ``Queuert`` starts chains in the caller's transaction and reads them.

A façade: arguments are checked with :mod:`._rules`, writes are the units of
:mod:`._transitions` on the caller's session, reads are state-layer queries
turned into snapshots by :mod:`._snapshots`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, cast, overload

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from queuert_sa._logs import get_logger

from . import _rules as rules
from . import _transitions as transitions
from ._attempt import Attempt, AttemptState
from ._context import ClientOptions, Context, utc_now
from ._durations import Duration, as_duration
from ._entities import Chain, CompletedChain
from ._errors import (
    ChainNotFoundError,
    JobNotFoundError,
    WaitChainTimeoutError,
)
from ._ids import coerce_id
from ._job_types import ChainStart, EntryType, JobType, JobTypes
from ._observing import Observers
from ._operating import Operating
from ._reads import SessionLike
from .models import DEFAULT_MODELS, JobStatus
from .notify import InMemoryNotify
from .state import prepare_engine

if TYPE_CHECKING:
    from ._worker._config import WorkerOptions
    from ._worker._threads import Worker

InT = TypeVar("InT")
ChainOutT = TypeVar("ChainOutT")
OutT = TypeVar("OutT")
R = TypeVar("R")
P = ParamSpec("P")

log = get_logger("queuert_sa")


class Queuert(Operating):
    """The synchronous client: starts chains in your transaction, reads them, makes workers.

    ::

        queuert = Queuert(engine, job_types)
        with Session(engine) as session, session.begin():
            session.add(user)
            queuert.start_chain(session, send_welcome, {"user_id": user.id})

    Args:
        engine: The application's engine (PostgreSQL or SQLite). On SQLite the
            engine is configured for queuert (see :func:`prepare_engine`).
        job_types: The registry; validated here, so a dangling ``continues_with``
            fails at start-up.
        notify: Where post-commit wake-ups go. Defaults to an in-process
            :class:`InMemoryNotify`: workers of this client in this process wake
            at once; other processes find jobs by polling.
        models: The tables to use; defaults to ``queuert_job`` /
            ``queuert_job_blocker``. See :func:`queuert_sa.models.create_models`.
        clock: Source of "now" (aware UTC datetimes). Defaults to the system clock;
            tests inject a fake one.
        observers: Who is told of events (jobs created, attempts, workers...):
            see :mod:`queuert_sa.observers` and :class:`queuert_sa.otel.OtelObserver`.
            Default: none, which costs nothing.
    """

    def __init__(
        self,
        engine: Engine,
        job_types: JobTypes,
        **options: Unpack[ClientOptions],
    ) -> None:
        if not isinstance(engine, Engine):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"Queuert needs a sqlalchemy Engine, got {type(engine).__name__}; "
                "for an AsyncEngine use AsyncQueuert."
            )
        job_types.validate()
        self.engine = engine
        unknown = sorted(set(options) - set(ClientOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"Queuert() got an unexpected keyword argument {unknown[0]!r}; it takes "
                "notify, models, clock and observers."
            )
        notify = options.get("notify")
        self.ctx = Context(
            job_types=job_types,
            models=options.get("models", DEFAULT_MODELS),
            capabilities=prepare_engine(engine),
            clock=options.get("clock", utc_now),
            notify=notify if notify is not None else InMemoryNotify(),
            observers=Observers(options.get("observers", ())),
        )
        listeners = getattr(self.ctx.notify, "error_listeners", None)
        if isinstance(listeners, list):
            cast("list[Callable[[str, BaseException], None]]", listeners).append(
                self._notify_failed
            )

    def __repr__(self) -> str:
        return f"<Queuert {self.engine.url!r} types={list(self.job_types.names)}>"

    def _notify_failed(self, operation: str, error: BaseException) -> None:
        self.ctx.observers.emit("notify_error", operation=operation, error=error)

    # --- producing -----------------------------------------------------------

    def start_chain(
        self,
        session: SessionLike,
        job_type: Callable[P, ChainStart[InT, OutT]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Chain[InT, Any]:
        """Start a chain with its first job, inside ``session``'s current transaction.

        Called as ``start_chain(session, job_type, input, *, id=None,
        run_at=None, run_in=None, blockers=(), dedup=None, priority=None)``; the
        arguments after ``job_type`` are those of calling the job type, so type
        checkers check ``input`` against it.

        Nothing is committed: the job becomes visible to workers when the
        caller commits, and the wake-up is sent only after that COMMIT. On
        rollback (or a rolled-back SAVEPOINT) there is no job and no wake-up.

        Validation happens before any SQL: an unknown or non-entry type, an input
        that is not JSON, an invalid id or priority raise a :class:`QueuertError`
        subclass.

        Args:
            session: The caller's ``Session``; flushed into, never committed.
            job_type: An entry type of this client's ``JobTypes``.
            input: The job's input (a JSON value, or an instance of the declared
                dataclass).
            id: The chain's id (a UUID); generated (UUIDv7) when omitted.
            run_at: Earliest start (aware datetime), clamped to now.
            run_in: Earliest start as a delay from now.
            priority: Higher runs first among due jobs (an int; default 0);
                the chain's continuations inherit it. A deduplicated start
                returns the existing chain with its own priority.
        """
        return self.start_chains(session, [rules.describe_job(job_type, *args, **kwargs)])[0]

    def start_chains(
        self, session: SessionLike, starts: Sequence[ChainStart[Any, Any]]
    ) -> list[Chain[Any, Any]]:
        """Start several chains with one INSERT (one round trip), in ``session``'s transaction.

        All-or-nothing with the caller's transaction, like :meth:`start_chain`.
        Every start is validated before any SQL is sent.
        """
        return transitions.start_chains(self.session_of(session), self.ctx, starts)

    # --- waiting and completing from application code -------------------------

    @overload
    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: None = None,
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[Any, Any]: ...

    @overload
    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: EntryType[InT, Any, ChainOutT],
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[InT, ChainOutT]: ...

    @overload
    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[InT, Any]: ...

    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        timeout: Duration = dt.timedelta(seconds=30),
        poll_interval: Duration = dt.timedelta(seconds=1),
    ) -> CompletedChain[Any, Any]:
        """Block until the chain completes and return it.

        Wakes on the notify adapter's chain-completed message (at once for a
        worker of this client in this process) and otherwise re-reads the chain
        every ``poll_interval`` (default 1 s). A chain that ends without
        completing raises at once: :class:`ChainFailedError` (with its current
        job's last error) when that job failed, :class:`ChainCancelledError`
        (with the reason) when the chain was cancelled. Raises
        :class:`WaitChainTimeoutError` after ``timeout`` (default 30 s) and
        :class:`ChainNotFoundError` for an unknown id, or if the chain is
        deleted while waiting. Do not call it inside a transaction that the
        chain's jobs depend on: nothing you have not committed can complete.
        """
        chain_id = coerce_id(id)
        timeout = as_duration(timeout, "timeout")
        poll_interval = as_duration(poll_interval, "poll_interval")
        woken = threading.Event()
        subscription = self.notify.listen_chain_completed(chain_id, lambda _id: woken.set())
        try:
            deadline = time.monotonic() + timeout.total_seconds()
            while True:
                woken.clear()  # before reading: a completion after the read wakes us
                chain = self.get_chain(chain_id, job_type)
                if chain.is_completed:
                    return CompletedChain[Any, Any].of(chain)
                if chain.status.is_terminal:
                    try:
                        current = self.get_job(chain.current_job_id)
                    except JobNotFoundError:
                        raise ChainNotFoundError(chain_id) from None
                    error = rules.unsuccessful_end(chain, current)
                    assert error is not None
                    raise error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitChainTimeoutError(chain_id, timeout=timeout.total_seconds())
                woken.wait(min(poll_interval.total_seconds(), remaining))
        finally:
            subscription.close()

    def complete_chain(
        self,
        session: SessionLike,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        fn: Callable[[Attempt[Any, Any]], object],
    ) -> Chain[InT, Any]:
        """Complete (or continue) a chain's current job from application code.

        For work a person or another system finishes: an approval button, a
        webhook. In ``session``'s transaction (never committed here): the
        chain's current job is locked (waiting for an atomic attempt on it to
        end), then ``fn(completion)`` runs; it may call
        ``completion.complete(output)`` or ``completion.continue_with(type,
        input)`` (validated as in a handler; ``completion.job`` is the current
        job) or neither, to only look. ``completed_by`` stays NULL. A staged
        worker running that job learns it lost it and writes nothing.

        A ``failed`` current job may be completed (or continued) this way, as
        the person who fixed its cause by hand; its dependents are unblocked
        as for any completion. Raises :class:`ChainNotFoundError`,
        :class:`JobTypeMismatchError` if ``job_type`` is not the chain's type,
        :class:`JobAlreadyCompletedError` if the chain is already complete,
        and :class:`ChainCancelledError` if it was cancelled. Returns the chain
        as it is now in ``session``.
        """
        session = self.session_of(session)
        chain_id = coerce_id(id)
        chain_type = self.job_types.resolve(job_type)
        job, current_type, blockers = transitions.lock_current_job(
            session, self.ctx, chain_id, chain_type
        )
        state = AttemptState(
            job_types=self.job_types,
            job_type=current_type,
            job=job,
            worker_id=None,
            mode="workerless",
            blockers=blockers,
        )
        completion: Attempt[Any, Any] = Attempt(state, session)
        result = fn(completion)
        if state.decision is not None:
            if result is not None and not state.owns(result):
                raise TypeError(
                    f"complete_chain's function returned {result!r:.60}; return the outcome of "
                    "completion.complete()/continue_with(), or None"
                )
            if job.status == JobStatus.RUNNING:
                # The lock waited out any atomic attempt: a staged one holds this job.
                transitions.lost_after_commit(session, self.ctx, job.id)
            session.flush()
            transitions.write_outcome(session, self.ctx, job, state.decision, None)
        return self.get_chain(chain_id, job_type, session=session)

    # --- workers -------------------------------------------------------------

    def worker(
        self,
        *,
        session_factory: Callable[[], Session] | None = None,
        **options: Unpack[WorkerOptions],
    ) -> Worker:
        """Create a thread-pool worker for this client; register handlers, then ``run()``.

        Options: ``concurrency``, ``poll_interval``, ``backoff``,
        ``shutdown_grace``, ``worker_id``, ``handle_signals`` and
        ``session_factory``; see :class:`Worker` for the meaning and default
        of each.
        """
        from ._worker._threads import Worker

        return Worker(self, session_factory=session_factory, **options)
