"""One attempt at a job: what a handler sees (``Attempt``) and what it must return (``Outcome``).

The decisions after a handler ends (when to retry, what error text to keep)
are pure functions here; the worker drivers only execute them.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from . import hooks
from ._entities import Chain, Job
from ._errors import DeduplicationError, HandlerError
from ._ids import coerce_id, new_id
from ._job_types import ChainStart, JobType
from ._json import JSONValue
from ._retry import Backoff, backoff_delay
from .models import JobStatus
from .state import NewJob
from .state import blockers as ops_blockers
from .state import operations as ops

if TYPE_CHECKING:
    from ._client import Queuert

InT = TypeVar("InT")
OutT = TypeVar("OutT")
NextInT = TypeVar("NextInT")
BlockerOutT = TypeVar("BlockerOutT")
P = ParamSpec("P")

#: ``last_attempt_error`` is cut to this many characters.
MAX_ERROR_CHARS = 10_000


class Reschedule(Exception):
    """Raise from a handler to retry the job at a chosen time instead of with backoff.

    Everything the attempt wrote is rolled back, as for any exception; the job
    becomes pending at ``run_at`` (or ``run_in`` from now) and ``reason`` is
    recorded in ``last_attempt_error``.
    """

    def __init__(
        self,
        *,
        run_at: dt.datetime | None = None,
        run_in: dt.timedelta | None = None,
        reason: str = "",
    ) -> None:
        if (run_at is None) == (run_in is None):
            raise ValueError("Reschedule needs exactly one of run_at= or run_in=")
        if run_at is not None and run_at.tzinfo is None:
            raise ValueError("Reschedule(run_at=...) needs an aware datetime")
        super().__init__(reason or "rescheduled by the handler")
        self.run_at = run_at
        self.run_in = run_in
        self.reason = reason


class Outcome:
    """What a handler decided: returned by ``complete``/``continue_with``.

    A handler must return the ``Outcome`` of its own attempt; anything else is a
    :class:`HandlerError` and the job is retried. The worker writes the outcome
    after the handler returns, in the same transaction as the handler's writes.
    """

    __slots__ = ("kind", "next_job_id", "next_type_name")

    def __init__(
        self,
        *,
        kind: Literal["completed", "continued"],
        next_type_name: str | None = None,
        next_job_id: uuid.UUID | None = None,
    ) -> None:
        self.kind = kind
        self.next_type_name = next_type_name
        self.next_job_id = next_job_id
        """Id requested for the next job; an existing job at the same
        ``chain_index`` (a retried attempt) is reused and keeps its own id."""

    def __repr__(self) -> str:
        if self.next_type_name is None:
            return f"<Outcome {self.kind}>"
        return f"<Outcome continued with {self.next_type_name}>"


@dataclass(frozen=True)
class _Continuation:
    target: JobType[Any, Any]
    input: JSONValue
    id: uuid.UUID
    run_at: dt.datetime | None
    run_in: dt.timedelta | None
    blockers: list[uuid.UUID]


class AttemptSignal:
    """Tells a staged handler that its attempt lost the job.

    Set when a lease renewal finds the job taken over by another worker
    (``"taken_by_another_worker"``), completed elsewhere (``"already_completed"``)
    or deleted (``"not_found"``). Long external work can poll ``is_set()`` or
    ``wait(timeout)`` and stop early; ``attempt.transaction()`` refuses to write
    either way.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is lost or ``timeout`` seconds pass; True if lost."""
        return self._event.wait(timeout)

    def set(self, reason: str) -> None:
        """Mark the attempt as having lost its job (called by the worker)."""
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def __bool__(self) -> bool:
        return self.is_set()


@dataclass(frozen=True)
class StagedDriver:
    """What a staged attempt needs from its worker."""

    commit_prepare: Callable[[Attempt[Any, Any]], None]
    """Commit the acquiring transaction (``running`` + lease) and start renewals."""

    owned_transaction: Callable[[Attempt[Any, Any]], AbstractContextManager[Session]]
    """A new transaction holding the job's row lock, after checking ownership."""


class Attempt(Generic[InT, OutT]):
    """What a handler gets: the job, its input, and the attempt's transactions.

    Atomic mode: ``session`` is the worker's transaction for this attempt;
    everything written through it commits together with the job's completion
    and its continuation, or not at all. Do not commit or roll it back.

    Staged mode: read in ``with attempt.prepare() as s:`` (a short transaction
    that commits the job as ``running`` with a lease), do the slow external work
    with no transaction open (the lease is renewed meanwhile; ``signal`` tells
    if the job was lost), then write in ``with attempt.transaction() as s:``,
    which re-checks ownership under a row lock first.
    """

    def __init__(
        self,
        *,
        client: Queuert,
        job_type: JobType[InT, OutT],
        job: Job[InT],
        session: Session,
        worker_id: str | None,
        mode: Literal["atomic", "staged", "workerless"] = "atomic",
        driver: StagedDriver | None = None,
        blockers: Sequence[Chain[Any, Any]] = (),
    ) -> None:
        self._client = client
        self.job_type = job_type
        self.job = job
        self._session = session
        self._on_first_use: Callable[[], None] | None = None
        self.worker_id = worker_id
        self.mode = mode
        self.signal = AttemptSignal()
        self.blockers: list[Chain[Any, Any]] = list(blockers)
        """The completed chains this job waited for, in slot order (with their outputs)."""
        self._driver = driver
        self._outcome: Outcome | None = None
        self._output: JSONValue = None
        self._continuation: _Continuation | None = None
        self.prepared = False
        """True once the acquiring transaction committed (staged mode)."""
        self.written = False
        """True once the outcome is written (staged mode)."""
        self._transaction_opened = False

    @property
    def session(self) -> Session:
        """The attempt's session (see the class documentation for each mode)."""
        opener = self._on_first_use
        if opener is not None:
            self._on_first_use = None
            opener()
        return self._session

    def on_first_use(self, opener: Callable[[], None]) -> None:
        """Run ``opener`` when the handler first reads :attr:`session` (called by the worker).

        An atomic attempt opens its SAVEPOINT there, so a handler that never
        touches the session costs no SAVEPOINT round trips.
        """
        self._on_first_use = opener

    # --- staged mode ---------------------------------------------------------------

    def _staged(self, action: str) -> StagedDriver:
        if self.mode != "staged" or self._driver is None:
            raise HandlerError(
                f"{action} is for staged handlers; register the handler with "
                f"@worker.handler({self.job_type.name!r}, mode='staged'), or write through "
                "attempt.session in atomic mode.",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        return self._driver

    @contextmanager
    def prepare(self) -> Generator[Session]:
        """The short first transaction of a staged attempt: read what the external call needs.

        Yields the session that acquired the job. On exit its writes commit
        together with the job's ``running`` status and lease, and the lease is
        renewed in the background from then on. If the block raises, its
        writes are rolled back and the job is retried. At most once, before
        :meth:`transaction`.
        """
        driver = self._staged("prepare()")
        if self.prepared:
            raise HandlerError(
                "prepare() runs once, before the external work and before transaction().",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        savepoint = self.session.begin_nested()
        try:
            yield self.session
        except BaseException:
            if savepoint.is_active:
                savepoint.rollback()
            raise
        savepoint.commit()
        driver.commit_prepare(self)

    @contextmanager
    def transaction(self) -> Generator[Session]:
        """The closing transaction of a staged attempt: record the result.

        Opens a new transaction, locks the job's row and checks that this
        attempt still owns it, raising :class:`JobTakenByAnotherWorkerError`,
        :class:`JobAlreadyCompletedError` or :class:`JobNotFoundError` (and
        writing nothing) if not. Call ``attempt.complete(...)`` or
        ``attempt.continue_with(...)`` inside the block: the outcome commits
        with the block's writes.
        """
        driver = self._staged("transaction()")
        if self._transaction_opened:
            raise HandlerError(
                "transaction() runs once per attempt: record the outcome and its writes in "
                "one block.",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        self._transaction_opened = True
        if not self.prepared:
            driver.commit_prepare(self)
        with driver.owned_transaction(self) as session:
            yield session
            if self._outcome is not None:
                session.flush()
                self.write_outcome(session)
                self.written = True

    def blocker_outputs(self, job_type: JobType[Any, BlockerOutT]) -> list[BlockerOutT]:
        """Outputs of the completed blocker chains of ``job_type``, in slot order.

        Typed with the type's declared output, so type checkers check what you
        read from them. (A chain's output is its last job's; for a blocker type
        that continues to other types, declare the final output on the entry.)
        """
        return [
            job_type.decode_output(chain.output)
            for chain in self.blockers
            if chain.type_name == job_type.name
        ]

    @property
    def input(self) -> InT:
        """The job's input, decoded with its type."""
        return self.job.input

    @property
    def outcome(self) -> Outcome | None:
        """The outcome recorded by ``complete``/``continue_with`` so far."""
        return self._outcome

    def _check_open(self, action: str) -> None:
        if self._outcome is not None:
            raise HandlerError(
                f"{action}: the attempt at job {self.job.id} ({self.job.type_name!r}) already "
                f"{self._outcome.kind}; call complete() or continue_with() once per attempt.",
                job_id=self.job.id,
                type_name=self.job.type_name,
            )

    def complete(self, output: OutT) -> Outcome:
        """Finish the job, and with it the chain, with ``output``. Return the result.

        ``output`` is validated now (JSON, or the declared dataclass); the
        worker writes the completion when the handler returns, in the same
        transaction as the handler's own writes.
        """
        self._check_open("complete()")
        self._output = self.job_type.encode_output(output)
        self._outcome = Outcome(kind="completed")
        return self._outcome

    def continue_with(
        self,
        job_type: Callable[P, ChainStart[NextInT, Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Outcome:
        """Finish this job by handing the chain to a next job of ``job_type``. Return the result.

        Called as ``continue_with(job_type, input, *, id=None, run_at=None,
        run_in=None)``; type checkers check ``input`` against ``job_type``.

        ``job_type`` must be listed in this type's ``continues_with``. The next
        job gets ``chain_index + 1``; if one already exists at that index (a
        retried attempt, a race) it is reused, never duplicated.
        """
        from ._client import check_blocker_refs, check_schedule, describe_job

        self._check_open("continue_with()")
        start = describe_job(job_type, *args, **kwargs)
        target = self._client.job_types.resolve(start.job_type)
        self.job_type.require_continuation(target)
        if start.dedup is not None:
            raise DeduplicationError(
                f"continue_with({target.name!r}, dedup=...): deduplication applies to starting "
                "chains; a continuation belongs to its chain and is never duplicated. Start a "
                "new chain with queuert.start_chain(attempt.session, ..., dedup=...) instead."
            )
        check_schedule(target.name, start.run_at, start.run_in)
        self._continuation = _Continuation(
            target=target,
            input=target.encode_input(start.input),
            id=coerce_id(start.id) if start.id is not None else new_id(),
            run_at=start.run_at,
            run_in=start.run_in,
            blockers=check_blocker_refs(target, start.blockers),
        )
        self._outcome = Outcome(
            kind="continued", next_type_name=target.name, next_job_id=self._continuation.id
        )
        return self._outcome

    def owns(self, result: object) -> bool:
        """True if ``result`` is the outcome this attempt recorded."""
        return result is not None and result is self._outcome

    def write_outcome(self, session: Session | None = None) -> None:
        """Write the recorded outcome in ``session`` (default: ``self.session``).

        Completes the job (with its output, or ``None`` when continuing),
        inserts the continuation unless one exists at that ``chain_index``,
        and buffers the post-commit notifications. Called by the worker.
        """
        from ._client import resolve_blockers, scheduled_time

        session = session or self._session
        outcome = self._outcome
        assert outcome is not None
        client = self._client
        now = client.clock()
        notify = client.notify
        continuation = self._continuation
        if continuation is None:
            output = self._output
        else:
            output = None
            status = JobStatus.PENDING
            if continuation.blockers:
                (status,) = resolve_blockers(
                    client, session, [(continuation.target, continuation.blockers)]
                )
            created = ops.insert_continuation(
                session,
                client.models,
                client.capabilities,
                NewJob(
                    id=continuation.id,
                    type_name=continuation.target.name,
                    chain_id=self.job.chain_id,
                    chain_type_name=self.job.chain_type_name,
                    chain_index=self.job.chain_index + 1,
                    input=continuation.input,
                    status=status,
                    created_at=now,
                    scheduled_at=scheduled_time(now, continuation.run_at, continuation.run_in),
                    # Inherited, so "is this chain open?" is one indexed lookup.
                    deduplication_key=self.job.deduplication_key,
                ),
            )
            if created:
                ops_blockers.insert_blockers(
                    session,
                    client.models,
                    [(continuation.id, c, i) for i, c in enumerate(continuation.blockers)],
                )
            if created and status == JobStatus.PENDING:
                name = continuation.target.name
                hooks.on_commit(session, partial(notify.notify_job_scheduled, name, 1))
        has_dependents = ops.complete_job(
            session,
            client.models,
            job_id=self.job.id,
            output=output,
            worker_id=self.worker_id,
            now=now,
        )
        if continuation is None:
            chain_id = self.job.chain_id
            hooks.on_commit(session, partial(notify.notify_chain_completed, chain_id))
            # The chain is complete: jobs waiting on it may be free now.
            unblocked = (
                ops_blockers.unblock_dependents(
                    session, client.models, client.capabilities, chain_id=chain_id, now=now
                )
                if has_dependents
                else []
            )
            for type_name, count in Counter(row["type_name"] for row in unblocked).items():
                hooks.on_commit(session, partial(notify.notify_job_scheduled, type_name, count))


def describe_error(exc: BaseException) -> str:
    """The text kept in ``last_attempt_error``: the traceback, cut to a bounded size."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) > MAX_ERROR_CHARS:
        suffix = "… [truncated]"
        text = text[: MAX_ERROR_CHARS - len(suffix)] + suffix
    return text


def retry_decision(
    exc: BaseException,
    *,
    attempt: int,
    backoff: Backoff,
    now: dt.datetime,
    rng: random.Random | None = None,
) -> tuple[dt.datetime, str]:
    """When a failed attempt runs again, and the error text to record.

    ``Reschedule`` picks its own time; any other exception waits the backoff
    delay for this attempt number.
    """
    if isinstance(exc, Reschedule):
        at = (
            exc.run_at.astimezone(dt.UTC)
            if exc.run_at is not None
            else now + (exc.run_in or dt.timedelta(0))
        )
        return max(at, now), f"Reschedule: {exc.reason or 'rescheduled by the handler'}"
    return now + backoff_delay(attempt, backoff, rng), describe_error(exc)
