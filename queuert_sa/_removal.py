"""Removing chains: deleting them on request and cleaning up finished ones (retention).

Units of work on the caller's ``Session`` (or connection), as in
:mod:`._transitions`: they run state-layer operations and never commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa._logs import get_logger

from ._context import Context
from ._entities import Chain, CleanupPreview
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
    counts: Counter[str] | None = None,
) -> tuple[int, int, tuple[dt.datetime, uuid.UUID] | None]:
    """One retention batch in the caller's transaction: (examined, deleted, next key).

    With ``counts`` (a dry run) nothing is locked or deleted: the chains that
    would go are added to it instead, as ``chains:TYPE`` and ``jobs:TYPE``.
    """
    models, caps = ctx.models, ctx.capabilities
    dry_run = counts is not None
    candidates = ops_removal.retention_candidates(
        executor,
        models,
        caps,
        cutoffs=cutoffs,
        type_names=type_names,
        after=after,
        limit=limit,
        lock=not dry_run,
    )
    if not candidates:
        return 0, 0, after
    ids = {chain_id for chain_id, _ in candidates}
    if not dry_run:
        ids = ops_removal.lock_whole_chains(executor, models, caps, ids)
    keep = ops_removal.still_needed(
        executor, models, chain_ids=ids, cutoffs=cutoffs, type_names=type_names
    )
    if counts is None:
        ops_removal.delete_chain_rows(executor, models, ids - keep)
    else:
        for type_name, (chains, jobs) in ops_removal.count_by_chain_type(
            executor, models, ids - keep
        ).items():
            counts[f"chains:{type_name}"] += chains
            counts[f"jobs:{type_name}"] += jobs
    last_id, last_created = candidates[-1]
    return len(candidates), len(ids - keep), (last_created, last_id)


class Cleanup:
    """A retention run in batches: each :meth:`batch` is one transaction of the caller's.

    A dry run (``dry_run=True``) walks the same batches, locking and deleting
    nothing, and counts what would go (:meth:`preview`).
    """

    def __init__(self, ctx: Context, plan: CleanupPlan, *, dry_run: bool = False) -> None:
        self._ctx = ctx
        self._plan = plan
        self._after: tuple[dt.datetime, uuid.UUID] | None = None
        self._batches = 0
        self._counts: Counter[str] | None = Counter() if dry_run else None
        self.deleted = 0
        """Chains deleted so far (a dry run: that would be deleted)."""

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
            counts=self._counts,
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

    def preview(self) -> CleanupPreview:
        """What a dry run found would be deleted."""
        counts = self._counts or Counter[str]()
        names = sorted({key.split(":", 1)[1] for key in counts})
        by_type = {name: (counts[f"chains:{name}"], counts[f"jobs:{name}"]) for name in names}
        return CleanupPreview(
            chains=sum(c for c, _ in by_type.values()),
            jobs=sum(j for _, j in by_type.values()),
            by_type=by_type,
        )
