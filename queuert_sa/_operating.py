"""The sync client's operator side: trigger, retry, cancel, delete and clean up.

:class:`Operating` is a base of :class:`Queuert`, over :class:`Reads`: each
method checks its arguments with :mod:`._rules` and runs a unit of
:mod:`._operator`, :mod:`._removal` or :mod:`._transitions` on the caller's
session (cleanup: on transactions of its own).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from . import _operator as operator
from . import _removal as removal
from . import _rules as rules
from . import _transitions as transitions
from ._durations import Duration
from ._entities import Chain, CleanupPreview, Job
from ._ids import coerce_id
from ._job_types import JobType
from ._reads import Reads, SessionLike
from .state import immediate_engine
from .state import operations as ops


class Operating(Reads):
    """Operating on jobs and chains (see :class:`Queuert`)."""

    def trigger_job(self, session: SessionLike, id: uuid.UUID | str) -> Job[Any]:
        """Make a pending job due now, in ``session``'s transaction (never committed here).

        A job scheduled for later (``run_at``/``run_in``, a retry's backoff)
        becomes due at once; one already due keeps its place. Workers are woken
        after COMMIT. Raises :class:`JobNotFoundError`, and
        :class:`JobNotTriggerableError` for a job that is blocked, running,
        completed, failed (see :meth:`retry_job`) or cancelled. Returns the
        job as updated.
        """
        return transitions.trigger_job(self.session_of(session), self.ctx, coerce_id(id))

    def trigger_jobs(self, session: SessionLike, ids: Iterable[uuid.UUID | str]) -> list[Job[Any]]:
        """Make these pending jobs due now, all or nothing, in ``session``'s transaction.

        One lock of every row (in id order), then one UPDATE; never committed
        here, and workers are woken after COMMIT. Each job is triggered as by
        :meth:`trigger_job`. If any id is no job, or a job that is not
        ``pending``, nothing is triggered and :class:`JobsNotTriggerableError`
        names every such id (``missing``, and ``not_triggerable`` with each
        status); the transaction is still usable. Ids repeated are triggered
        once; at most 10,000 per call. Returns the jobs as updated, in the order
        given.
        """
        wanted = rules.batch_ids(ids, "trigger_jobs", "job")
        return operator.trigger_jobs(self.session_of(session), self.ctx, wanted)

    def retry_job(self, session: SessionLike, id: uuid.UUID | str) -> Job[Any]:
        """Make a failed job pending and due now, in ``session``'s transaction (never committed).

        The job keeps its history: ``attempt`` is kept (the next attempt
        continues the count, so a ``max_attempts`` limit allows one more
        attempt) and ``last_attempt_error`` until that attempt replaces it;
        ``completed_at`` is cleared. When its chain then completes, the jobs
        blocked on it are unblocked as usual. Workers are woken after COMMIT.

        The job's row is locked first. Raises :class:`JobNotFoundError`, and
        :class:`JobNotRetryableError` (with ``status``) for a job that is not
        ``failed``. Returns the job as updated.
        """
        return operator.retry_job(self.session_of(session), self.ctx, coerce_id(id))

    def retry_jobs(
        self,
        session: SessionLike,
        *,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        failed_since: dt.datetime | None = None,
        limit: int | None = None,
    ) -> int:
        """Retry every failed job matching the filter (see :meth:`retry_job`); how many.

        One UPDATE in ``session``'s transaction (never committed here); workers
        are woken after COMMIT. With no filter, every failed job is retried.

        Args:
            types: Only jobs of these types (the jobs' own types, not their
                chains'): job types or their names.
            failed_since: Only jobs that failed at or after this time (aware).
            limit: At most this many, first created first; default no limit.
                Retry a large backlog in several transactions with it.
        """
        wanted = rules.retry_filter(types, failed_since, limit)
        return operator.retry_jobs(
            self.session_of(session),
            self.ctx,
            type_names=wanted.type_names,
            failed_since=wanted.failed_since,
            limit=wanted.limit,
        )

    def cancel_chain(
        self,
        session: SessionLike,
        id: uuid.UUID | str,
        *,
        reason: str | None = None,
        cascade: bool = False,
    ) -> list[uuid.UUID]:
        """Cancel a chain, in ``session``'s transaction (never committed here).

        Its current job, if ``blocked``, ``pending`` (scheduled or not),
        ``running`` or ``failed``, becomes ``cancelled`` with ``completed_at``
        now and ``cancel_reason = reason``; no attempt of it will run. The job
        is locked first, so this waits for an atomic attempt running it to end:
        if that attempt completed the chain, there is nothing to cancel; if it
        continued the chain, the new job is cancelled. A staged attempt running
        it is told after COMMIT (its ``attempt.signal`` is set with reason
        ``"cancelled"``) and its ``attempt.transaction()`` raises
        :class:`JobCancelledError`: nothing of it is written. ``await_chain``
        callers raise :class:`ChainCancelledError` after COMMIT.

        Jobs of other chains blocked on this one stay ``blocked`` (list them
        with :meth:`Queuert.list_blocked_jobs`); with ``cascade=True`` their chains are
        cancelled too, with the same reason, and theirs in turn. A cascade on
        a chain cancelled earlier cancels its blocked dependents.

        Returns the ids of the chains this call cancelled, ``id`` first: ``[]``
        if the chain had completed, or was cancelled already (and nothing was
        blocked on it). Raises :class:`ChainNotFoundError` for an unknown id.
        """
        return operator.cancel_chain(
            self.session_of(session), self.ctx, coerce_id(id), reason=reason, cascade=cascade
        )

    def delete_chains(
        self,
        session: SessionLike,
        ids: Iterable[uuid.UUID | str],
        *,
        cascade: bool = False,
    ) -> list[Chain[Any, Any]]:
        """Delete chains (every job, and their blocker rows), in ``session``'s transaction.

        All or nothing: if a job outside the deletion set declares one of the
        chains as a blocker, :class:`BlockerReferenceError` lists those
        references and nothing is deleted. ``cascade=True`` also deletes the
        chains that the listed chains' jobs declare as blockers, transitively
        (and is refused in the same way if one of those is referenced from
        outside). Ids of chains that do not exist are skipped.

        The chains' jobs are locked first, so this waits for an atomic attempt
        running one of them to finish. A staged attempt running one finds its
        job gone when it writes, and writes nothing. Returns the deleted
        chains as they were, the listed ones first.
        """
        wanted = rules.deletion_ids(ids)
        return removal.delete_chains(self.session_of(session), self.ctx, wanted, cascade=cascade)

    def cleanup(
        self,
        *,
        older_than: Duration,
        failed_older_than: Duration | None = None,
        cancelled_older_than: Duration | None = None,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> int:
        """Delete chains completed more than ``older_than`` ago, in batches; how many went.

        Retention for completed work. Each batch is its own short transaction
        (on this client's engine), so a large backlog never holds locks for
        long; run it from cron (``queuert-sa cleanup``) or a periodic *staged*
        handler after ``prepare()`` (an atomic handler holds a transaction,
        and on SQLite the write lock, that cleanup's batches would wait for).

        Never deleted: open chains, chains completed within ``older_than``,
        failed and cancelled chains (unless ``failed_older_than`` /
        ``cancelled_older_than`` is given: kept that long after they ended),
        and the blocker chains of those (a dependent that has not finished
        may still read its blockers' outputs). A completed dependent does not
        protect its blockers: they go once old, and its blocker rows with
        them. On PostgreSQL a chain that another transaction holds (e.g. a
        producer attaching it as a blocker) is skipped, not waited for. With
        ``types``, only chains of those types go (and their blockers stay
        while a dependent of another type needs them).

        Args:
            older_than: How long a completed chain is kept.
            failed_older_than: How long a failed chain is kept; default: until
                deleted by hand (it is what an operator retries from).
            cancelled_older_than: How long a cancelled chain is kept; default:
                until deleted by hand.
            types: Only chains of these types; default all.
            batch_size: Chains examined per transaction.
            max_batches: Stop after this many batches (default: until done).
        """
        plan = rules.cleanup_plan(
            self.clock(),
            older_than,
            types,
            batch_size,
            max_batches,
            failed_older_than=failed_older_than,
            cancelled_older_than=cancelled_older_than,
        )
        engine = immediate_engine(self.engine)
        run = removal.Cleanup(self.ctx, plan)
        more = True
        while more:
            # BEGIN (IMMEDIATE on SQLite) may itself fail: translate that too.
            with ops.database_errors("clean up chains", self.models), engine.begin() as conn:
                more = run.batch(conn)
        return run.finish()

    def preview_cleanup(
        self,
        *,
        older_than: Duration,
        failed_older_than: Duration | None = None,
        cancelled_older_than: Duration | None = None,
        types: Iterable[JobType[Any, Any] | str] | None = None,
        batch_size: int = 1000,
        max_batches: int | None = None,
    ) -> CleanupPreview:
        """What :meth:`cleanup` with these arguments would delete now; nothing is deleted.

        The same batches are walked, each in a read-only transaction that
        locks nothing. Returns the chains and jobs that would go, and both per
        chain type. A real run may delete fewer: on PostgreSQL it skips chains
        that another transaction holds at that moment (e.g. a producer
        attaching one as a blocker).
        """
        plan = rules.cleanup_plan(
            self.clock(),
            older_than,
            types,
            batch_size,
            max_batches,
            failed_older_than=failed_older_than,
            cancelled_older_than=cancelled_older_than,
        )
        run = removal.Cleanup(self.ctx, plan, dry_run=True)
        more = True
        while more:
            with (
                ops.database_errors("preview a cleanup", self.models),
                self.engine.connect() as conn,
            ):
                more = run.batch(conn)
        return run.preview()
