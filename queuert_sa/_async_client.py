"""The asyncio client: ``AsyncQueuert`` for ``AsyncEngine``/``AsyncSession`` applications.

There is one implementation of every operation, the synchronous one: each
coroutine here runs it on the ``AsyncSession``'s own sync session through
``run_sync``, in the caller's transaction. Post-commit wake-ups work as for
``Session``: they hang on the sync session's events, which an ``AsyncSession``
fires on COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, overload

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from queuert_sa._logs import get_logger

from . import _removal as removal
from . import _rules as rules
from ._async_reads import AsyncReads, AsyncSessionLike
from ._client import Queuert
from ._context import ClientOptions
from ._durations import Duration, as_duration
from ._entities import Chain, CleanupPreview, CompletedChain, Job
from ._errors import (
    ChainNotFoundError,
    JobNotFoundError,
    WaitChainTimeoutError,
    WorkerConfigError,
)
from ._ids import coerce_id
from ._job_types import ChainStart, EntryType, JobType, JobTypes
from ._rules import describe_job
from .notify._on_loop import listen_on_loop
from .state import immediate_engine
from .state import operations as ops

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from ._attempt import Attempt
    from ._worker._asyncio import AsyncWorker
    from ._worker._config import WorkerOptions

InT = TypeVar("InT")
ChainOutT = TypeVar("ChainOutT")
OutT = TypeVar("OutT")
R = TypeVar("R")
P = ParamSpec("P")

log = get_logger("queuert_sa")


class AsyncQueuert(AsyncReads):
    """The asyncio client: the methods of :class:`Queuert` as coroutines taking ``AsyncSession``.

    ::

        aqueuert = AsyncQueuert(async_engine, job_types)
        async with AsyncSession(async_engine) as session, session.begin():
            session.add(user)
            await session.flush()
            await aqueuert.start_chain(session, send_welcome, {"user_id": user.id})

    Every call runs the same SQL as the sync client, on the session's sync
    connection (``run_sync``), so behaviour, errors and the transaction rules
    are those of :class:`Queuert`: nothing is committed here, and wake-ups go
    out after the caller's COMMIT.

    Args:
        engine: The application's ``AsyncEngine`` (``postgresql+psycopg`` or
            ``sqlite+aiosqlite``).
        job_types, notify, models, clock, observers: As for :class:`Queuert`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        job_types: JobTypes,
        **options: Unpack[ClientOptions],
    ) -> None:
        if not isinstance(engine, AsyncEngine):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"AsyncQueuert needs a sqlalchemy AsyncEngine, got {type(engine).__name__}; "
                "for an Engine use Queuert."
            )
        self.engine = engine
        self.sync = Queuert(engine.sync_engine, job_types, **options)
        self.ctx = self.sync.ctx

    def __repr__(self) -> str:
        return f"<AsyncQueuert {self.engine.url!r} types={list(self.job_types.names)}>"

    def immediate_engine(self) -> AsyncEngine:
        """This engine with write-first transactions on SQLite (see :func:`immediate_engine`)."""
        sync = immediate_engine(self.engine.sync_engine)
        if sync is self.engine.sync_engine:
            return self.engine
        return self.engine.execution_options(**sync.get_execution_options())

    # --- producing ------------------------------------------------------------------

    async def start_chain(
        self,
        session: AsyncSessionLike,
        job_type: Callable[P, ChainStart[InT, OutT]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Chain[InT, Any]:
        """Start a chain in ``session``'s transaction; see :meth:`Queuert.start_chain`."""
        start = describe_job(job_type, *args, **kwargs)
        chains = await self._in(session, lambda s: self.sync.start_chains(s, [start]))
        return chains[0]

    async def start_chains(
        self, session: AsyncSessionLike, starts: Sequence[ChainStart[Any, Any]]
    ) -> list[Chain[Any, Any]]:
        """Start several chains with one INSERT; see :meth:`Queuert.start_chains`."""
        return await self._in(session, lambda s: self.sync.start_chains(s, starts))

    # --- operating ---------------------------------------------------------------------

    async def trigger_job(self, session: AsyncSessionLike, id: uuid.UUID | str) -> Job[Any]:
        """Make a pending job due now; see :meth:`Queuert.trigger_job`."""
        return await self._in(session, lambda s: self.sync.trigger_job(s, id))

    async def trigger_jobs(
        self, session: AsyncSessionLike, ids: Iterable[uuid.UUID | str]
    ) -> list[Job[Any]]:
        """Make pending jobs due now, all or nothing; see :meth:`Queuert.trigger_jobs`."""
        wanted = rules.batch_ids(ids, "trigger_jobs", "job")
        return await self._in(session, lambda s: self.sync.trigger_jobs(s, wanted))

    async def retry_job(self, session: AsyncSessionLike, id: uuid.UUID | str) -> Job[Any]:
        """Make a failed job pending and due now; see :meth:`Queuert.retry_job`."""
        return await self._in(session, lambda s: self.sync.retry_job(s, id))

    async def retry_jobs(
        self,
        session: AsyncSessionLike,
        *,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        failed_since: dt.datetime | None = None,
        limit: int | None = None,
    ) -> int:
        """Retry every failed job matching the filter; see :meth:`Queuert.retry_jobs`."""
        return await self._in(
            session,
            lambda s: self.sync.retry_jobs(s, types=types, failed_since=failed_since, limit=limit),
        )

    async def cancel_chain(
        self,
        session: AsyncSessionLike,
        id: uuid.UUID | str,
        *,
        reason: str | None = None,
        cascade: bool = False,
    ) -> list[uuid.UUID]:
        """Cancel a chain (``cascade``: and those blocked on it); see :meth:`Queuert.cancel_chain`."""
        return await self._in(
            session, lambda s: self.sync.cancel_chain(s, id, reason=reason, cascade=cascade)
        )

    async def delete_chains(
        self,
        session: AsyncSessionLike,
        ids: Iterable[uuid.UUID | str],
        *,
        cascade: bool = False,
    ) -> list[Chain[Any, Any]]:
        """Delete chains, all or nothing; see :meth:`Queuert.delete_chains`."""
        wanted = rules.deletion_ids(ids)
        return await self._in(
            session, lambda s: self.sync.delete_chains(s, wanted, cascade=cascade)
        )

    async def complete_chain(
        self,
        session: AsyncSessionLike,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        fn: Callable[[Attempt[Any, Any]], object],
    ) -> Chain[InT, Any]:
        """Complete (or continue) a chain's current job; see :meth:`Queuert.complete_chain`.

        ``fn`` is a plain function (it runs inside the session's sync context):
        it decides with ``completion.complete(...)``/``continue_with(...)``;
        do any awaiting before the call.
        """
        return await self._in(session, lambda s: self.sync.complete_chain(s, id, job_type, fn))

    async def cleanup(
        self,
        *,
        older_than: Duration,
        failed_older_than: Duration | None = None,
        cancelled_older_than: Duration | None = None,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete chains completed more than ``older_than`` ago; see :meth:`Queuert.cleanup`."""
        plan = rules.cleanup_plan(
            self.clock(),
            older_than,
            types,
            batch_size,
            max_batches,
            failed_older_than=failed_older_than,
            cancelled_older_than=cancelled_older_than,
        )
        engine = self.immediate_engine()
        run = removal.Cleanup(self.ctx, plan)
        more = True
        while more:
            with ops.database_errors("clean up chains", self.models):
                async with engine.begin() as conn:
                    more = await conn.run_sync(run.batch)
        return run.finish()

    async def preview_cleanup(
        self,
        *,
        older_than: Duration,
        failed_older_than: Duration | None = None,
        cancelled_older_than: Duration | None = None,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> CleanupPreview:
        """What :meth:`cleanup` would delete now; see :meth:`Queuert.preview_cleanup`."""
        plan = rules.cleanup_plan(
            self.clock(),
            older_than,
            types,
            batch_size,
            max_batches,
            failed_older_than=failed_older_than,
            cancelled_older_than=cancelled_older_than,
        )
        run = removal.Cleanup(self.ctx, plan, dry_run=True)
        more = True
        while more:
            with ops.database_errors("preview a cleanup", self.models):
                async with self.engine.connect() as conn:
                    more = await conn.run_sync(run.batch)
        return run.preview()

    # --- waiting --------------------------------------------------------------------------

    @overload
    async def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: None = None,
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[Any, Any]: ...

    @overload
    async def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: EntryType[InT, Any, ChainOutT],
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[InT, ChainOutT]: ...

    @overload
    async def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        timeout: Duration = ...,
        poll_interval: Duration = ...,
    ) -> CompletedChain[InT, Any]: ...

    async def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        timeout: Duration = dt.timedelta(seconds=30),
        poll_interval: Duration = dt.timedelta(seconds=1),
    ) -> CompletedChain[Any, Any]:
        """Wait (without blocking the event loop) until the chain completes; return it.

        See :meth:`Queuert.await_chain`: woken by the notify adapter's
        chain-completed message, else re-reads every ``poll_interval``;
        :class:`ChainFailedError` or :class:`ChainCancelledError` at once for
        a chain that failed or was cancelled; :class:`WaitChainTimeoutError`
        after ``timeout``.
        """
        chain_id = coerce_id(id)
        timeout = as_duration(timeout, "timeout")
        poll_interval = as_duration(poll_interval, "poll_interval")
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake(_id: uuid.UUID) -> None:
            # Adapters call back from their own threads.
            loop.call_soon_threadsafe(woken.set)

        subscription = await listen_on_loop(
            self.notify, lambda adapter: adapter.listen_chain_completed(chain_id, wake)
        )
        try:
            deadline = loop.time() + timeout.total_seconds()
            while True:
                woken.clear()
                chain = await self.get_chain(chain_id, job_type)
                if chain.is_completed:
                    return CompletedChain[Any, Any].of(chain)
                if chain.status.is_terminal:
                    try:
                        current = await self.get_job(chain.current_job_id)
                    except JobNotFoundError:
                        raise ChainNotFoundError(chain_id) from None
                    error = rules.unsuccessful_end(chain, current)
                    assert error is not None
                    raise error
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitChainTimeoutError(chain_id, timeout=timeout.total_seconds())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        woken.wait(), min(poll_interval.total_seconds(), remaining)
                    )
        finally:
            subscription.close()

    # --- workers ---------------------------------------------------------------------------

    def worker(
        self,
        *,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        thread_engine: Engine | None = None,
        **options: Unpack[WorkerOptions],
    ) -> AsyncWorker:
        """Create an asyncio worker; register handlers, then ``await worker.run()``.

        Options as for :meth:`Queuert.worker`; see :class:`AsyncWorker`.
        ``thread_engine`` is your sync ``Engine`` for the same database, needed
        only for plain ``def`` handlers (they run on threads, on that engine).
        """
        from ._worker._asyncio import AsyncWorker

        thread_client = None
        if thread_engine is not None:
            if not isinstance(thread_engine, Engine):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise WorkerConfigError(
                    "thread_engine= takes a sync sqlalchemy Engine (create_engine(...)), got "
                    f"{type(thread_engine).__name__}"
                )
            if thread_engine.dialect.name != self.engine.dialect.name:
                raise WorkerConfigError(
                    f"thread_engine= is a {thread_engine.dialect.name} engine but this "
                    f"AsyncQueuert's is {self.engine.dialect.name}; pass a sync engine for the "
                    "same database (create_engine() with the same URL and a sync driver)."
                )
            thread_client = Queuert(thread_engine, self.job_types, models=self.models)
            # One context: the same notify adapter, clock (also when replaced) and registry.
            thread_client.ctx = self.ctx
        return AsyncWorker(
            self, session_factory=session_factory, thread_client=thread_client, **options
        )
