"""The checks a job type registry passes when it is bound to a client.

Declarations name other types (``continues_with``) and reference blocker
types, in any order; :func:`check_registry` checks them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._blocker_specs import BlockerSpec, Many
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


def split_blockers(
    name: str, spec: BlockerSpec, job_type_class: type[JobType[Any, Any]]
) -> tuple[tuple[JobType[Any, Any], ...], JobType[Any, Any] | None]:
    """A type's declared blockers: the job types of its fixed slots, and ``q.many``'s type.

    ``job_type_class`` is :class:`~queuert_sa.JobType` (passed in: its module imports this one).
    """
    items: list[object] = [spec] if isinstance(spec, Many) else list(spec)
    slots: list[JobType[Any, Any]] = []
    rest: JobType[Any, Any] | None = None
    for position, item in enumerate(items):
        if isinstance(item, Many):
            if position != len(items) - 1:
                raise InvalidJobTypesError(
                    f"Job type {name!r}: q.many(...) must be the last blocker.", type_name=name
                )
            rest = item.job_type
        elif isinstance(item, job_type_class):
            slots.append(item)  # pyright: ignore[reportUnknownArgumentType]
        else:
            raise InvalidJobTypesError(
                f"Job type {name!r}: blockers are job types (or q.many(type)), got {item!r:.60}.",
                type_name=name,
            )
    return tuple(slots), rest
