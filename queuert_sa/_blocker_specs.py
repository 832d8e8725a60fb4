"""How blockers are declared and given: ``q.many(t)``, ``BlockerSpec`` and ``BlockerRef``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._job_types import JobType

__all__ = ["BlockerRef", "BlockerSpec", "Many", "many"]


@dataclass(frozen=True)
class Many:
    """The variadic tail of a blocker declaration: any number of chains of ``job_type``."""

    job_type: JobType[Any, Any]


def many(job_type: JobType[Any, Any]) -> Many:
    """Declare "any number of chains of this type" as (the last of) a type's blockers."""
    return Many(job_type)


class _ChainLike(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


#: A blocker given to ``start_chain``/``continue_with``: a chain, or its id.
BlockerRef = _ChainLike | uuid.UUID | str

#: A blocker declaration: entry types, one slot each, optionally ending with ``many(t)``.
BlockerSpec = Sequence["JobType[Any, Any] | Many"] | Many
