"""Chains and jobs as JSON objects: ids as strings, times as ISO 8601 in UTC.

Inputs and outputs are shown as stored: a dataclass or pydantic model input
(decoded by its job type) is turned back into its fields, anything else that
JSON cannot hold into its ``repr``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from queuert_sa._entities import Chain, Job
from queuert_sa._json import as_stored


def when(value: dt.datetime | None) -> str | None:
    """An ISO 8601 UTC timestamp, or None."""
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it (a job's input or output)."""
    if (stored := as_stored(value)) is not value:
        return plain(stored)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return when(value)
    return repr(value)


def pretty(value: Any) -> str:
    """A job's input or output as indented JSON text (for the pages)."""
    return json.dumps(plain(value), indent=2, sort_keys=True, ensure_ascii=False)


def chain_record(chain: Chain[Any, Any]) -> dict[str, Any]:
    """A chain as the API returns it."""
    return {
        "id": str(chain.id),
        "type_name": chain.type_name,
        "status": chain.status.value,
        "input": plain(chain.input),
        "output": plain(chain.output),
        "created_at": when(chain.created_at),
        "completed_at": when(chain.completed_at),
        "current_job_id": str(chain.current_job_id),
        "current_type_name": chain.current_type_name,
        "current_index": chain.current_index,
        "priority": chain.priority,
    }


def job_record(job: Job[Any]) -> dict[str, Any]:
    """A job as the API returns it."""
    return {
        "id": str(job.id),
        "type_name": job.type_name,
        "chain_id": str(job.chain_id),
        "chain_type_name": job.chain_type_name,
        "chain_index": job.chain_index,
        "status": job.status.value,
        "input": plain(job.input),
        "output": plain(job.output),
        "created_at": when(job.created_at),
        "scheduled_at": when(job.scheduled_at),
        "completed_at": when(job.completed_at),
        "completed_by": job.completed_by,
        "attempt": job.attempt,
        "last_attempt_at": when(job.last_attempt_at),
        "last_attempt_error": job.last_attempt_error,
        "leased_by": job.leased_by,
        "leased_until": when(job.leased_until),
        "deduplication_key": job.deduplication_key,
        "priority": job.priority,
        "cancel_reason": job.cancel_reason,
    }
