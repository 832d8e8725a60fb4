"""The checks a job type registry passes when it is bound to a client.

Declarations name other types (``continues_with``) and reference blocker
types, in any order; :func:`check_registry` checks them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import InvalidJobTypesError

if TYPE_CHECKING:
    from ._job_types import JobType


def check_registry(types: Mapping[str, JobType[Any, Any]]) -> None:
    """Raise :class:`InvalidJobTypesError` for the first dangling name or bad blocker."""
    for job_type in types.values():
        for blocker in job_type.blocker_types:
            if types.get(blocker.name) is not blocker:
                raise InvalidJobTypesError(
                    f"Job type {job_type.name!r} is blocked by {blocker.name!r}, which is "
                    "not registered in this JobTypes.",
                    type_name=job_type.name,
                )
            if not blocker.entry:
                raise InvalidJobTypesError(
                    f"Job type {job_type.name!r} is blocked by {blocker.name!r}, which is "
                    "not an entry type: blockers are chains, so declare it with "
                    "job_types.entry(...).",
                    type_name=job_type.name,
                )
        for target in job_type.continues_with:
            if target not in types:
                raise InvalidJobTypesError(
                    f"Job type {job_type.name!r} lists {target!r} in continues_with, "
                    f"but no type {target!r} is registered. Declare it with "
                    "job_types.define(...) (or fix the name).",
                    type_name=job_type.name,
                )
