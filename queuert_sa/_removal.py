"""Removing chains: deleting them on request and cleaning up finished ones (retention).

Units of work on the caller's ``Session`` (or connection), as in
:mod:`._transitions`: they run state-layer operations and never commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa._logs import get_logger

from ._context import Context
from ._entities import Chain
from ._errors import BlockerReference, BlockerReferenceError
from ._rules import CleanupPlan
from ._snapshots import chain_from_rows
from ._transitions import lost_after_commit
from .models import JobStatus
from .state import operations as ops
from .state import queries
from .state import removal as ops_removal
from .state.queries import Filters

log = get_logger("queuert_sa")


def delete_chains(
    session: Session, ctx: Context, wanted: Sequence[uuid.UUID], *, cascade: bool
) -> list[Chain[Any, Any]]:
    """Delete chains all or nothing (see ``Queuert.delete_chains``); the deleted ones."""
    models, caps = ctx.models, ctx.capabilities
    found = ops_removal.lock_chains(session, models, caps, wanted)
    doomed = [chain_id for chain_id in wanted if chain_id in found]
    if cascade:
        frontier = set(doomed)
        while frontier:
            blockers = ops_removal.blocker_chains_of(session, models, frontier)
            new = sorted(blockers - set(doomed))
            frontier = ops_removal.lock_chains(session, models, caps, new)
            doomed += [chain_id for chain_id in new if chain_id in frontier]
    references = ops_removal.outside_references(session, models, doomed)
    if references:
        raise BlockerReferenceError([BlockerReference(*ref) for ref in references])
    rows = queries.list_chains(
        session,
        models,
        filters=Filters(chain_ids=doomed),
        order="asc",
        after=None,
        limit=max(len(doomed), 1),
    )
    by_id = {root["id"]: chain_from_rows(ctx.job_types, root, latest) for root, latest in rows}
    ops_removal.delete_chain_rows(session, models, doomed)
    for _, latest in rows:
        if latest["status"] == JobStatus.RUNNING:
            # A staged attempt is running it: tell its worker after COMMIT.
            lost_after_commit(session, ctx, latest["id"])
    for chain in by_id.values():
        ctx.observers.after_commit(
            session, "chain_deleted", chain_id=chain.id, type_name=chain.type_name
        )
    return [by_id[chain_id] for chain_id in doomed if chain_id in by_id]


def cleanup_batch(
    executor: ops.Executor,
    ctx: Context,
    *,
    cutoffs: ops_removal.Cutoffs,
    type_names: Sequence[str] | None,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> tuple[int, int, tuple[dt.datetime, uuid.UUID] | None]:
    """One retention batch in the caller's transaction: (examined, deleted, next key)."""
    models, caps = ctx.models, ctx.capabilities
    candidates = ops_removal.retention_candidates(
        executor, models, caps, cutoffs=cutoffs, type_names=type_names, after=after, limit=limit
    )
    if not candidates:
        return 0, 0, after
    ids = ops_removal.lock_whole_chains(
        executor, models, caps, {chain_id for chain_id, _ in candidates}
    )
    keep = ops_removal.still_needed(
        executor, models, chain_ids=ids, cutoffs=cutoffs, type_names=type_names
    )
    ops_removal.delete_chain_rows(executor, models, ids - keep)
    last_id, last_created = candidates[-1]
    return len(candidates), len(ids - keep), (last_created, last_id)


class Cleanup:
    """A retention run in batches: each :meth:`batch` is one transaction of the caller's."""

    def __init__(self, ctx: Context, plan: CleanupPlan) -> None:
        self._ctx = ctx
        self._plan = plan
        self._after: tuple[dt.datetime, uuid.UUID] | None = None
        self._batches = 0
        self.deleted = 0
        """Chains deleted so far."""

    def batch(self, executor: ops.Executor) -> bool:
        """Delete one batch in ``executor``'s transaction; whether another batch should run."""
        plan = self._plan
        examined, gone, self._after = cleanup_batch(
            executor,
            self._ctx,
            cutoffs=plan.cutoffs,
            type_names=plan.type_names,
            after=self._after,
            limit=plan.batch_size,
        )
        self.deleted += gone
        self._batches += 1
        return plan.more(self._batches, examined)

    def finish(self) -> int:
        """Log the run; how many chains it deleted."""
        log.info(
            "cleanup deleted %d chains ended before %s",
            self.deleted,
            ", ".join(f"{s} {c.isoformat()}" for s, c in self._plan.cutoffs.items()),
        )
        return self.deleted
