"""The asyncio client's read side, and the session it writes through.

:class:`AsyncReads` is the base of :class:`AsyncQueuert`, mirroring
:class:`Reads` for the sync client: it checks the ``AsyncSession`` a call is
given, and runs the sync client's reads on it (``run_sync``), or on a session
of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Unpack, cast, overload

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session

from ._client import Queuert  # at run time: the class annotation ``sync`` names it
from ._context import ContextView
from ._entities import Chain, Job, Page
from ._errors import EngineMismatchError, SessionRequiredError
from ._job_types import EntryType, JobType
from ._rules import DEFAULT_PAGE_SIZE, ChainFilters, JobFilters

InT = TypeVar("InT")
ChainOutT = TypeVar("ChainOutT")
R = TypeVar("R")

#: What mutating and reading coroutines accept: an ``AsyncSession``, or an
#: ``async_scoped_session`` (which stands for its current session).
AsyncSessionLike = AsyncSession | async_scoped_session[Any]


class AsyncReads(ContextView):
    """Reading chains and jobs, and checking sessions (see :class:`AsyncQueuert`)."""

    engine: AsyncEngine
    sync: Queuert
    """The sync client this one delegates to (same registry, notify, models and clock)."""

    def session_of(self, session: object) -> AsyncSession:
        """The ``AsyncSession`` to write through; refuses anything else."""
        if isinstance(session, async_scoped_session):
            session = cast("async_scoped_session[AsyncSession]", session)()
        if not isinstance(session, AsyncSession):
            hint = " For a Session use Queuert." if isinstance(session, Session) else ""
            raise SessionRequiredError(
                f"Expected a sqlalchemy.ext.asyncio.AsyncSession, got {type(session).__name__}. "
                f"Pass the session whose transaction the jobs should join.{hint}"
            )
        bind = session.bind
        if isinstance(bind, AsyncEngine) and bind.dialect.name != self.engine.dialect.name:
            raise EngineMismatchError(
                f"The session is bound to a {bind.dialect.name} database but this AsyncQueuert "
                f"was built for {self.engine.dialect.name}; use the session of the same database."
            )
        return session

    async def _in(self, session: AsyncSessionLike, fn: Callable[[Session], R]) -> R:
        return await self.session_of(session).run_sync(fn)

    async def _read(self, session: AsyncSessionLike | None, fn: Callable[[Session], R]) -> R:
        if session is not None:
            return await self._in(session, fn)
        async with AsyncSession(self.engine) as own:
            return await own.run_sync(fn)

    # --- reading ----------------------------------------------------------------------

    @overload
    async def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: None = None,
        *,
        session: AsyncSessionLike | None = None,
    ) -> Chain[Any, Any]: ...

    @overload
    async def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: EntryType[InT, Any, ChainOutT],
        *,
        session: AsyncSessionLike | None = None,
    ) -> Chain[InT, ChainOutT]: ...

    @overload
    async def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        session: AsyncSessionLike | None = None,
    ) -> Chain[InT, Any]: ...

    async def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        session: AsyncSessionLike | None = None,
    ) -> Chain[Any, Any]:
        """Read a chain; see :meth:`Queuert.get_chain`."""
        return await self._read(session, lambda s: self.sync.get_chain(id, job_type, session=s))

    @overload
    async def get_job(
        self,
        id: uuid.UUID | str,
        job_type: None = None,
        *,
        session: AsyncSessionLike | None = None,
    ) -> Job[Any]: ...

    @overload
    async def get_job(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        session: AsyncSessionLike | None = None,
    ) -> Job[InT]: ...

    async def get_job(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        session: AsyncSessionLike | None = None,
    ) -> Job[Any]:
        """Read a job; see :meth:`Queuert.get_job`."""
        return await self._read(session, lambda s: self.sync.get_job(id, job_type, session=s))

    async def get_job_blockers(
        self, id: uuid.UUID | str, *, session: AsyncSessionLike | None = None
    ) -> list[Chain[Any, Any]]:
        """The chains a job waits (or waited) for; see :meth:`Queuert.get_job_blockers`."""
        return await self._read(session, lambda s: self.sync.get_job_blockers(id, session=s))

    async def list_chains(
        self,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: AsyncSessionLike | None = None,
        **filters: Unpack[ChainFilters],
    ) -> Page[Chain[Any, Any]]:
        """One page of chains; see :meth:`Queuert.list_chains`."""
        return await self._read(
            session,
            lambda s: self.sync.list_chains(
                order=order, cursor=cursor, limit=limit, session=s, **filters
            ),
        )

    async def list_jobs(
        self,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: AsyncSessionLike | None = None,
        **filters: Unpack[JobFilters],
    ) -> Page[Job[Any]]:
        """One page of jobs; see :meth:`Queuert.list_jobs`."""
        return await self._read(
            session,
            lambda s: self.sync.list_jobs(
                order=order, cursor=cursor, limit=limit, session=s, **filters
            ),
        )

    async def list_chain_jobs(
        self,
        chain_id: uuid.UUID | str,
        *,
        order: Literal["asc", "desc"] = "asc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: AsyncSessionLike | None = None,
    ) -> Page[Job[Any]]:
        """One page of a chain's jobs; see :meth:`Queuert.list_chain_jobs`."""
        return await self._read(
            session,
            lambda s: self.sync.list_chain_jobs(
                chain_id, order=order, cursor=cursor, limit=limit, session=s
            ),
        )

    async def list_blocked_jobs(
        self,
        chain_id: uuid.UUID | str,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: AsyncSessionLike | None = None,
    ) -> Page[Job[Any]]:
        """One page of the jobs blocked by a chain; see :meth:`Queuert.list_blocked_jobs`."""
        return await self._read(
            session,
            lambda s: self.sync.list_blocked_jobs(
                chain_id, order=order, cursor=cursor, limit=limit, session=s
            ),
        )
