"""Lease renewal for the thread worker's staged attempts: one background thread.

A staged attempt commits its job as ``running`` with ``leased_until``; while
the handler works outside any transaction, this keeper renews the lease every
half lease (``_flow.renew``). If a renewal finds the job no longer ours
(reaped and taken over, completed elsewhere, deleted), the flow sets the
attempt's ``signal`` and the keeper stops renewing; the attempt's
``transaction()`` refuses to write. (The asyncio worker renews with one task
per attempt instead.)
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from queuert_sa._attempt import AttemptState
from queuert_sa.notify import NotifyAdapter, Subscription

from . import _policy as policy

Renew = Callable[[AttemptState, dt.timedelta], "bool | None"]
"""Renew one lease now: True renewed, False lost, None failed (see ``_flow.renew``)."""


@dataclass
class _Held:
    state: AttemptState
    lease: dt.timedelta
    renew_at: float  # time.monotonic()


def _key(state: AttemptState) -> tuple[uuid.UUID, int]:
    return state.job.id, state.job.attempt


class LeaseKeeper:
    """Renews the leases of a thread worker's staged attempts in flight."""

    def __init__(self, notify: NotifyAdapter, renew: Renew) -> None:
        self._notify = notify
        self._renew = renew
        # Keyed by (job, attempt): after a reap the same worker may run the job
        # again as a later attempt while the stale one is still winding down.
        self._held: dict[tuple[uuid.UUID, int], _Held] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # Each keeper thread has its own stop flag: one that outlived close()'s
        # wait (a renewal stuck on a lock) stays stopped when a new one starts.
        self._closed = threading.Event()
        self._ownership: Subscription | None = None

    def held_ids(self) -> set[uuid.UUID]:
        """Jobs whose leases this worker is keeping (never reap those)."""
        with self._cond:
            return {job_id for job_id, _ in self._held}

    def hold(self, state: AttemptState, lease: dt.timedelta) -> None:
        """Start renewing ``state``'s lease (its first lease was just committed)."""
        if self._ownership is None:
            # Ownership-lost messages make the keeper check a job at once
            # instead of at its next renewal.
            self._ownership = self._notify.listen_job_ownership_lost(self.check_now)
        with self._cond:
            self._held[_key(state)] = _Held(
                state, lease, time.monotonic() + policy.renew_delay(lease)
            )
            if self._thread is None or not self._thread.is_alive() or self._closed.is_set():
                self._closed = closed = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(closed,), name="queuert-lease-keeper", daemon=True
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

    def release(self, state: AttemptState) -> None:
        """Stop renewing (the attempt ended)."""
        with self._cond:
            self._held.pop(_key(state), None)

    def close(self) -> None:
        """Stop the keeper thread and the ownership-lost subscription."""
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None
        with self._cond:
            self._closed.set()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def _run(self, closed: threading.Event) -> None:
        while True:
            with self._cond:
                if closed.is_set():
                    return
                now = time.monotonic()
                due = [h for h in self._held.values() if h.renew_at <= now]
                if not due:
                    next_at = min((h.renew_at for h in self._held.values()), default=now + 60)
                    self._cond.wait(max(next_at - now, 0.01))
                    continue
            for held in due:
                if closed.is_set():
                    return
                self._renew_one(held)

    def _renew_one(self, held: _Held) -> None:
        key = _key(held.state)
        with self._cond:
            if key not in self._held:
                return  # released meanwhile
        renewed = self._renew(held.state, held.lease)
        with self._cond:
            if key not in self._held:
                return
            if renewed is None:
                held.renew_at = time.monotonic() + policy.renew_retry_delay(held.lease)
            elif renewed:
                held.renew_at = time.monotonic() + policy.renew_delay(held.lease)
            else:
                del self._held[key]
