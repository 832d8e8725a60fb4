"""``ChainStart``: a job to create, described by calling a job type."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ._blocker_specs import BlockerRef
from ._durations import Duration
from ._entities import Dedup

if TYPE_CHECKING:
    from ._job_types import JobType

InT = TypeVar("InT")
OutT = TypeVar("OutT")


@dataclass(frozen=True)
class ChainStart(Generic[InT, OutT]):
    """A job to create: its type, input and options. Not yet validated or written.

    Built by calling a job type (``reserve({"order_id": 1}, run_in=...)``) or
    directly; passed to :meth:`Queuert.start_chains`.
    """

    job_type: JobType[InT, OutT]
    input: InT
    id: uuid.UUID | str | None = None
    run_at: dt.datetime | None = None
    run_in: Duration | None = None
    blockers: tuple[BlockerRef, ...] = ()
    dedup: Dedup | None = None
    priority: int | None = None
