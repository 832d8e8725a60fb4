"""Notify adapters: hints that wake workers and waiters sooner than polling.

Notifications are **hints**. Losing or duplicating one never loses or
duplicates work: workers always also poll, sleeping until the next known
``scheduled_at`` or the poll interval. An adapter is only ever called *after*
the transaction that produced the event has committed.

Every adapter implements :class:`NotifyAdapter`; :class:`InMemoryNotify` is the
in-process one (the default of ``Queuert``), enough when producers and workers
share a process. The cross-process adapters live in their own modules, so that
this package needs neither psycopg nor redis-py::

    from queuert_sa.notify.postgres import PostgresNotify  # LISTEN/NOTIFY (extra "postgres")
    from queuert_sa.notify.redis import RedisNotify        # pub/sub (extra "redis")
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Protocol

from .memory import InMemoryNotify

__all__ = ["InMemoryNotify", "NotifyAdapter", "Subscription"]


class Subscription(Protocol):
    """A live listener; ``close()`` stops it (idempotent)."""

    def close(self) -> None: ...


class NotifyAdapter(Protocol):
    """What queuert needs from a notification backend."""

    def notify_job_scheduled(self, type_name: str, count: int = 1) -> None:
        """Jobs of ``type_name`` became due (created, retried, unblocked)."""
        ...

    def listen_job_scheduled(
        self, type_names: Iterable[str], callback: Callable[[str, int], None]
    ) -> Subscription:
        """Call ``callback(type_name, count)`` for scheduled jobs of any of ``type_names``.

        ``count`` is how many jobs the notification stands for (a batch start
        sends one notification per type); a worker wakes up to that many slots.

        The subscription is active when this returns, so a caller that listens
        first and then checks for work never misses a wake-up.
        """
        ...

    def notify_chain_completed(self, chain_id: uuid.UUID) -> None:
        """The chain ``chain_id`` completed."""
        ...

    def listen_chain_completed(
        self, chain_id: uuid.UUID, callback: Callable[[uuid.UUID], None]
    ) -> Subscription:
        """Call ``callback(chain_id)`` when that chain completes."""
        ...

    def notify_job_ownership_lost(self, job_id: uuid.UUID) -> None:
        """The running job ``job_id`` was taken from its attempt.

        Sent after a commit that completed (``complete_chain``), deleted
        (``delete_chains``) or reaped (lease expired) a job that a staged
        attempt was running, so that attempt learns it at once instead of at
        its next lease renewal.
        """
        ...

    def listen_job_ownership_lost(self, callback: Callable[[uuid.UUID], None]) -> Subscription:
        """Call ``callback(job_id)`` for every ownership-lost message (of any job).

        A worker listens once and ignores jobs it does not hold.
        """
        ...

    def close(self) -> None:
        """Release connections; idempotent. Later notifications are dropped."""
        ...
