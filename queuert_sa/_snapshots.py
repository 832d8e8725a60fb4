"""Rows to entities: the ``Job`` and ``Chain`` snapshots every read returns.

Inputs and outputs are decoded with their job type when the registry knows
it; a row of an unknown type (an older deployment's) keeps its raw JSON.
Listing pages are assembled here with their keyset cursors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import RowMapping

from . import _cursor
from ._entities import Chain, Job, Page
from ._job_types import JobType, JobTypes
from .models import JobStatus


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
        priority=row["priority"],
        # Rows built without the column (tests' fakes, an older SELECT) read as no reason.
        cancel_reason=row.get("cancel_reason"),
        trace_context=row.get("trace_context"),
        chain_trace_context=row.get("chain_trace_context"),
    )


def job_snapshot(job_types: JobTypes, row: Mapping[Any, Any]) -> Job[Any]:
    """Snapshot a job row, decoding its input if ``job_types`` knows its type."""
    known = row["type_name"] in job_types
    return job_from_row(row, job_types.get(row["type_name"]) if known else None)


def chain_from_rows(
    job_types: JobTypes,
    root: Mapping[Any, Any],
    latest: Mapping[Any, Any],
    job_type: JobType[Any, Any] | None = None,
) -> Chain[Any, Any]:
    """A chain from its first and latest job rows (its status is the latest job's).

    ``completed_at`` is the latest job's once the chain has ended (completed,
    failed or cancelled): when it reached that status.
    """
    status = JobStatus(latest["status"])
    completed = status == JobStatus.COMPLETED
    raw_output = latest["output"] if completed else None
    output = raw_output
    if completed and latest["type_name"] in job_types and raw_output is not None:
        output = job_types.get(latest["type_name"]).decode_output(raw_output)
    return Chain(
        id=root["id"],
        type_name=root["type_name"],
        input=job_type.decode_input(root["input"]) if job_type else root["input"],
        status=status,
        output=output,
        created_at=root["created_at"],
        completed_at=latest["completed_at"] if status.is_terminal else None,
        current_job_id=latest["id"],
        current_type_name=latest["type_name"],
        current_index=latest["chain_index"],
        priority=latest["priority"],
    )


def job_page(
    job_types: JobTypes, rows: Sequence[RowMapping], limit: int, listing: str, order: str
) -> Page[Job[Any]]:
    """A page of jobs keyed on (created_at, id); ``rows`` holds one row more if there is more."""
    jobs = [job_snapshot(job_types, row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = jobs[-1]
        next_cursor = _cursor.encode_created(listing, order, last.created_at, last.id)
    return Page(jobs, next_cursor)


def chain_page(
    job_types: JobTypes, rows: Sequence[tuple[RowMapping, RowMapping]], limit: int, order: str
) -> Page[Chain[Any, Any]]:
    """A page of chains keyed on (created_at, id); ``rows`` holds one more if there is more."""
    chains = [chain_from_rows(job_types, root, latest) for root, latest in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = chains[-1]
        next_cursor = _cursor.encode_created("chains", order, last.created_at, last.id)
    return Page(chains, next_cursor)


def chain_jobs_page(
    job_types: JobTypes, rows: Sequence[RowMapping], limit: int, order: str
) -> Page[Job[Any]]:
    """A page of one chain's jobs keyed on ``chain_index``."""
    jobs = [job_snapshot(job_types, row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = _cursor.encode_index("chain_jobs", order, jobs[-1].chain_index)
    return Page(jobs, next_cursor)
