"""What reads return: immutable snapshots of a job and of a chain."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .models import JobStatus

InT = TypeVar("InT")
OutT = TypeVar("OutT")


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

    @property
    def is_chain_root(self) -> bool:
        """True for the first job of a chain (whose id is the chain's id)."""
        return self.id == self.chain_id


@dataclass(frozen=True, kw_only=True)
class Chain(Generic[InT, OutT]):
    """A chain: its first job's identity and input, and its latest job's status.

    ``output`` is the output of the final job once the chain is completed.
    ``deduplicated`` is True when ``start_chain`` returned an existing chain.
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
    deduplicated: bool = False

    @property
    def is_completed(self) -> bool:
        return self.status == JobStatus.COMPLETED
