"""The sync client: ``Queuert`` starts chains in the caller's transaction and reads them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast, overload

from sqlalchemy import Engine, RowMapping
from sqlalchemy.orm import Session, scoped_session

from . import _cursor, hooks
from ._entities import Chain, Dedup, Job, Page
from ._errors import (
    BlockerReference,
    BlockerReferenceError,
    ChainNotFoundError,
    DeduplicationError,
    EngineMismatchError,
    InvalidBlockersError,
    InvalidScheduleError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobNotTriggerableError,
    JobTypeMismatchError,
    SessionRequiredError,
    WaitChainTimeoutError,
)
from ._ids import coerce_id, new_id
from ._job_types import ChainStart, JobType, JobTypes
from .models import DEFAULT_MODELS, JobStatus, Models
from .notify import InMemoryNotify, NotifyAdapter
from .state import Capabilities, NewJob, immediate_engine, prepare_engine, queries
from .state import blockers as ops_blockers
from .state import chains as ops_chains
from .state import dedup as ops_dedup
from .state import operations as ops
from .state import removal as ops_removal
from .state.queries import Filters

if TYPE_CHECKING:
    from ._attempt import Attempt
    from ._retry import Backoff
    from ._worker import Worker

InT = TypeVar("InT")
OutT = TypeVar("OutT")
R = TypeVar("R")
P = ParamSpec("P")

Clock = Callable[[], dt.datetime]

log = logging.getLogger("queuert_sa")

#: What mutating and reading calls accept: a ``Session``, or a ``scoped_session``
#: (which stands for its current session).
SessionLike = Session | scoped_session[Any]


def utc_now() -> dt.datetime:
    """The default clock: the current time in UTC."""
    return dt.datetime.now(dt.UTC)


#: Default page size of the listings.
DEFAULT_PAGE_SIZE = 50
#: Largest page a listing returns.
MAX_PAGE_SIZE = 1000
#: Most chains ``cleanup`` examines per batch and ``delete_chains`` takes per
#: call (the ids are bound parameters; PostgreSQL allows 65,535 per statement).
MAX_BATCH_SIZE = 10_000


def _type_names(types: Iterable[JobType[Any, Any] | str] | None) -> list[str] | None:
    if types is None:
        return None
    if isinstance(types, (str, JobType)):
        raise TypeError("types= takes a list of job types or names; wrap a single one in [...]")
    return [t if isinstance(t, str) else t.name for t in types]


def _status_values(statuses: Iterable[JobStatus | str] | None) -> list[str] | None:
    if statuses is None:
        return None
    if isinstance(statuses, str):
        raise TypeError("statuses= takes a list of statuses; wrap a single one in [...]")
    values: list[str] = []
    for status in statuses:
        try:
            values.append(JobStatus(status).value)
        except ValueError:
            known = ", ".join(s.value for s in JobStatus)
            raise ValueError(f"Unknown job status {status!r}; one of: {known}.") from None
    return values


def _ids(ids: Iterable[uuid.UUID | str] | None, name: str) -> list[uuid.UUID] | None:
    if ids is None:
        return None
    if isinstance(ids, (str, uuid.UUID)):
        raise TypeError(f"{name}= takes a list of ids; wrap a single id in [...]")
    return [coerce_id(i) for i in ids]


def _aware(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name}={value!r} is naive; pass an aware datetime (UTC).")
    return value


def _check_page(order: str, limit: int) -> None:
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit!r}")


def check_schedule(type_name: str, run_at: dt.datetime | None, run_in: dt.timedelta | None) -> None:
    """Raise :class:`InvalidScheduleError` for schedule options that cannot be honoured."""
    if run_at is not None and run_in is not None:
        raise InvalidScheduleError(
            f"Job of type {type_name!r}: pass run_at= or run_in=, not both.", type_name=type_name
        )
    if run_at is not None and run_at.tzinfo is None:
        raise InvalidScheduleError(
            f"Job of type {type_name!r}: run_at={run_at!r} is naive; pass an aware datetime "
            "(e.g. datetime.now(UTC) + delay).",
            type_name=type_name,
        )


def scheduled_time(
    now: dt.datetime, run_at: dt.datetime | None, run_in: dt.timedelta | None
) -> dt.datetime:
    """When a new job becomes due: ``run_at``/``run_in`` clamped to ``now``.

    A past ``run_at`` never jumps the queue ahead of jobs already due. The
    options must have passed :func:`check_schedule`.
    """
    if run_at is not None:
        return max(run_at.astimezone(dt.UTC), now)
    if run_in is not None:
        return now + max(run_in, dt.timedelta(0))
    return now


def describe_job(
    job_type: Callable[P, ChainStart[InT, OutT]], /, *args: P.args, **kwargs: P.kwargs
) -> ChainStart[InT, OutT]:
    """Build the ``ChainStart`` for ``job_type(*args, **kwargs)``, refusing non-job-types."""
    candidate: object = job_type
    if not isinstance(candidate, JobType):
        raise TypeError(f"expected a JobType (from job_types.entry/define), got {candidate!r:.60}")
    return job_type(*args, **kwargs)


def check_blocker_refs(job_type: JobType[Any, Any], refs: Sequence[Any]) -> list[uuid.UUID]:
    """Validate the blockers given for a job, before any SQL: count and ids."""
    job_type.require_blocker_count(len(refs))
    ids = [coerce_id(getattr(ref, "id", ref)) for ref in refs]
    if len(set(ids)) != len(ids):
        raise InvalidBlockersError(
            f"Job type {job_type.name!r}: the same chain fills two blocker slots; each slot "
            "takes a different chain.",
            type_name=job_type.name,
        )
    return ids


def resolve_blockers(
    client: Queuert,
    session: Session,
    wanted: Sequence[tuple[JobType[Any, Any], list[uuid.UUID]]],
) -> list[JobStatus]:
    """Check that the blocker chains exist and fit their slots; the new jobs' statuses.

    Locks each blocker chain's latest job (see ``read_blocker_chains``). A job
    whose blockers are all completed starts ``pending``, otherwise ``blocked``.
    """
    ids = {chain_id for _, chain_ids in wanted for chain_id in chain_ids}
    if ids:
        # SQLite: become the writer before reading, so the read is not stale
        # when the INSERT comes (another writer committing in between would
        # fail the transaction with "database is locked").
        ops.take_write_lock(session, client.models, client.capabilities)
    found = (
        ops_blockers.read_blocker_chains(session, client.models, client.capabilities, ids)
        if ids
        else {}
    )
    statuses: list[JobStatus] = []
    for job_type, chain_ids in wanted:
        done = True
        for index, chain_id in enumerate(chain_ids):
            info = found.get(chain_id)
            if info is None:
                raise InvalidBlockersError(
                    f"Job type {job_type.name!r}: blocker chain {chain_id} (slot {index}) does "
                    "not exist (a chain's id is its first job's id).",
                    type_name=job_type.name,
                )
            expected = job_type.blocker_type_at(index)
            if expected is not None and info[0] != expected.name:
                raise InvalidBlockersError(
                    f"Job type {job_type.name!r}: blocker slot {index} takes a {expected.name!r} "
                    f"chain; {chain_id} is a {info[0]!r} chain.",
                    type_name=job_type.name,
                )
            done = done and info[1]
        statuses.append(JobStatus.PENDING if done else JobStatus.BLOCKED)
    return statuses


def job_from_row(row: Mapping[Any, Any], job_type: JobType[Any, Any] | None = None) -> Job[Any]:
    """Snapshot a job row; the input is decoded when its type is known."""
    raw_input = row["input"]
    return Job(
        id=row["id"],
        type_name=row["type_name"],
        chain_id=row["chain_id"],
        chain_type_name=row["chain_type_name"],
        chain_index=row["chain_index"],
        input=job_type.decode_input(raw_input) if job_type is not None else raw_input,
        output=row["output"],
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        scheduled_at=row["scheduled_at"],
        completed_at=row["completed_at"],
        completed_by=row["completed_by"],
        attempt=row["attempt"],
        last_attempt_at=row["last_attempt_at"],
        last_attempt_error=row["last_attempt_error"],
        leased_by=row["leased_by"],
        leased_until=row["leased_until"],
        deduplication_key=row["deduplication_key"],
    )


class Queuert:
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
    """

    def __init__(
        self,
        engine: Engine,
        job_types: JobTypes,
        *,
        notify: NotifyAdapter | None = None,
        models: Models = DEFAULT_MODELS,
        clock: Clock = utc_now,
    ) -> None:
        if not isinstance(engine, Engine):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"Queuert needs a sqlalchemy Engine, got {type(engine).__name__}; "
                "for an AsyncEngine use AsyncQueuert."
            )
        job_types.validate()
        self.engine = engine
        self.job_types = job_types
        self.notify: NotifyAdapter = notify if notify is not None else InMemoryNotify()
        self.models = models
        self.clock = clock
        self.capabilities: Capabilities = prepare_engine(engine)

    def __repr__(self) -> str:
        return f"<Queuert {self.engine.url!r} types={list(self.job_types.names)}>"

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
        run_at=None, run_in=None)``; the arguments after ``job_type`` are those
        of calling the job type, so type checkers check ``input`` against it.

        Nothing is committed: the job becomes visible to workers when the
        caller commits, and the wake-up is sent only after that COMMIT. On
        rollback (or a rolled-back SAVEPOINT) there is no job and no wake-up.

        Validation happens before any SQL: an unknown or non-entry type, an input
        that is not JSON, or an invalid id raise a :class:`QueuertError` subclass.

        Args:
            session: The caller's ``Session``; flushed into, never committed.
            job_type: An entry type of this client's ``JobTypes``.
            input: The job's input (a JSON value, or an instance of the declared
                dataclass).
            id: The chain's id (a UUID); generated (UUIDv7) when omitted.
            run_at: Earliest start (aware datetime), clamped to now.
            run_in: Earliest start as a delay from now.
        """
        return self.start_chains(session, [describe_job(job_type, *args, **kwargs)])[0]

    def start_chains(
        self, session: SessionLike, starts: Sequence[ChainStart[Any, Any]]
    ) -> list[Chain[Any, Any]]:
        """Start several chains with one INSERT (one round trip), in ``session``'s transaction.

        All-or-nothing with the caller's transaction, like :meth:`start_chain`.
        Every start is validated before any SQL is sent.
        """
        session = self.session_of(session)
        now = self.clock()
        jobs: list[NewJob] = []
        blockers: list[tuple[JobType[Any, Any], list[uuid.UUID]]] = []
        for start in starts:
            job_type = self.job_types.resolve(start.job_type)
            job_type.require_entry()
            check_schedule(job_type.name, start.run_at, start.run_in)
            if start.dedup is not None and not isinstance(start.dedup, Dedup):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise DeduplicationError(
                    f"dedup= takes a queuert_sa.Dedup, got {type(start.dedup).__name__}."
                )
            blockers.append((job_type, check_blocker_refs(job_type, start.blockers)))
            encoded = job_type.encode_input(start.input)
            job_id = coerce_id(start.id) if start.id is not None else new_id()
            jobs.append(
                NewJob(
                    id=job_id,
                    type_name=job_type.name,
                    chain_id=job_id,
                    chain_type_name=job_type.name,
                    chain_index=0,
                    input=encoded,
                    status=JobStatus.PENDING,
                    created_at=now,
                    scheduled_at=scheduled_time(now, start.run_at, start.run_in),
                    deduplication_key=start.dedup.key if start.dedup is not None else None,
                )
            )
        duplicates = self._find_duplicates(session, starts, jobs, now)
        fresh = [i for i in range(len(jobs)) if i not in duplicates]
        if len(fresh) < len(jobs):
            jobs = [jobs[i] for i in fresh]
            blockers = [blockers[i] for i in fresh]
        if any(chain_ids for _, chain_ids in blockers):
            statuses = resolve_blockers(self, session, blockers)
            jobs = [dataclasses.replace(j, status=s) for j, s in zip(jobs, statuses, strict=True)]
        ops.insert_jobs(session, self.models, jobs)
        ops_blockers.insert_blockers(
            session,
            self.models,
            [
                (job.id, chain_id, index)
                for job, (_, chain_ids) in zip(jobs, blockers, strict=True)
                for index, chain_id in enumerate(chain_ids)
            ],
        )
        self._wake_after_commit(
            session, Counter(job.type_name for job in jobs if job.status == JobStatus.PENDING)
        )
        created: dict[uuid.UUID, Chain[Any, Any]] = {
            job.id: Chain(
                id=job.id,
                type_name=job.type_name,
                input=starts[i].input,
                status=job.status,
                output=None,
                created_at=job.created_at,
                completed_at=None,
                current_job_id=job.id,
                current_type_name=job.type_name,
                current_index=0,
            )
            for i, job in zip(fresh, jobs, strict=True)
        }
        results: list[Chain[Any, Any]] = []
        fresh_jobs = iter(jobs)
        for i in range(len(starts)):
            duplicate = duplicates.get(i)
            if duplicate is None:
                results.append(created[next(fresh_jobs).id])
            elif isinstance(duplicate, int):  # an earlier start of this batch
                results.append(dataclasses.replace(results[duplicate], deduplicated=True))
            else:
                results.append(duplicate)
        return results

    def _find_duplicates(
        self,
        session: Session,
        starts: Sequence[ChainStart[Any, Any]],
        jobs: Sequence[NewJob],
        now: dt.datetime,
    ) -> dict[int, Chain[Any, Any] | int]:
        """Which starts duplicate an existing chain (the chain) or an earlier start (its index).

        Concurrent transactions with the same (chain type, key) are serialised
        first (an advisory lock on PostgreSQL, the write lock on SQLite), so the
        lookup sees any chain a concurrent start committed.
        """
        keyed = [(i, start.dedup) for i, start in enumerate(starts) if start.dedup is not None]
        if not keyed:
            return {}
        keys = {(jobs[i].chain_type_name, dedup.key) for i, dedup in keyed}
        isolation = ops_dedup.lock_dedup_keys(session, self.models, self.capabilities, keys)
        if isolation is not None and isolation != "read committed":
            raise DeduplicationError(
                f"Deduplication needs a READ COMMITTED transaction on PostgreSQL; this one is "
                f"{isolation.upper()}, whose snapshot would miss a chain that a concurrent "
                "transaction just committed. Start deduplicated chains in a READ COMMITTED "
                "transaction (the default)."
            )
        found: dict[int, Chain[Any, Any] | int] = {}
        first_of_key: dict[tuple[str, str], int] = {}
        for i, dedup in keyed:
            job = jobs[i]
            batch_key = (job.chain_type_name, dedup.key)
            if batch_key in first_of_key:
                first = first_of_key[batch_key]
                found[i] = found.get(first, first)
                continue
            first_of_key[batch_key] = i
            chain_id = ops_dedup.find_duplicate(
                session,
                self.models,
                chain_type_name=job.chain_type_name,
                key=dedup.key,
                scope=dedup.scope,
                since=now - dedup.window if dedup.window is not None else None,
                exclude=dedup.exclude,
            )
            rows = None
            for _ in range(10):
                if chain_id is None:
                    break
                rows = ops_chains.get_chain(session, self.models, chain_id)
                if rows is not None:
                    break
                # Deleted (delete_chains, cleanup) between the two reads: look again.
                chain_id = ops_dedup.find_duplicate(
                    session,
                    self.models,
                    chain_type_name=job.chain_type_name,
                    key=dedup.key,
                    scope=dedup.scope,
                    since=now - dedup.window if dedup.window is not None else None,
                    exclude=dedup.exclude,
                )
            if rows is None:
                continue
            job_type = self.job_types.resolve(starts[i].job_type)
            chain = self._chain_from_rows(*rows, job_type)
            found[i] = dataclasses.replace(chain, deduplicated=True)
        return found

    def _lost_after_commit(self, session: Session, job_id: uuid.UUID) -> None:
        hooks.on_commit(session, partial(self.notify.notify_job_ownership_lost, job_id))

    def _wake_after_commit(self, session: Session, counts: Counter[str]) -> None:
        notify = self.notify
        for type_name, count in counts.items():
            hooks.on_commit(session, partial(notify.notify_job_scheduled, type_name, count))

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
        chain's *last* job (whatever type that is), so it is typed ``Any``.
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
        return self._chain_from_rows(root, latest, job_type)

    def _chain_from_rows(
        self, root: RowMapping, latest: RowMapping, job_type: JobType[Any, Any] | None
    ) -> Chain[Any, Any]:
        status = JobStatus(latest["status"])
        completed = status == JobStatus.COMPLETED
        raw_output = latest["output"] if completed else None
        output = raw_output
        if completed and latest["type_name"] in self.job_types and raw_output is not None:
            output = self.job_types.get(latest["type_name"]).decode_output(raw_output)
        return Chain(
            id=root["id"],
            type_name=root["type_name"],
            input=job_type.decode_input(root["input"]) if job_type else root["input"],
            status=status,
            output=output,
            created_at=root["created_at"],
            completed_at=latest["completed_at"] if completed else None,
            current_job_id=latest["id"],
            current_type_name=latest["type_name"],
            current_index=latest["chain_index"],
        )

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

        def read(ex: ops.Executor) -> list[Chain[Any, Any]]:
            chains: list[Chain[Any, Any]] = []
            for chain_id in ops_blockers.blocker_chain_ids(ex, self.models, job_id):
                found = ops_chains.get_chain(ex, self.models, chain_id)
                if found is not None:
                    chains.append(self._chain_from_rows(*found, None))
            return chains

        return self._read(session, read)

    # --- listing -----------------------------------------------------------------

    def list_chains(
        self,
        *,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        statuses: Iterable[JobStatus | str] | None = None,
        chain_ids: Iterable[uuid.UUID | str] | None = None,
        job_ids: Iterable[uuid.UUID | str] | None = None,
        created_since: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
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
            order: ``"desc"`` (newest first) or ``"asc"``.
            cursor: ``next_cursor`` of the previous page; None for the first.
            limit: Page size, 1 to 1000 (default 50).
            session: Read in this session's transaction (default: a connection
                of its own).

        Pages are keyed on the last row, not offsets: chains started or
        deleted meanwhile never make a later page skip or repeat a chain.
        """
        filters = Filters(
            chain_type_names=None,
            type_names=_type_names(types),
            statuses=_status_values(statuses),
            chain_ids=_ids(chain_ids, "chain_ids"),
            job_ids=_ids(job_ids, "job_ids"),
            created_since=_aware(created_since, "created_since"),
            created_before=_aware(created_before, "created_before"),
        )
        _check_page(order, limit)
        after = None if cursor is None else _cursor.decode_created(cursor, "chains", order)
        rows = self._read(
            session,
            lambda ex: queries.list_chains(
                ex, self.models, filters=filters, order=order, after=after, limit=limit
            ),
        )
        chains = [self._chain_from_rows(root, latest, None) for root, latest in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = chains[-1]
            next_cursor = _cursor.encode_created("chains", order, last.created_at, last.id)
        return Page(chains, next_cursor)

    def list_jobs(
        self,
        *,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        chain_types: Iterable[JobType[Any, Any] | str] | None = None,
        statuses: Iterable[JobStatus | str] | None = None,
        chain_ids: Iterable[uuid.UUID | str] | None = None,
        job_ids: Iterable[uuid.UUID | str] | None = None,
        created_since: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
        order: Literal["asc", "desc"] = "desc",
        cursor: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        session: SessionLike | None = None,
    ) -> Page[Job[Any]]:
        """One page of jobs of any chain, newest first by default (by creation, then id).

        ``types`` are the jobs' own types, ``chain_types`` the types of their
        chains; the other arguments are as for :meth:`list_chains`.
        """
        filters = Filters(
            type_names=_type_names(types),
            chain_type_names=_type_names(chain_types),
            statuses=_status_values(statuses),
            chain_ids=_ids(chain_ids, "chain_ids"),
            job_ids=_ids(job_ids, "job_ids"),
            created_since=_aware(created_since, "created_since"),
            created_before=_aware(created_before, "created_before"),
        )
        _check_page(order, limit)
        after = None if cursor is None else _cursor.decode_created(cursor, "jobs", order)
        rows = self._read(
            session,
            lambda ex: queries.list_jobs(
                ex, self.models, filters=filters, order=order, after=after, limit=limit
            ),
        )
        return self._job_page(rows, limit, "jobs", order)

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
        _check_page(order, limit)
        after = None if cursor is None else _cursor.decode_index(cursor, "chain_jobs", order)
        rows = self._read(
            session,
            lambda ex: queries.list_chain_jobs(
                ex, self.models, chain_id=wanted, order=order, after=after, limit=limit
            ),
        )
        jobs = [self._job_snapshot(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = _cursor.encode_index("chain_jobs", order, jobs[-1].chain_index)
        return Page(jobs, next_cursor)

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
        _check_page(order, limit)
        after = None if cursor is None else _cursor.decode_created(cursor, "blocked_jobs", order)
        rows = self._read(
            session,
            lambda ex: queries.list_blocked_jobs(
                ex, self.models, chain_id=wanted, order=order, after=after, limit=limit
            ),
        )
        return self._job_page(rows, limit, "blocked_jobs", order)

    def _job_snapshot(self, row: RowMapping) -> Job[Any]:
        known = row["type_name"] in self.job_types
        return job_from_row(row, self.job_types.get(row["type_name"]) if known else None)

    def _job_page(
        self, rows: Sequence[RowMapping], limit: int, listing: str, order: str
    ) -> Page[Job[Any]]:
        jobs = [self._job_snapshot(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = jobs[-1]
            next_cursor = _cursor.encode_created(listing, order, last.created_at, last.id)
        return Page(jobs, next_cursor)

    # --- operating: trigger, delete, clean up ----------------------------------

    def trigger_job(self, session: SessionLike, id: uuid.UUID | str) -> Job[Any]:
        """Make a pending job due now, in ``session``'s transaction (never committed here).

        A job scheduled for later (``run_at``/``run_in``, a retry's backoff)
        becomes due at once; one already due keeps its place. Workers are woken
        after COMMIT. Raises :class:`JobNotFoundError`, and
        :class:`JobNotTriggerableError` for a job that is blocked, running or
        completed. Returns the job as updated.
        """
        session = self.session_of(session)
        job_id = coerce_id(id)
        row = ops.trigger_job(session, self.models, job_id=job_id, now=self.clock())
        if row is None:
            current = ops.get_job(session, self.models, job_id)
            if current is None:
                raise JobNotFoundError(job_id)
            raise JobNotTriggerableError(job_id, status=str(current["status"]))
        self._wake_after_commit(session, Counter({row["type_name"]: 1}))
        return self._job_snapshot(row)

    def delete_chains(
        self,
        session: SessionLike,
        ids: Iterable[uuid.UUID | str],
        *,
        cascade: bool = False,
    ) -> list[Chain[Any, Any]]:
        """Delete chains (every job, and their blocker rows), in ``session``'s transaction.

        All or nothing: if a job outside the deletion set declares one of the
        chains as a blocker, :class:`BlockerReferenceError` lists those
        references and nothing is deleted. ``cascade=True`` also deletes the
        chains that the listed chains' jobs declare as blockers, transitively
        (and is refused in the same way if one of those is referenced from
        outside). Ids of chains that do not exist are skipped.

        The chains' jobs are locked first, so this waits for an atomic attempt
        running one of them to finish. A staged attempt running one finds its
        job gone when it writes, and writes nothing. Returns the deleted
        chains as they were, the listed ones first.
        """
        if isinstance(ids, (str, uuid.UUID)):
            raise TypeError("delete_chains takes a list of chain ids; wrap a single id in [...]")
        session = self.session_of(session)
        wanted = list(dict.fromkeys(coerce_id(i) for i in ids))
        if len(wanted) > MAX_BATCH_SIZE:
            raise ValueError(
                f"delete_chains takes at most {MAX_BATCH_SIZE} ids per call (got {len(wanted)}); "
                "split the list (each call is its own all-or-nothing set)."
            )
        found = ops_removal.lock_chains(session, self.models, self.capabilities, wanted)
        doomed = [chain_id for chain_id in wanted if chain_id in found]
        if cascade:
            frontier = set(doomed)
            while frontier:
                blockers = ops_removal.blocker_chains_of(session, self.models, frontier)
                new = sorted(blockers - set(doomed))
                frontier = ops_removal.lock_chains(session, self.models, self.capabilities, new)
                doomed += [chain_id for chain_id in new if chain_id in frontier]
        references = ops_removal.outside_references(session, self.models, doomed)
        if references:
            raise BlockerReferenceError([BlockerReference(*ref) for ref in references])
        rows = queries.list_chains(
            session,
            self.models,
            filters=Filters(chain_ids=doomed),
            order="asc",
            after=None,
            limit=max(len(doomed), 1),
        )
        by_id = {root["id"]: self._chain_from_rows(root, latest, None) for root, latest in rows}
        ops_removal.delete_chain_rows(session, self.models, doomed)
        for _, latest in rows:
            if latest["status"] == JobStatus.RUNNING:
                # A staged attempt is running it: tell its worker after COMMIT.
                self._lost_after_commit(session, latest["id"])
        return [by_id[chain_id] for chain_id in doomed if chain_id in by_id]

    def cleanup(
        self,
        *,
        older_than: dt.timedelta,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete chains completed more than ``older_than`` ago, in batches; how many went.

        Retention for completed work. Each batch is its own short transaction
        (on this client's engine), so a large backlog never holds locks for
        long; run it from cron (``queuert-sa cleanup``) or a periodic *staged*
        handler after ``prepare()`` (an atomic handler holds a transaction,
        and on SQLite the write lock, that cleanup's batches would wait for).

        Never deleted: open chains, chains completed within ``older_than``,
        and the blocker chains of those (a dependent that has not finished
        may still read its blockers' outputs). A completed dependent does not
        protect its blockers: they go once old, and its blocker rows with
        them. On PostgreSQL a chain that another transaction holds (e.g. a
        producer attaching it as a blocker) is skipped, not waited for. With
        ``types``, only chains of those types go (and their blockers stay
        while a dependent of another type needs them).

        Args:
            older_than: How long a completed chain is kept.
            types: Only chains of these types; default all.
            batch_size: Chains examined per transaction.
            max_batches: Stop after this many batches (default: until done).
        """
        if older_than < dt.timedelta(0):
            raise ValueError(f"older_than must not be negative, got {older_than!r}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE or (max_batches is not None and max_batches < 1):
            raise ValueError(
                f"batch_size must be between 1 and {MAX_BATCH_SIZE} and max_batches at least 1"
            )
        cutoff = self.clock() - older_than
        type_names = _type_names(types)
        engine = immediate_engine(self.engine)
        after: tuple[dt.datetime, uuid.UUID] | None = None
        deleted = batches = 0
        while max_batches is None or batches < max_batches:
            # BEGIN (IMMEDIATE on SQLite) may itself fail: translate that too.
            with ops.database_errors("clean up chains", self.models), engine.begin() as conn:
                examined, gone, after = self.cleanup_batch(
                    conn, cutoff=cutoff, type_names=type_names, after=after, limit=batch_size
                )
            deleted += gone
            batches += 1
            if examined < batch_size:
                break
        log.info("cleanup deleted %d chains completed before %s", deleted, cutoff.isoformat())
        return deleted

    def cleanup_batch(
        self,
        executor: ops.Executor,
        *,
        cutoff: dt.datetime,
        type_names: Sequence[str] | None,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> tuple[int, int, tuple[dt.datetime, uuid.UUID] | None]:
        """One retention batch in the caller's transaction: (examined, deleted, next key)."""
        candidates = ops_removal.retention_candidates(
            executor,
            self.models,
            self.capabilities,
            cutoff=cutoff,
            type_names=type_names,
            after=after,
            limit=limit,
        )
        if not candidates:
            return 0, 0, after
        ids = ops_removal.lock_whole_chains(
            executor, self.models, self.capabilities, {chain_id for chain_id, _ in candidates}
        )
        keep = ops_removal.still_needed(
            executor, self.models, chain_ids=ids, cutoff=cutoff, type_names=type_names
        )
        ops_removal.delete_chain_rows(executor, self.models, ids - keep)
        last_id, last_created = candidates[-1]
        return len(candidates), len(ids - keep), (last_created, last_id)

    # --- waiting and completing from application code -------------------------

    @overload
    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: None = None,
        *,
        timeout: dt.timedelta = ...,
        poll_interval: dt.timedelta = ...,
    ) -> Chain[Any, Any]: ...

    @overload
    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[InT, Any],
        *,
        timeout: dt.timedelta = ...,
        poll_interval: dt.timedelta = ...,
    ) -> Chain[InT, Any]: ...

    def await_chain(
        self,
        id: uuid.UUID | str,
        job_type: JobType[Any, Any] | None = None,
        *,
        timeout: dt.timedelta = dt.timedelta(seconds=30),
        poll_interval: dt.timedelta = dt.timedelta(seconds=1),
    ) -> Chain[Any, Any]:
        """Block until the chain completes and return it.

        Wakes on the notify adapter's chain-completed message (at once for a
        worker of this client in this process) and otherwise re-reads the chain
        every ``poll_interval`` (default 1 s). Raises
        :class:`WaitChainTimeoutError` after ``timeout`` (default 30 s) and
        :class:`ChainNotFoundError` for an unknown id, or if the chain is
        deleted while waiting. Do not call it inside a transaction that the
        chain's jobs depend on: nothing you have not committed can complete.
        """
        chain_id = coerce_id(id)
        woken = threading.Event()
        subscription = self.notify.listen_chain_completed(chain_id, lambda _id: woken.set())
        try:
            deadline = time.monotonic() + timeout.total_seconds()
            while True:
                woken.clear()  # before reading: a completion after the read wakes us
                chain = self.get_chain(chain_id, job_type)
                if chain.is_completed:
                    return chain
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

        Raises :class:`ChainNotFoundError`, :class:`JobTypeMismatchError` if
        ``job_type`` is not the chain's type, and
        :class:`JobAlreadyCompletedError` if the chain is already complete.
        Returns the chain as it is now in ``session``.
        """
        from ._attempt import Attempt

        session = self.session_of(session)
        chain_id = coerce_id(id)
        chain_type = self.job_types.resolve(job_type)
        ops.take_write_lock(session, self.models, self.capabilities)
        found = ops_chains.lock_chain(session, self.models, self.capabilities, chain_id)
        if found is None:
            raise ChainNotFoundError(chain_id)
        root, latest = found
        if root["type_name"] != chain_type.name:
            raise JobTypeMismatchError(
                expected=chain_type.name, actual=root["type_name"], id=chain_id
            )
        if latest["status"] == JobStatus.COMPLETED:
            raise JobAlreadyCompletedError(latest["id"])
        current_type = self.job_types.get(latest["type_name"])
        completion: Attempt[Any, Any] = Attempt(
            client=self,
            job_type=current_type,
            job=job_from_row(latest, current_type),
            session=session,
            worker_id=None,
            mode="workerless",
            blockers=[
                chain
                for chain in (
                    self.get_job_blockers(latest["id"], session=session)
                    if current_type.blocker_types
                    else ()
                )
                if chain.is_completed
            ],
        )
        result = fn(completion)
        if completion.outcome is not None and latest["status"] == JobStatus.RUNNING:
            # The lock waited out any atomic attempt: a staged one holds this job.
            self._lost_after_commit(session, latest["id"])
        if completion.outcome is not None:
            if result is not None and not completion.owns(result):
                raise TypeError(
                    f"complete_chain's function returned {result!r:.60}; return the outcome of "
                    "completion.complete()/continue_with(), or None"
                )
            session.flush()
            completion.write_outcome(session)
        return self.get_chain(chain_id, job_type, session=session)

    # --- workers -------------------------------------------------------------

    def worker(
        self,
        *,
        concurrency: int = 1,
        poll_interval: dt.timedelta = dt.timedelta(seconds=5),
        backoff: Backoff | None = None,
        shutdown_grace: dt.timedelta = dt.timedelta(seconds=30),
        worker_id: str | None = None,
        session_factory: Callable[[], Session] | None = None,
        handle_signals: Literal["auto", "never"] = "auto",
    ) -> Worker:
        """Create a thread-pool worker for this client; register handlers, then ``run()``.

        See :class:`Worker` for the meaning and defaults of each option.
        """
        from ._worker import Worker

        return Worker(
            self,
            concurrency=concurrency,
            poll_interval=poll_interval,
            backoff=backoff,
            shutdown_grace=shutdown_grace,
            worker_id=worker_id,
            session_factory=session_factory,
            handle_signals=handle_signals,
        )
