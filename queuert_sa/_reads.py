"""The sync client's read side, and the session it writes through.

:class:`Reads` is the base of :class:`Queuert`: it checks the session a call
is given, and reads chains and jobs (by id, their blockers, and the keyset
paginated listings) into snapshots, in that session's transaction or on a
connection of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Unpack, cast, overload

from sqlalchemy import Engine
from sqlalchemy.orm import Session, scoped_session

from . import _cursor
from . import _rules as rules
from . import _transitions as transitions
from ._context import ContextView
from ._entities import Chain, Job, Page
from ._errors import (
    ChainNotFoundError,
    EngineMismatchError,
    JobNotFoundError,
    JobTypeMismatchError,
    SessionRequiredError,
)
from ._ids import coerce_id
from ._job_types import EntryType, JobType
from ._rules import DEFAULT_PAGE_SIZE, ChainFilters, JobFilters
from ._snapshots import chain_from_rows, chain_jobs_page, chain_page, job_from_row, job_page
from .state import chains as ops_chains
from .state import operations as ops
from .state import prepare_engine, queries
from .state.queries import Filters

InT = TypeVar("InT")
ChainOutT = TypeVar("ChainOutT")
R = TypeVar("R")

#: What mutating and reading calls accept: a ``Session``, or a ``scoped_session``
#: (which stands for its current session).
SessionLike = Session | scoped_session[Any]


class Reads(ContextView):
    """Reading chains and jobs, and checking sessions (see :class:`Queuert`)."""

    engine: Engine

    def session_of(self, session: object) -> Session:
        """The ``Session`` to write through; refuses what is not a usable sync session.

        A ``scoped_session`` (e.g. Flask-SQLAlchemy's ``db.session``) stands for
        its current session.
        """
        if isinstance(session, scoped_session):
            session = cast("scoped_session[Session]", session)()
        if not isinstance(session, Session):
            hint = (
                " For an AsyncSession use AsyncQueuert."
                if type(session).__name__ == "AsyncSession"
                else ""
            )
            raise SessionRequiredError(
                f"Expected a sqlalchemy.orm.Session, got {type(session).__name__}. Pass the "
                f"session whose transaction the jobs should join.{hint}"
            )
        bind = session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        if engine.dialect.name != self.engine.dialect.name:
            raise EngineMismatchError(
                f"The session is bound to a {engine.dialect.name} database but this Queuert "
                f"was built for {self.engine.dialect.name}; use the session of the same database."
            )
        if engine is not self.engine:
            prepare_engine(engine)
        return session

    # --- reading -------------------------------------------------------------

    @overload
    def get_chain(
        self, id: uuid.UUID | str, job_type: None = None, *, session: SessionLike | None = None
    ) -> Chain[Any, Any]: ...

    @overload
    def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: EntryType[InT, Any, ChainOutT],
        *,
        session: SessionLike | None = None,
    ) -> Chain[InT, ChainOutT]: ...

    @overload
    def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        session: SessionLike | None = None,
    ) -> Chain[InT, Any]: ...

    def get_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        session: SessionLike | None = None,
    ) -> Chain[Any, Any]:
        """Read a chain by id (its first job's id).

        Raises :class:`ChainNotFoundError` if there is no such chain, and
        :class:`JobTypeMismatchError` if ``job_type`` is not the chain's type.
        ``job_type`` types the chain's input; the output is the output of the
        chain's *last* job (whatever type that is), so it is typed ``Any``,
        unless the entry type declares it (``entry(..., chain_output=T)``).
        With ``session`` the read joins that session's transaction.
        """
        chain_id = coerce_id(id)
        found = self._read(session, lambda ex: ops_chains.get_chain(ex, self.models, chain_id))
        if found is None:
            raise ChainNotFoundError(chain_id)
        root, latest = found
        if job_type is not None:
            job_type = self.job_types.resolve(job_type)
            if root["type_name"] != job_type.name:
                raise JobTypeMismatchError(
                    expected=job_type.name, actual=root["type_name"], id=chain_id
                )
        return chain_from_rows(self.job_types, root, latest, job_type)

    @overload
    def get_job(
        self, id: uuid.UUID | str, job_type: None = None, *, session: SessionLike | None = None
    ) -> Job[Any]: ...

    @overload
    def get_job(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        session: SessionLike | None = None,
    ) -> Job[InT]: ...

    def get_job(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        session: SessionLike | None = None,
    ) -> Job[Any]:
        """Read a job by id; :class:`JobNotFoundError` if it does not exist."""
        job_id = coerce_id(id)
        row = self._read(session, lambda ex: ops.get_job(ex, self.models, job_id))
        if row is None:
            raise JobNotFoundError(job_id)
        if job_type is not None:
            job_type = self.job_types.resolve(job_type)
            if row["type_name"] != job_type.name:
                raise JobTypeMismatchError(
                    expected=job_type.name, actual=row["type_name"], id=job_id
                )
        elif row["type_name"] in self.job_types:
            job_type = self.job_types.get(row["type_name"])
        return job_from_row(row, job_type)

    def _read(self, session: SessionLike | None, fn: Callable[[ops.Executor], R]) -> R:
        if session is not None:
            return fn(self.session_of(session))
        with self.engine.connect() as conn:
            return fn(conn)

    def get_job_blockers(
        self, id: uuid.UUID | str, *, session: SessionLike | None = None
    ) -> list[Chain[Any, Any]]:
        """The chains a job waits for (or waited for), in slot order."""
        job_id = coerce_id(id)

        return self._read(session, lambda ex: transitions.job_blockers(ex, self.ctx, job_id))

    # --- listing -----------------------------------------------------------------

    def list_chains(
        self,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
        **filters: Unpack[ChainFilters],
    ) -> Page[Chain[Any, Any]]:
        """One page of chains, newest first by default (by their start, then id).

        Args:
            types: Chain types (the types of their first jobs).
            statuses: The chains' statuses, i.e. of their latest jobs. Checked
                per chain, so combine it with a narrower filter on big tables.
            chain_ids: Only these chains.
            job_ids: Only the chains containing these jobs.
            created_since: Chains started at or after this time.
            created_before: Chains started before this time.
            roots_only: Only the chains that are no job's blocker: what was
                started for its own sake, not the chains other jobs wait for.
            order: ``"desc"`` (newest first) or ``"asc"``.
            cursor: ``next_cursor`` of the previous page; None for the first.
            limit: Page size, 1 to 1000 (default 50).
            session: Read in this session's transaction (default: a connection
                of its own).

        Pages are keyed on the last row, not offsets: chains started or
        deleted meanwhile never make a later page skip or repeat a chain.
        """
        checked = Filters(**rules.checked_filters("list_chains", filters))
        rows = self._page(session, "chains", order, cursor, limit, queries.list_chains, checked)
        return chain_page(self.job_types, rows, limit, order)

    def list_jobs(
        self,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
        **filters: Unpack[JobFilters],
    ) -> Page[Job[Any]]:
        """One page of jobs of any chain, newest first by default (by creation, then id).

        ``types`` are the jobs' own types, ``chain_types`` the types of their
        chains; the other arguments are as for :meth:`list_chains`.
        """
        checked = Filters(**rules.checked_filters("list_jobs", filters))
        rows = self._page(session, "jobs", order, cursor, limit, queries.list_jobs, checked)
        return job_page(self.job_types, rows, limit, "jobs", order)

    def list_chain_jobs(
        self,
        chain_id: uuid.UUID | str,
        *,
        order: Literal["asc", "desc"] = "asc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
    ) -> Page[Job[Any]]:
        """One page of a chain's jobs, first step first by default (by ``chain_index``).

        An unknown chain gives an empty page.
        """
        wanted = coerce_id(chain_id)
        rows = self._page(
            session, "chain_jobs", order, cursor, limit, queries.list_chain_jobs, wanted
        )
        return chain_jobs_page(self.job_types, rows, limit, order)

    def list_blocked_jobs(
        self,
        chain_id: uuid.UUID | str,
        *,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
    ) -> Page[Job[Any]]:
        """One page of the jobs that declared ``chain_id`` as a blocker, newest first.

        Includes jobs already unblocked or completed: the blocker relation is
        kept for as long as both chains exist.
        """
        wanted = coerce_id(chain_id)
        query = queries.list_blocked_jobs
        rows = self._page(session, "blocked_jobs", order, cursor, limit, query, wanted)
        return job_page(self.job_types, rows, limit, "blocked_jobs", order)

    def _page(
        self,
        session: SessionLike | None,
        listing: str,
        order: str,
        cursor: str | None,
        limit: int,
        query: Callable[..., Any],
        where: object,
    ) -> Any:
        """The rows of one page of ``listing``: ``limit`` of them, and one more if there is more.

        ``where`` is the listing's filters, or its chain id (a chain's jobs, its dependents).
        """
        rules.check_page(order, limit)
        after: object = None
        if cursor is not None:
            decode = _cursor.decode_index if listing == "chain_jobs" else _cursor.decode_created
            after = decode(cursor, listing, order)
        condition = "filters" if isinstance(where, Filters) else "chain_id"
        return self._read(
            session,
            lambda ex: query(
                ex, self.models, order=order, after=after, limit=limit, **{condition: where}
            ),
        )
