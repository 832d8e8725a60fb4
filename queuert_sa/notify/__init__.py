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
    from queuert_sa.notify.nats import NatsNotify          # core NATS (extra "nats")

:class:`AsyncNotifyAdapter` adapters do their IO on an event loop, so that an
``AsyncQueuert``/``AsyncWorker`` never waits for the backend on its loop::

    from queuert_sa.notify.asyncio_postgres import AsyncPostgresNotify
    from queuert_sa.notify.asyncio_redis import AsyncRedisNotify

(``NatsNotify`` is one of them too.) They also serve sync code: used first
from a thread without an event loop, they run a loop of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from .memory import InMemoryNotify

__all__ = ["AsyncNotifyAdapter", "InMemoryNotify", "NotifyAdapter", "Subscription"]


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


@runtime_checkable
class AsyncNotifyAdapter(NotifyAdapter, Protocol):
    """A :class:`NotifyAdapter` whose IO runs on an asyncio event loop.

    What changes from :class:`NotifyAdapter`, so that an event loop is never
    blocked:

    * ``notify_*`` queue the message and return at once, from any thread
      (they are called after COMMIT, which for an ``AsyncSession`` is on the
      loop); a task sends the messages in order.
    * ``listen_*`` called on a thread that runs an event loop register the
      callback and return at once; ``await listening()`` then returns once the
      subscription is active. Called from sync code (no running loop) they
      block until it is active, as :class:`NotifyAdapter` promises.
      ``AsyncQueuert`` and ``AsyncWorker`` await ``listening()`` themselves.
    * Callbacks are called on the adapter's event loop.
    * ``await aclose()`` closes without blocking the loop; ``close()`` on the
      loop only starts closing.
    """

    async def listening(self) -> None:
        """Return once the ``listen_*`` calls made so far are active (or the backend is down)."""
        ...

    async def aclose(self) -> None:
        """Release connections without blocking the event loop; idempotent."""
        ...
