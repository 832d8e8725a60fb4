"""Pure rules of the domain: validation before any SQL, schedules, limits, decisions.

Everything here is a function of its arguments (and ``now`` where time
matters): no session, no engine, no clock of its own. The client, the chain
transitions and the attempt all apply the same rules from here, so a start
and a continuation are validated alike, and the sync and async clients share
one set of argument checks.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypedDict, TypeVar

from ._durations import Duration, as_duration
from ._entities import Chain, Job
from ._errors import (
    ChainCancelledError,
    ChainFailedError,
    DeduplicationError,
    InvalidBlockersError,
    InvalidPriorityError,
    InvalidScheduleError,
)
from ._ids import coerce_id, new_id
from ._job_types import ChainStart, JobType, JobTypes
from ._json import JSONValue
from .models import JobStatus

InT = TypeVar("InT")
OutT = TypeVar("OutT")
P = ParamSpec("P")

#: Default page size of the listings.
DEFAULT_PAGE_SIZE = 50
#: Largest page a listing returns.
MAX_PAGE_SIZE = 1000
#: The priorities a job may have: PostgreSQL's INTEGER, the ``priority`` column's type.
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1
#: Most chains ``cleanup`` examines per batch and ``delete_chains`` takes per
#: call (the ids are bound parameters; PostgreSQL allows 65,535 per statement).
MAX_BATCH_SIZE = 10_000


# --- what an outcome decided (recorded by the attempt, written by the transitions) ---


@dataclass(frozen=True)
class Completed:
    """The job, and with it the chain, finished with ``output`` (already encoded)."""

    output: JSONValue


@dataclass(frozen=True)
class Continued:
    """The job finished by handing its chain to a next job (validated, not yet written)."""

    target: JobType[Any, Any]
    input: JSONValue
    id: uuid.UUID
    run_at: dt.datetime | None
    run_in: Duration | None
    blockers: list[uuid.UUID]
    priority: int | None = None
    """The next job's priority; ``None``: the current job's (inherited)."""
    explicit_id: bool = False
    """``id`` was given by the caller (checked against other jobs' before the INSERT)."""


Decision = Completed | Continued


# --- starting and continuing ------------------------------------------------------


def check_schedule(type_name: str, run_at: dt.datetime | None, run_in: Duration | None) -> None:
    """Raise :class:`InvalidScheduleError` for schedule options that cannot be honoured."""
    if run_in is not None:
        try:
            as_duration(run_in, "run_in")
        except TypeError as exc:
            raise InvalidScheduleError(
                f"Job of type {type_name!r}: {exc}", type_name=type_name
            ) from None
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


def check_priority(type_name: str, priority: object) -> int | None:
    """``priority=`` as given (``None``: not given); :class:`InvalidPriorityError` if unusable.

    An int in PostgreSQL's INTEGER range (an ``IntEnum`` member counts as its
    value); ``True``/``False`` are refused, as a float or a numeric string is,
    rather than read as 1/0.
    """
    if priority is None:
        return None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidPriorityError(
            f"Job of type {type_name!r}: priority={priority!r:.60} is a "
            f"{type(priority).__name__}; pass an int (higher runs first, default 0), "
            f"e.g. priority=10.",
            type_name=type_name,
            value=priority,
        )
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidPriorityError(
            f"Job of type {type_name!r}: priority={priority} is outside "
            f"{PRIORITY_MIN}..{PRIORITY_MAX} (the column is a 32-bit INTEGER); pass a "
            "smaller value: only the order of priorities matters.",
            type_name=type_name,
            value=priority,
        )
    return int(priority)


def scheduled_time(
    now: dt.datetime, run_at: dt.datetime | None, run_in: Duration | None
) -> dt.datetime:
    """When a new job becomes due: ``run_at``/``run_in`` clamped to ``now``.

    A past ``run_at`` never jumps the queue ahead of jobs already due. The
    options must have passed :func:`check_schedule`.
    """
    if run_at is not None:
        return max(run_at.astimezone(dt.UTC), now)
    if run_in is not None:
        return now + max(as_duration(run_in, "run_in"), dt.timedelta(0))
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


def continuation(
    job_types: JobTypes, current: JobType[Any, Any], start: ChainStart[Any, Any]
) -> Continued:
    """Validate ``continue_with(start)`` from a job of type ``current``; nothing is written."""
    target = job_types.resolve(start.job_type)
    current.require_continuation(target)
    if start.dedup is not None:
        raise DeduplicationError(
            f"continue_with({target.name!r}, dedup=...): deduplication applies to starting "
            "chains; a continuation belongs to its chain and is never duplicated. Start a "
            "new chain with queuert.start_chain(attempt.session, ..., dedup=...) instead."
        )
    check_schedule(target.name, start.run_at, start.run_in)
    return Continued(
        target=target,
        input=target.encode_input(start.input),
        id=coerce_id(start.id) if start.id is not None else new_id(),
        run_at=start.run_at,
        run_in=start.run_in,
        blockers=check_blocker_refs(target, start.blockers),
        priority=check_priority(target.name, start.priority),
        explicit_id=start.id is not None,
    )


# --- listing and operating arguments ----------------------------------------------


class ListingFilters(TypedDict, total=False):
    """The filters ``list_chains`` and ``list_jobs`` share (keyword arguments); each left out
    means no condition."""

    types: Iterable[JobType[Any, Any] | str] | None
    """Chain types (the types of their first jobs); for ``list_jobs``, the jobs' own types."""
    statuses: Iterable[JobStatus | str] | None
    """Chains' statuses, i.e. of their latest jobs (checked per chain, so combine it
    with a narrower filter on big tables); for ``list_jobs``, the jobs' own statuses."""
    chain_ids: Iterable[uuid.UUID | str] | None
    """Only these chains (``list_jobs``: only their jobs)."""
    job_ids: Iterable[uuid.UUID | str] | None
    """Only the chains containing these jobs (``list_jobs``: only these jobs)."""
    created_since: dt.datetime | None
    """Started (created) at or after this time."""
    created_before: dt.datetime | None
    """Started (created) before this time."""


class ChainFilters(ListingFilters, total=False):
    """What ``list_chains`` narrows to: the shared filters, plus ``roots_only``."""

    roots_only: bool
    """Only chains that are no other job's blocker (the work someone started, not the
    chains it waits for)."""


class JobFilters(ListingFilters, total=False):
    """What ``list_jobs`` narrows to: the shared filters, plus the types of the jobs' chains."""

    chain_types: Iterable[JobType[Any, Any] | str] | None
    """Only jobs of chains of these types."""


_SHARED_FILTERS = frozenset(ListingFilters.__annotations__)
_CHAIN_FILTERS = frozenset(ChainFilters.__annotations__) | _SHARED_FILTERS
_JOB_FILTERS = frozenset(JobFilters.__annotations__) | _SHARED_FILTERS


def checked_filters(listing: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The listing filters, checked and normalised, keyed as ``state.queries.Filters`` fields.

    ``given`` comes from keyword arguments: a name the listing does not take
    (a typo such as ``status=``) is refused as Python would refuse it.
    """
    allowed = _JOB_FILTERS if listing == "list_jobs" else _CHAIN_FILTERS
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(
            f"{listing}() got an unexpected keyword argument {unknown[0]!r}; it takes "
            f"{', '.join(sorted(allowed))}, order, cursor, limit and session."
        )
    roots_only = given.get("roots_only", False)
    if not isinstance(roots_only, bool):
        raise TypeError(f"roots_only= takes True or False, got {roots_only!r:.40}")
    return {
        "roots_only": roots_only,
        "type_names": type_names(given.get("types")),
        "chain_type_names": type_names(given.get("chain_types")),
        "statuses": status_values(given.get("statuses")),
        "chain_ids": id_list(given.get("chain_ids"), "chain_ids"),
        "job_ids": id_list(given.get("job_ids"), "job_ids"),
        "created_since": aware(given.get("created_since"), "created_since"),
        "created_before": aware(given.get("created_before"), "created_before"),
    }


def type_names(types: Iterable[JobType[Any, Any] | str] | None) -> list[str] | None:
    """``types=`` as names; a single type or name (not in a list) is refused."""
    if types is None:
        return None
    if isinstance(types, (str, JobType)):
        raise TypeError("types= takes a list of job types or names; wrap a single one in [...]")
    return [t if isinstance(t, str) else t.name for t in types]


def status_values(statuses: Iterable[JobStatus | str] | None) -> list[str] | None:
    """``statuses=`` as plain values, each checked against :class:`JobStatus`."""
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


def id_list(ids: Iterable[uuid.UUID | str] | None, name: str) -> list[uuid.UUID] | None:
    """A list-of-ids argument called ``name``, each coerced to a UUID."""
    if ids is None:
        return None
    if isinstance(ids, (str, uuid.UUID)):
        raise TypeError(f"{name}= takes a list of ids; wrap a single id in [...]")
    return [coerce_id(i) for i in ids]


def aware(value: dt.datetime | None, name: str) -> dt.datetime | None:
    """``value`` if it is aware (or None); a naive datetime is refused."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name}={value!r} is naive; pass an aware datetime (UTC).")
    return value


def check_page(order: str, limit: int) -> None:
    """Refuse an unknown order or a page size outside 1..MAX_PAGE_SIZE."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit!r}")


def batch_ids(
    ids: Iterable[uuid.UUID | str], call: str = "delete_chains", noun: str = "chain"
) -> list[uuid.UUID]:
    """The ids of an all-or-nothing call, deduplicated in order; at most MAX_BATCH_SIZE."""
    if isinstance(ids, (str, uuid.UUID)):
        raise TypeError(f"{call} takes a list of {noun} ids; wrap a single id in [...]")
    wanted = list(dict.fromkeys(coerce_id(i) for i in ids))
    if len(wanted) > MAX_BATCH_SIZE:
        raise ValueError(
            f"{call} takes at most {MAX_BATCH_SIZE} ids per call (got {len(wanted)}); "
            "split the list (each call is its own all-or-nothing set)."
        )
    return wanted


def deletion_ids(ids: Iterable[uuid.UUID | str]) -> list[uuid.UUID]:
    """``delete_chains``' ids, deduplicated in order; at most MAX_BATCH_SIZE of them."""
    return batch_ids(ids)


@dataclass(frozen=True)
class CleanupPlan:
    """Checked ``cleanup`` arguments: what to delete and in what batches."""

    cutoffs: dict[str, dt.datetime]
    """Per terminal status kept for a limited time: chains that ended in it before this go."""
    type_names: list[str] | None
    batch_size: int
    max_batches: int | None

    def more(self, batches: int, examined: int) -> bool:
        """Whether to run another batch after ``batches`` ran and the last examined this many."""
        if examined < self.batch_size:
            return False
        return self.max_batches is None or batches < self.max_batches


def cleanup_plan(
    now: dt.datetime,
    older_than: Duration,
    types: Iterable[JobType[Any, Any] | str] | None,
    batch_size: int,
    max_batches: int | None,
    failed_older_than: Duration | None = None,
    cancelled_older_than: Duration | None = None,
) -> CleanupPlan:
    """Check ``cleanup``'s arguments (both clients) and fix its cutoffs."""
    cutoffs: dict[str, dt.datetime] = {}
    for status, age, name in (
        (JobStatus.COMPLETED, older_than, "older_than"),
        (JobStatus.FAILED, failed_older_than, "failed_older_than"),
        (JobStatus.CANCELLED, cancelled_older_than, "cancelled_older_than"),
    ):
        if age is None and status != JobStatus.COMPLETED:
            continue  # kept until asked for
        duration = as_duration(age, name)
        if duration < dt.timedelta(0):
            raise ValueError(f"{name} must not be negative, got {age!r}")
        cutoffs[status.value] = now - duration
    if not 1 <= batch_size <= MAX_BATCH_SIZE or (max_batches is not None and max_batches < 1):
        raise ValueError(
            f"batch_size must be between 1 and {MAX_BATCH_SIZE} and max_batches at least 1"
        )
    return CleanupPlan(
        cutoffs=cutoffs,
        type_names=type_names(types),
        batch_size=batch_size,
        max_batches=max_batches,
    )


# --- operating: retry, and how a waited-for chain ended -------------------------------


@dataclass(frozen=True)
class RetryFilter:
    """Checked ``retry_jobs`` arguments: which failed jobs to make pending again."""

    type_names: list[str] | None
    failed_since: dt.datetime | None
    limit: int | None


def retry_filter(
    types: Iterable[JobType[Any, Any] | str] | None,
    failed_since: dt.datetime | None,
    limit: int | None,
) -> RetryFilter:
    """Check ``retry_jobs``' arguments (both clients)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return RetryFilter(
        type_names=type_names(types),
        failed_since=aware(failed_since, "failed_since"),
        limit=limit,
    )


def unsuccessful_end(
    chain: Chain[Any, Any], current: Job[Any]
) -> ChainFailedError | ChainCancelledError | None:
    """The error ``await_chain`` raises for a chain that ended without completing, else None.

    ``current`` is the chain's current (latest) job: its last error, or the
    reason it was cancelled with.
    """
    if chain.status == JobStatus.FAILED:
        return ChainFailedError(chain, error=current.last_attempt_error)
    if chain.status == JobStatus.CANCELLED:
        return ChainCancelledError(chain, reason=current.cancel_reason)
    return None
