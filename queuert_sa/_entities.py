"""What reads return: immutable snapshots of a job and of a chain."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, Literal, TypeVar

from ._errors import DeduplicationError
from ._ids import coerce_id
from .models import JobStatus

InT = TypeVar("InT")
OutT = TypeVar("OutT")
T = TypeVar("T")

#: The longest deduplication key (the column is ``VARCHAR(255)``).
MAX_DEDUP_KEY_LENGTH = 255


def assemble(cls: type[T], /, **fields: Any) -> T:
    """An instance of the frozen dataclass ``cls`` holding ``fields``, built without ``__init__``.

    For what a batched start builds per chain (a ``ChainStart``, a ``Chain``):
    a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, four times the cost of filling the instance's
    ``__dict__`` at once. The caller gives every field (no default is
    applied), in declaration order. Only for classes without ``__post_init__``
    or ``__slots__``; a unit test keeps that true and compares what this builds
    with what the constructor builds.
    """
    instance = object.__new__(cls)
    instance.__dict__.update(fields)
    return instance


@dataclass(frozen=True, kw_only=True)
class Job(Generic[InT]):
    """A job as stored at the moment it was read.

    ``input`` is decoded with the job's type when the type is known; ``output``
    is the stored JSON (``None`` until completed, and for jobs that continued).
    """

    id: uuid.UUID
    type_name: str
    chain_id: uuid.UUID
    chain_type_name: str
    chain_index: int
    input: InT
    output: Any
    status: JobStatus
    created_at: dt.datetime
    scheduled_at: dt.datetime
    completed_at: dt.datetime | None
    completed_by: str | None
    attempt: int
    last_attempt_at: dt.datetime | None
    last_attempt_error: str | None
    leased_by: str | None
    leased_until: dt.datetime | None
    deduplication_key: str | None
    priority: int = 0
    """Acquisition order among due jobs: higher first (then ``scheduled_at``, then id)."""
    cancel_reason: str | None = None
    """The reason given to ``cancel_chain`` (for a ``cancelled`` job; None otherwise)."""
    trace_context: str | None = None
    """The W3C ``traceparent`` a tracing observer stored for the job (its attempts' parent)."""
    chain_trace_context: str | None = None
    """The ``traceparent`` of the chain's creation, shared by its jobs (tracing observers)."""

    @property
    def is_chain_root(self) -> bool:
        """True for the first job of a chain (whose id is the chain's id)."""
        return self.id == self.chain_id


@dataclass(frozen=True, kw_only=True)
class Chain(Generic[InT, OutT]):
    """A chain: its first job's identity and input, and its latest job's status.

    ``output`` is the output of the final job once the chain is completed.
    ``completed_at`` is when the chain ended: completed, failed or cancelled
    (see ``status``); None while it is open. ``deduplicated`` is True when
    ``start_chain`` returned an existing chain.
    """

    id: uuid.UUID
    type_name: str
    input: InT
    status: JobStatus
    output: OutT | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    current_job_id: uuid.UUID
    current_type_name: str
    current_index: int
    priority: int = 0
    """The current (latest) job's priority."""
    deduplicated: bool = False

    @property
    def is_completed(self) -> bool:
        """True once the chain completed (its output is set)."""
        return self.status == JobStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        """True if its current job failed: out of attempts, or ``q.Fail``; ``retry_job`` revives it."""
        return self.status == JobStatus.FAILED

    @property
    def is_cancelled(self) -> bool:
        """True if ``cancel_chain`` ended it."""
        return self.status == JobStatus.CANCELLED


@dataclass(frozen=True, kw_only=True)
class CompletedChain(Chain[InT, OutT]):
    """A chain that completed, as ``await_chain`` returns it: ``output`` is set (``OutT``)."""

    output: OutT

    @classmethod
    def of(cls, chain: Chain[InT, OutT]) -> CompletedChain[InT, OutT]:
        """``chain``, known to be completed, as a ``CompletedChain``."""
        return cls(**{f.name: getattr(chain, f.name) for f in fields(chain)})


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing: ``items``, and ``next_cursor`` (None on the last page).

    Pass ``next_cursor`` as ``cursor=`` to the same listing, with the same
    filters, for the next page. Cursors are opaque strings; pagination is by
    key (not offset), so rows inserted meanwhile never shift a page: nothing is
    skipped or repeated.
    """

    items: list[T]
    next_cursor: str | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, init=False)
class Dedup:
    """Start a chain only if no matching chain exists; otherwise return that chain.

    ::

        queuert.start_chain(session, sync_account, {"id": 7},
                            dedup=q.Dedup(f"account:7"))

    Args:
        key: The deduplication key. Keys are namespaced by the chain's type:
            the same key on two types never matches.
        scope: ``"open"`` (default) matches a chain that is not completed yet
            (judged on its latest job, so a chain that moved on to a later step
            still counts; a failed or cancelled one has ended and does not);
            ``"any"`` matches a chain in any state.
        window: Only chains started within this period before now match
            (either scope). ``None``: no limit.
        exclude: Chain ids that never match (e.g. the chain starting its
            own successor, see the recurring-work pattern in the docs).

    A matched start writes nothing and returns the existing chain with
    ``deduplicated=True``. Concurrent transactions starting the same key are
    serialised, so exactly one chain is created.
    """

    key: str
    scope: Literal["open", "any"] = "open"
    window: dt.timedelta | None = None
    exclude: tuple[uuid.UUID, ...] = field(default=())

    def __init__(
        self,
        key: str,
        *,
        scope: Literal["open", "any"] = "open",
        window: dt.timedelta | None = None,
        exclude: Sequence[uuid.UUID | str] = (),
    ) -> None:
        if not isinstance(key, str) or not key:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise DeduplicationError(f"Dedup key must be a non-empty string, got {key!r:.60}.")
        if len(key) > MAX_DEDUP_KEY_LENGTH:
            raise DeduplicationError(
                f"Dedup key is {len(key)} characters; the limit is {MAX_DEDUP_KEY_LENGTH}. "
                "Hash long keys (e.g. hashlib.sha256(key.encode()).hexdigest())."
            )
        if scope not in ("open", "any"):
            raise DeduplicationError(f"Dedup scope must be 'open' or 'any', got {scope!r}.")
        if window is not None and (
            not isinstance(window, dt.timedelta)  # pyright: ignore[reportUnnecessaryIsInstance]
            or window <= dt.timedelta(0)
        ):
            raise DeduplicationError(
                f"Dedup window must be a positive timedelta or None, got {window!r}."
            )
        if isinstance(exclude, (str, uuid.UUID)):
            raise DeduplicationError("Dedup exclude= takes a list of chain ids, not a single id.")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "exclude", tuple(coerce_id(i) for i in exclude))


@dataclass(frozen=True)
class CleanupPreview:
    """What :meth:`Queuert.cleanup` would delete now: ``preview_cleanup``'s answer."""

    chains: int
    """Chains that would be deleted."""
    jobs: int
    """Their jobs (every step of each chain)."""
    by_type: dict[str, tuple[int, int]]
    """Per chain type (the type of a chain's first job): (chains, jobs)."""
