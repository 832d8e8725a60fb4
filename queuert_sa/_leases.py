"""Lease renewal for staged attempts: one background thread per worker.

A staged attempt commits its job as ``running`` with ``leased_until``; while
the handler works outside any transaction, this keeper extends the lease every
half lease. If a renewal finds the job no longer ours (reaped and taken over,
completed elsewhere, deleted), it sets the attempt's ``signal`` and stops
renewing; the attempt's ``transaction()`` will refuse to write.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from .models import JobStatus
from .notify import Subscription
from .state import operations as ops

if TYPE_CHECKING:
    from ._attempt import Attempt
    from ._client import Queuert

log = logging.getLogger("queuert_sa.worker")


@dataclass
class _Held:
    attempt: Attempt[Any, Any]
    lease: dt.timedelta
    renew_at: float  # time.monotonic()


def _key(attempt: Attempt[Any, Any]) -> tuple[uuid.UUID, int]:
    return attempt.job.id, attempt.job.attempt


def lost_reason(row: Any) -> str:
    """Why a job is no longer ours, from its row as read now (None = deleted)."""
    if row is None:
        return "not_found"
    if row["status"] == JobStatus.COMPLETED:
        return "already_completed"
    return "taken_by_another_worker"


class LeaseKeeper:
    """Renews the leases of a worker's staged attempts in flight."""

    def __init__(
        self,
        client: Queuert,
        *,
        worker_id: str,
        session_factory: Callable[[], Session],
        writer_lock: threading.Lock | None,
    ) -> None:
        self._client = client
        self._worker_id = worker_id
        self._session_factory = session_factory
        self._writer_lock = writer_lock
        # Keyed by (job, attempt): after a reap the same worker may run the job
        # again as a later attempt while the stale one is still winding down.
        self._held: dict[tuple[uuid.UUID, int], _Held] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ownership: Subscription | None = None

    def held_ids(self) -> set[uuid.UUID]:
        """Jobs whose leases this worker is keeping (never reap those)."""
        with self._cond:
            return {job_id for job_id, _ in self._held}

    def hold(self, attempt: Attempt[Any, Any], lease: dt.timedelta) -> None:
        """Start renewing ``attempt``'s lease (its first lease was just committed)."""
        if self._ownership is None:
            # Ownership-lost messages make the keeper check a job at once
            # instead of at its next renewal.
            self._ownership = self._client.notify.listen_job_ownership_lost(self.check_now)
        with self._cond:
            self._held[_key(attempt)] = _Held(
                attempt, lease, time.monotonic() + lease.total_seconds() / 2
            )
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(
                    target=self._run, name="queuert-lease-keeper", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def check_now(self, job_id: uuid.UUID) -> None:
        """Renew ``job_id``'s lease now if it is held (an ownership-lost message).

        The renewal finds out whether the job is still ours and, if not, why,
        and sets the attempt's signal. Messages about jobs not held are ignored.
        """
        with self._cond:
            found = False
            for (held_id, _), held in self._held.items():
                if held_id == job_id:
                    held.renew_at = 0.0
                    found = True
            if found:
                self._cond.notify()

    def release(self, attempt: Attempt[Any, Any]) -> None:
        """Stop renewing (the attempt ended)."""
        with self._cond:
            self._held.pop(_key(attempt), None)

    def close(self) -> None:
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                due = [h for h in self._held.values() if h.renew_at <= now]
                if not due:
                    next_at = min((h.renew_at for h in self._held.values()), default=now + 60)
                    self._cond.wait(max(next_at - now, 0.01))
                    continue
            for held in due:
                self._renew(held)

    def _renew(self, held: _Held) -> None:
        attempt = held.attempt
        job_id = attempt.job.id
        key = _key(attempt)
        client = self._client
        try:
            if self._writer_lock is not None:
                self._writer_lock.acquire()
            try:
                with self._session_factory() as session, session.begin():
                    # An application transaction holding this job's row must
                    # not stall the renewals of every other job: bounded wait,
                    # then retry soon (a lock timeout is not a lost lease).
                    ops.limit_lock_wait(session, client.capabilities, held.lease / 8)
                    still_ours = ops.renew_lease(
                        session,
                        client.models,
                        job_id=job_id,
                        worker_id=self._worker_id,
                        attempt=attempt.job.attempt,
                        leased_until=client.clock() + held.lease,
                    )
                    row = None if still_ours else ops.get_job(session, client.models, job_id)
            finally:
                if self._writer_lock is not None:
                    self._writer_lock.release()
        except Exception as exc:
            # The database is unreachable: try again soon; the lease may still
            # outlive the outage, and transaction() re-checks ownership anyway.
            log.warning("renewing the lease of job %s failed (%s); retrying", job_id, exc)
            with self._cond:
                if key in self._held:
                    held.renew_at = time.monotonic() + min(held.lease.total_seconds() / 10, 5)
            return
        with self._cond:
            if key not in self._held:
                return
            if still_ours:
                held.renew_at = time.monotonic() + held.lease.total_seconds() / 2
                return
            del self._held[key]
        reason = lost_reason(row)
        log.warning("job %s: the staged attempt lost its job (%s)", job_id, reason)
        attempt.signal.set(reason)
