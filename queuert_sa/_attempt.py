"""One attempt at a job: what a handler sees and what it must return.

:class:`AttemptState` is the attempt without IO: the job, its blockers, what
the handler decided, and how far a staged attempt got. :class:`Attempt` (for
``def`` handlers, with a ``Session``) and :class:`AsyncAttempt` (for ``async
def`` handlers, with an ``AsyncSession``) are two thin views over it. They
only *record* the handler's decision; the worker writes it (see
``_transitions.write_outcome``). A staged attempt reaches its worker through a
:class:`StagedPort` or :class:`AsyncStagedPort`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from sqlalchemy.orm import Session

from ._entities import Chain, Job
from ._errors import HandlerError
from ._job_types import ChainStart, EntryType, JobType, JobTypes
from ._rules import Completed, Decision, continuation, describe_job
from ._signal import AsyncAttemptSignal, AttemptSignal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

InT = TypeVar("InT")
OutT = TypeVar("OutT")
NextInT = TypeVar("NextInT")
BlockerOutT = TypeVar("BlockerOutT")
P = ParamSpec("P")

Mode = Literal["atomic", "staged", "workerless"]


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


class AttemptState:
    """One attempt, without IO: the job, its blockers, the decision, the staged progress.

    Shared by the handler's view (``Attempt``/``AsyncAttempt``) and the worker
    flow, so both see one truth.
    """

    def __init__(
        self,
        *,
        job_types: JobTypes,
        job_type: JobType[Any, Any],
        job: Job[Any],
        worker_id: str | None,
        mode: Mode,
        blockers: Sequence[Chain[Any, Any]] = (),
    ) -> None:
        self.job_types = job_types
        self.job_type = job_type
        self.job = job
        self.worker_id = worker_id
        self.mode: Mode = mode
        self.blockers: list[Chain[Any, Any]] = list(blockers)
        self.signal = AttemptSignal()
        self.outcome: Outcome | None = None
        self.decision: Decision | None = None
        self.prepare_opened = False
        self.prepared = False
        """Staged: the acquiring transaction (``running`` + lease) committed."""
        self.transaction_opened = False
        self.written = False
        """Staged: the outcome committed."""
        self.savepoint: object | None = None
        """Atomic: the SAVEPOINT around the handler's writes, once opened."""
        self.refused: BaseException | None = None
        """The handler tried to commit, roll back or close the worker's transaction."""
        self.write_failed = False
        """Atomic: writing the decided outcome failed (nothing of the attempt was kept)."""

    def _check_open(self, action: str) -> None:
        if self.outcome is not None:
            raise HandlerError(
                f"{action}: the attempt at job {self.job.id} ({self.job.type_name!r}) already "
                f"{self.outcome.kind}; call complete() or continue_with() once per attempt.",
                job_id=self.job.id,
                type_name=self.job.type_name,
            )

    def complete(self, output: object) -> Outcome:
        """Record completion with ``output`` (validated and encoded now)."""
        self._check_open("complete()")
        self.decision = Completed(self.job_type.encode_output(output))
        self.outcome = Outcome(kind="completed")
        return self.outcome

    def continue_with(self, start: ChainStart[Any, Any]) -> Outcome:
        """Record a continuation (validated now; written with the completion)."""
        self._check_open("continue_with()")
        decided = continuation(self.job_types, self.job_type, start)
        self.decision = decided
        self.outcome = Outcome(
            kind="continued", next_type_name=decided.target.name, next_job_id=decided.id
        )
        return self.outcome

    def owns(self, result: object) -> bool:
        """True if ``result`` is the outcome this attempt recorded."""
        return result is not None and result is self.outcome

    def require_staged(self, action: str) -> None:
        """Refuse ``prepare()``/``transaction()`` outside staged mode."""
        if self.mode != "staged":
            raise HandlerError(
                f"{action} is for staged handlers; register the handler with "
                f"@worker.handler({self.job_type.name!r}, mode='staged'), or write through "
                "attempt.session in atomic mode.",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )

    def open_prepare(self) -> None:
        """Mark ``prepare()`` as entered; refused twice or after the lease committed."""
        self.require_staged("prepare()")
        if self.prepare_opened or self.prepared:
            raise HandlerError(
                "prepare() runs once, before the external work and before transaction().",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        self.prepare_opened = True

    def open_transaction(self) -> None:
        """Mark ``transaction()`` as entered; refused twice."""
        self.require_staged("transaction()")
        if self.transaction_opened:
            raise HandlerError(
                "transaction() runs once per attempt: record the outcome and its writes in "
                "one block.",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        self.transaction_opened = True


class StagedPort(Protocol):
    """What a staged ``Attempt`` needs from its worker (thread driver)."""

    def commit_prepare(self, state: AttemptState, session: Session) -> None:
        """Commit the acquiring transaction (``running`` + lease) and start renewals."""
        ...

    def owned_transaction(self, state: AttemptState) -> AbstractContextManager[Session]:
        """A new write transaction holding the job's row lock, after checking ownership."""
        ...

    def write_outcome(self, state: AttemptState, session: Session) -> None:
        """Write the recorded outcome in ``session`` (an owned transaction)."""
        ...


class AsyncStagedPort(Protocol):
    """What a staged ``AsyncAttempt`` needs from its worker (asyncio driver)."""

    async def commit_prepare(
        self,
        state: AttemptState,
        session: AsyncSession,
        savepoint: AsyncSessionTransaction | None = None,
    ) -> None:
        """Commit the acquiring transaction (``running`` + lease) and start renewals.

        ``savepoint``: ``prepare()``'s own, released first.
        """
        ...

    def owned_transaction(self, state: AttemptState) -> AbstractAsyncContextManager[AsyncSession]:
        """A new write transaction holding the job's row lock, after checking ownership."""
        ...

    async def write_outcome(self, state: AttemptState, session: AsyncSession) -> None:
        """Write the recorded outcome in ``session`` (an owned transaction)."""
        ...


class _View(Generic[InT, OutT]):
    """What both handler views offer: the job, its input and blockers, the decision calls."""

    def __init__(self, state: AttemptState) -> None:
        self._state = state

    @property
    def job(self) -> Job[InT]:
        """A snapshot of the job as acquired (``attempt`` counts from 1)."""
        return self._state.job

    @property
    def job_type(self) -> JobType[InT, OutT]:
        """The job's type."""
        return self._state.job_type

    @property
    def input(self) -> InT:
        """The job's input, decoded with its type."""
        return self.job.input

    @property
    def blockers(self) -> list[Chain[Any, Any]]:
        """The completed chains this job waited for, in slot order (with their outputs)."""
        return self._state.blockers

    @property
    def mode(self) -> Mode:
        """``"atomic"``, ``"staged"``, or ``"workerless"`` (``complete_chain``)."""
        return self._state.mode

    @property
    def worker_id(self) -> str | None:
        """The worker running this attempt (None for ``complete_chain``)."""
        return self._state.worker_id

    @property
    def outcome(self) -> Outcome | None:
        """The outcome recorded by ``complete``/``continue_with`` so far."""
        return self._state.outcome

    @property
    def prepared(self) -> bool:
        """Staged: True once ``prepare()`` committed the job as ``running`` with a lease."""
        return self._state.prepared

    @property
    def written(self) -> bool:
        """Staged: True once the outcome committed (``transaction()`` ended)."""
        return self._state.written

    @overload
    def blocker_outputs(self, job_type: EntryType[Any, Any, BlockerOutT]) -> list[BlockerOutT]: ...

    @overload
    def blocker_outputs(self, job_type: JobType[Any, BlockerOutT]) -> list[BlockerOutT]: ...

    def blocker_outputs(self, job_type: JobType[Any, Any]) -> list[Any]:
        """Outputs of the completed blocker chains of ``job_type``, in slot order.

        Typed with the type's declared chain output (``chain_output=``), else
        its output, so type checkers check what you read from them. (A chain's
        output is its last job's: for a blocker type that continues to other
        types, declare ``chain_output`` on the entry.)
        """
        return [
            job_type.decode_output(chain.output)
            for chain in self._state.blockers
            if chain.type_name == job_type.name
        ]

    def complete(self, output: OutT) -> Outcome:
        """Finish the job, and with it the chain, with ``output``. Return the result.

        ``output`` is validated now (JSON, or the declared dataclass); the
        worker writes the completion when the handler returns, in the same
        transaction as the handler's own writes.
        """
        return self._state.complete(output)

    def continue_with(
        self,
        job_type: Callable[P, ChainStart[NextInT, Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Outcome:
        """Finish this job by handing the chain to a next job of ``job_type``. Return the result.

        Called as ``continue_with(job_type, input, *, id=None, run_at=None,
        run_in=None, blockers=[...], priority=None)``; type checkers check
        ``input`` against ``job_type``. The next job keeps this job's priority
        unless ``priority=`` is given. ``job_type`` must be listed in this
        type's ``continues_with``. The next job gets ``chain_index + 1``; if one
        already exists at that index (a retried attempt, a race) it is reused.
        """
        return self._state.continue_with(describe_job(job_type, *args, **kwargs))

    def owns(self, result: object) -> bool:
        """True if ``result`` is the outcome this attempt recorded."""
        return self._state.owns(result)


class Attempt(_View[InT, OutT]):
    """What a ``def`` handler gets: the job, its input, and the attempt's transactions.

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
        state: AttemptState,
        session: Session,
        *,
        port: StagedPort | None = None,
        on_first_use: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(state)
        self._session = session
        self._port = port
        self._on_first_use = on_first_use

    @property
    def signal(self) -> AttemptSignal:
        """Set when a staged attempt lost its job (see :class:`AttemptSignal`)."""
        return self._state.signal

    @property
    def session(self) -> Session:
        """The attempt's session (see the class documentation for each mode)."""
        opener = self._on_first_use
        if opener is not None:
            # The atomic SAVEPOINT opens here, so a handler that never touches
            # the session costs no SAVEPOINT round trips.
            self._on_first_use = None
            opener()
        return self._session

    @contextmanager
    def prepare(self) -> Generator[Session]:
        """The short first transaction of a staged attempt: read what the external call needs.

        Yields the session that acquired the job. On exit its writes commit
        together with the job's ``running`` status and lease, and the lease is
        renewed in the background from then on. If the block raises, its
        writes are rolled back and the job is retried. At most once, before
        :meth:`transaction`.
        """
        self._state.open_prepare()
        port = self._port
        assert port is not None  # open_prepare() refused modes without one
        session = self.session
        savepoint = session.begin_nested()
        try:
            yield session
        except BaseException:
            if savepoint.is_active:
                savepoint.rollback()
            raise
        savepoint.commit()
        port.commit_prepare(self._state, session)

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
        state = self._state
        state.open_transaction()
        port = self._port
        assert port is not None  # open_transaction() refused modes without one
        if not state.prepared:
            port.commit_prepare(state, self._session)
        wrote = False
        with port.owned_transaction(state) as session:
            yield session
            if state.decision is not None:
                port.write_outcome(state, session)
                wrote = True
        # Committed only now: a COMMIT that fails leaves the attempt unwritten.
        state.written = wrote


class AsyncAttempt(_View[InT, OutT]):
    """What an ``async def`` handler gets: the job, its input and the attempt's ``AsyncSession``.

    Atomic mode: ``session`` is the attempt's transaction; what you write
    through it commits together with the job's completion, or not at all.
    Staged mode: ``async with attempt.prepare() as s:`` (short; commits a
    lease), the external work with no transaction open, then ``async with
    attempt.transaction() as s:`` to write, after an ownership check.
    """

    def __init__(
        self, state: AttemptState, session: AsyncSession, *, port: AsyncStagedPort | None = None
    ) -> None:
        super().__init__(state)
        self.session = session
        """The attempt's ``AsyncSession`` (see the class documentation for each mode)."""
        self._port = port
        self.signal = AsyncAttemptSignal(state.signal)
        """Set when a staged attempt lost its job; ``await attempt.signal.wait()``
        (see :class:`AsyncAttemptSignal`)."""

    @asynccontextmanager
    async def prepare(self) -> AsyncGenerator[AsyncSession]:
        """The short first transaction of a staged attempt (see :meth:`Attempt.prepare`)."""
        self._state.open_prepare()
        port = self._port
        assert port is not None  # open_prepare() refused modes without one
        savepoint = await self.session.begin_nested()
        try:
            yield self.session
        except BaseException:
            if savepoint.is_active:
                await savepoint.rollback()
            raise
        await port.commit_prepare(self._state, self.session, savepoint)

    @asynccontextmanager
    async def transaction(self) -> AsyncGenerator[AsyncSession]:
        """The closing transaction of a staged attempt (see :meth:`Attempt.transaction`)."""
        state = self._state
        state.open_transaction()
        port = self._port
        assert port is not None  # open_transaction() refused modes without one
        if not state.prepared:
            await port.commit_prepare(state, self.session)
        wrote = False
        async with port.owned_transaction(state) as session:
            yield session
            if state.decision is not None:
                await port.write_outcome(state, session)
                wrote = True
        # Committed only now: a COMMIT that fails leaves the attempt unwritten.
        state.written = wrote
