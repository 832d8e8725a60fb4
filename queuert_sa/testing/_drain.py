"""Running due jobs in the test's own thread, and saying so when a handler raised."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from queuert_sa import AsyncWorker, Worker


class _Collector(logging.Handler):
    """Keeps the worker's warnings and errors (failed attempts) while a drain runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lock_ = threading.Lock()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextmanager
def _collecting() -> Generator[_Collector]:
    collector = _Collector()
    logger = logging.getLogger("queuert_sa")
    logger.addHandler(collector)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)


class Drain:
    """The ``queuert_drain`` fixture: ``queuert_drain(worker)`` runs the due jobs, here and now.

    It calls ``worker.drain()`` in the test's thread (no worker threads, no
    waiting) and returns how many attempts ran. A handler that raised would
    only leave a rescheduled job behind, which a test easily misses, so an
    attempt that failed fails the test with the worker's own messages, unless
    ``failures_allowed=True`` (for tests of failures and retries).

    For an :class:`~queuert_sa.AsyncWorker`, in an async test:
    ``await queuert_drain.run_async(worker)``.
    """

    def __call__(
        self, worker: Worker, *, max_jobs: int | None = None, failures_allowed: bool = False
    ) -> int:
        if not callable(getattr(worker, "drain", None)) or _is_async(worker):
            raise TypeError(
                f"queuert_drain(worker) takes a Worker, got {worker!r}; for an AsyncWorker "
                "use 'await queuert_drain.run_async(worker)' in an async test"
            )
        before = worker.failed
        with _collecting() as collector:
            done = worker.drain(max_jobs=max_jobs)
        _check(worker.failed - before, collector, failures_allowed)
        return done

    async def run_async(
        self, worker: AsyncWorker, *, max_jobs: int | None = None, failures_allowed: bool = False
    ) -> int:
        """``await worker.drain()`` on the test's event loop, checked as calling the drain checks."""
        if not _is_async(worker):
            raise TypeError(
                f"queuert_drain.run_async(worker) takes an AsyncWorker, got {worker!r}; "
                "for a Worker call queuert_drain(worker)"
            )
        before = worker.failed
        with _collecting() as collector:
            done = await worker.drain(max_jobs=max_jobs)
        _check(worker.failed - before, collector, failures_allowed)
        return done


def _is_async(worker: object) -> bool:
    return inspect.iscoroutinefunction(getattr(worker, "drain", None))


def _check(failed: int, collector: _Collector, failures_allowed: bool) -> None:
    if failed <= 0 or failures_allowed:
        return
    with collector.lock_:
        lines = "\n".join(f"  {m}" for m in collector.messages) or "  (no log records)"
    pytest.fail(
        f"{failed} attempt(s) failed while draining:\n{lines}\n"
        "Pass failures_allowed=True to queuert_drain() when the test expects failures.",
        pytrace=False,
    )
