"""Where the dashboard reads and writes: the client's database, sync or async.

Every read and write is a function of a sync ``Session`` calling the sync
client (``Queuert``'s methods), written once. With ``Queuert`` it runs in
Starlette's thread pool; with ``AsyncQueuert`` in an ``AsyncSession`` through
``run_sync``, on the event loop's connection. Each call is one transaction,
committed on success, so the client's after-commit hooks (worker wake-ups,
observers) fire as for any other caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from queuert_sa._client import Queuert

if TYPE_CHECKING:
    from queuert_sa._async_client import AsyncQueuert

R = TypeVar("R")


class Source:
    """The client behind a dashboard; ``run(fn)`` runs ``fn(session)`` in one transaction."""

    def __init__(self, queuert: Queuert | AsyncQueuert) -> None:
        sync: Any = getattr(queuert, "sync", queuert)
        if not isinstance(sync, Queuert):
            raise TypeError(
                f"Dashboard(queuert) takes a Queuert or an AsyncQueuert, got "
                f"{type(queuert).__name__}."
            )
        self.client: Queuert = sync
        self.queuert = queuert
        self.is_async = sync is not queuert

    async def run(self, fn: Callable[[Session], R]) -> R:
        """``fn(session)`` in a transaction of its own, committed if it returns."""
        if self.is_async:
            from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

            engine: AsyncEngine = getattr(self.queuert, "engine")  # noqa: B009
            async with AsyncSession(engine) as session, session.begin():
                return await session.run_sync(fn)
        return await run_in_threadpool(self._run_sync, fn)

    def _run_sync(self, fn: Callable[[Session], R]) -> R:
        with Session(self.client.engine) as session, session.begin():
            return fn(session)
