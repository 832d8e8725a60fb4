"""The asyncio driver: :class:`AsyncWorker` runs the shared flows on an event loop.

What is its own: slot tasks, a future-based waker, an ``asyncio.Lock`` per
SQLite database and event loop (shared by the async workers of that loop),
one renewal task per staged attempt, ``loop.add_signal_handler``, and
performing each effect by awaiting it: every statement is the sync one, run
through ``run_sync``; the handler is awaited under the atomic timeout; the
SAVEPOINT opens up front (an ``AsyncSession`` attribute cannot open one on
first use); a cancelled task closes the flow and rolls its transaction back.

Plain ``def`` handlers run on threads, in a thread :class:`Worker` on the
engine the application passed as ``thread_engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import signal
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Unpack, overload

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from queuert_sa._attempt import AsyncAttempt, AttemptState, Outcome
from queuert_sa._durations import Duration
from queuert_sa._errors import DatabaseUnavailableError, WorkerConfigError
from queuert_sa._job_types import JobType
from queuert_sa._logs import get_logger
from queuert_sa._retry import Backoff
from queuert_sa.notify import Subscription
from queuert_sa.notify._on_loop import listen_on_loop

from . import _flow as flow
from . import _keep as recurring
from . import _policy as policy
from . import _staged as staged
from ._asyncio_performer import AsyncPerformer, Waker, WriterHold, wait_for_event, writer_lock
from ._config import (
    DEFAULT_ATOMIC_TIMEOUT,
    HandlerOptions,
    Registration,
    WorkerCore,
    WorkerOptions,
    config_duration,
)
from ._threads import BatchHandler, Handler, Worker

if TYPE_CHECKING:
    from queuert_sa._async_client import AsyncQueuert
    from queuert_sa._client import Queuert

log = get_logger("queuert_sa.worker")

InT = TypeVar("InT")
OutT = TypeVar("OutT")
T = TypeVar("T")

AsyncHandler = Callable[[AsyncAttempt[InT, OutT]], Awaitable[Outcome]]

AsyncBatchHandler = Callable[[list[AsyncAttempt[InT, OutT]]], Awaitable[Sequence[Outcome]]]
"""An ``async def`` :meth:`AsyncWorker.batch_handler`: attempts in, one outcome per attempt out."""


class HandlerRegistrar(Protocol[InT, OutT]):
    """``@aworker.handler(job_type)``: takes an ``async def`` or a ``def`` handler of that type."""

    @overload
    def __call__(self, fn: AsyncHandler[InT, OutT], /) -> AsyncHandler[InT, OutT]: ...

    @overload
    def __call__(self, fn: Handler[InT, OutT], /) -> Handler[InT, OutT]: ...


class BatchHandlerRegistrar(Protocol[InT, OutT]):
    """``@aworker.batch_handler(job_type)``: takes an ``async def`` or a ``def`` batch handler."""

    @overload
    def __call__(self, fn: AsyncBatchHandler[InT, OutT], /) -> AsyncBatchHandler[InT, OutT]: ...

    @overload
    def __call__(self, fn: BatchHandler[InT, OutT], /) -> BatchHandler[InT, OutT]: ...


class AsyncWorker(WorkerCore):
    """Runs ``async def`` handlers as asyncio tasks (and plain ``def`` handlers on threads).

    Created by :meth:`AsyncQueuert.worker`. Register handlers with
    :meth:`handler`, then ``await worker.run()`` (stops on SIGINT/SIGTERM) or
    :meth:`start`/:meth:`stop` when embedding (e.g. in a FastAPI lifespan).

    Args:
        concurrency: Attempts running at once (tasks; and threads for plain
            ``def`` handlers). Defaults to 1. On SQLite attempts that write run
            one at a time whatever this is.
        poll_interval, backoff, max_attempts, shutdown_grace, worker_id, handle_signals: As
            for :class:`Worker`.
        session_factory: Makes the ``AsyncSession`` of each attempt; defaults
            to ``AsyncSession(engine)``. Pass your ``async_sessionmaker``.
        thread_engine (``AsyncQueuert.worker``): The application's sync
            ``Engine`` for the same database, on which plain ``def`` handlers
            run (in a thread :class:`Worker` this worker starts and stops with
            itself). Needed only for ``def`` handlers; none is ever built for
            you, so your pool, SSL, ``connect_args`` and event listeners apply.
    """

    def __init__(
        self,
        client: AsyncQueuert,
        *,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        thread_client: Queuert | None = None,
        **options: Unpack[WorkerOptions],
    ) -> None:
        super().__init__(client.ctx, **options)
        self.client = client
        engine = self.engine = client.engine
        self.session_factory: Callable[[], AsyncSession] = session_factory or (
            lambda: AsyncSession(engine, expire_on_commit=False)
        )
        self.eager_savepoints = session_factory is not None  # as the thread worker's
        self._thread_client = thread_client
        self._sync_worker: Worker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.lease_tasks: dict[tuple[uuid.UUID, int], asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._running = False
        self.waker = Waker(self.concurrency)
        self._subscription: Subscription | None = None
        self._fatal: BaseException | None = None
        self._cut_short = False
        self._ownership: Subscription | None = None
        self._check: dict[uuid.UUID, asyncio.Event] = {}

    # --- registration ----------------------------------------------------------------

    def handler(
        self,
        job_type: JobType[InT, OutT],
        **options: Unpack[HandlerOptions],
    ) -> HandlerRegistrar[InT, OutT]:
        """Register the decorated function as the handler of ``job_type``.

        An ``async def`` handler receives an :class:`AsyncAttempt`; a plain
        ``def`` handler receives an :class:`Attempt` and runs on a thread, on
        the worker's ``thread_engine``. Options as for :meth:`Worker.handler`;
        in atomic mode an ``async def`` handler still running after
        ``timeout`` is cancelled, its writes rolled back and the job retried.
        """
        return self._registrar(
            self._registration(job_type, options),
            lambda: self._thread_worker(job_type).handler(job_type, **options),
        )

    def batch_handler(
        self,
        job_type: JobType[InT, OutT],
        *,
        size: int = 100,
        backoff: Backoff | None = None,
        timeout: Duration = DEFAULT_ATOMIC_TIMEOUT,
        max_attempts: int | None = None,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> BatchHandlerRegistrar[InT, OutT]:
        """Register the decorated function as the handler of ``job_type``, for whole groups.

        As :meth:`Worker.batch_handler`: an ``async def`` function receives a
        list of :class:`AsyncAttempt` (a ``def`` one a list of :class:`Attempt`,
        on a thread) and returns one outcome per attempt, in order.
        """
        return self._registrar(
            self._batch_registration(job_type, size, backoff, timeout, max_attempts, fail_on),
            lambda: self._thread_worker(job_type).batch_handler(
                job_type,
                size=size,
                backoff=backoff,
                timeout=timeout,
                max_attempts=max_attempts,
                fail_on=fail_on,
            ),
        )

    def _registrar(
        self,
        build: Callable[[Callable[..., Any]], Registration],
        on_thread: Callable[[], Callable[[Any], Any]],
    ) -> Callable[[Any], Any]:
        """Register an ``async def`` function here, a plain one on the thread worker."""

        def register(fn: Any) -> Any:
            if inspect.iscoroutinefunction(fn):
                registration = build(fn)
                self.handlers[registration.job_type.name] = registration
                return fn
            build(fn)  # the same checks: duplicates across both kinds, not started
            on_thread()(fn)
            return fn

        return register

    def _thread_worker(self, job_type: JobType[Any, Any]) -> Worker:
        if self._sync_worker is None:
            sync_client = self._thread_client
            if sync_client is None:
                name = self.ctx.job_types.resolve(job_type).name
                raise WorkerConfigError(
                    f"The handler for {name!r} is a plain 'def' function; on the "
                    "asyncio worker those run on threads, on a sync Engine you pass: "
                    "aqueuert.worker(..., thread_engine=create_engine(...)) for the same "
                    "database. Or make the handler 'async def'."
                )
            self._sync_worker = sync_client.worker(
                concurrency=self.concurrency,
                poll_interval=self.poll_interval,
                backoff=self.backoff,
                max_attempts=self.max_attempts,
                shutdown_grace=self.shutdown_grace,
                worker_id=self.worker_id,
                handle_signals="never",
                backlog_interval=None,  # this worker counts the backlog
            )
        return self._sync_worker

    @property
    def running(self) -> bool:
        return bool(self._tasks) or (self._sync_worker is not None and self._sync_worker.running)

    @property
    def type_names(self) -> tuple[str, ...]:
        """The job types this worker processes (async and plain handlers)."""
        plain = self._sync_worker.type_names if self._sync_worker is not None else ()
        return (*self.handlers, *plain)

    # --- lifecycle -----------------------------------------------------------------------

    def _performer(self) -> AsyncPerformer:
        lock = writer_lock(self.engine.sync_engine) if self.ctx.capabilities.single_writer else None
        return AsyncPerformer(self, WriterHold(lock))

    async def start(self) -> None:
        """Start the slot tasks (and the thread worker of plain handlers) and return."""
        if not self.type_names:
            raise WorkerConfigError(
                "The worker has no handlers; register some with @worker.handler(job_type)."
            )
        self._tasks = [t for t in self._tasks if not t.done()]
        if self._tasks:
            return
        # asyncio primitives belong to one event loop: make them for this one.
        self.stopping = asyncio.Event()
        if not self._running:
            self._stop_requested = asyncio.Event()
        if self._sync_worker is not None:
            loop = asyncio.get_running_loop()

            def on_fatal(exc: BaseException) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self._stop_for, exc)

            self._sync_worker.on_fatal = on_fatal
            await asyncio.to_thread(self._sync_worker.start)
        if not self.handlers:
            return
        try:
            if self.schedules_due(self.poll_interval):  # before any slot takes a tick
                await self._performer().drive(recurring.keep(self))
            await self._performer().drive(flow.next_due(self))
        except DatabaseUnavailableError as exc:
            self.log.warning("worker %s: database unavailable at start (%s)", self.worker_id, exc)
        loop = asyncio.get_running_loop()
        self.waker = waker = Waker(self.concurrency)

        def on_scheduled(_type_name: str, count: int) -> None:
            # Adapters call back from their own threads.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(waker.hint, count)

        self._subscription = await listen_on_loop(
            self.ctx.notify, lambda n: n.listen_job_scheduled(tuple(self.handlers), on_scheduled)
        )
        self._tasks = [
            asyncio.create_task(self._slot_task(), name=f"queuert-worker-{slot}")
            for slot in range(self.concurrency)
        ]
        self.log_started("async worker")

    async def _slot_task(self) -> None:
        try:
            await self._performer().drive(flow.slot_loop(self))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # As on threads: a handler's SystemExit/KeyboardInterrupt is
            # recorded, then the worker stops.
            self.log.critical(
                "worker %s: a handler raised %r; stopping the worker", self.worker_id, exc
            )
            self._fatal = self._fatal or exc
            self.stopping.set()
            self._stop_requested.set()
            self.waker.close()

    async def stop(self, timeout: Duration | None = None) -> bool:
        """Stop acquiring, wait up to ``timeout`` (default ``shutdown_grace``) for attempts.

        Returns True if every attempt finished. Attempts still running are
        cancelled: atomic ones roll back (the job is pending again), staged
        ones are left to their lease. If a handler raised ``SystemExit`` or
        ``KeyboardInterrupt`` (which stopped the worker), it is raised here.
        """
        started = bool(self._tasks) and not self.stopping.is_set()
        if started:
            self.log_stopping()
        self.stopping.set()
        self._stop_requested.set()
        self.waker.close()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        grace = (
            self.shutdown_grace if timeout is None else config_duration(timeout, "timeout")
        ).total_seconds()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        clean = True
        sync_stop: asyncio.Future[bool] | None = None
        if self._sync_worker is not None:
            # Both kinds of attempts get the same grace period, concurrently.
            sync_stop = asyncio.ensure_future(
                asyncio.to_thread(self._sync_worker.stop, dt.timedelta(seconds=grace))
            )
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                self.log.warning(
                    "worker %s: %d attempt(s) cancelled after the shutdown grace period",
                    self.worker_id,
                    len(pending),
                )
                await asyncio.gather(*pending, return_exceptions=True)
                clean = False
            self._tasks = []
        if sync_stop is not None:
            clean = await asyncio.wait_for(sync_stop, max(deadline - loop.time(), 0) + 5) and clean
        if self._cut_short:
            clean = False  # a second signal cancelled what was in flight
        for task in list(self.lease_tasks.values()):
            task.cancel()
        self.lease_tasks.clear()
        self._close_ownership()
        if started and clean:
            self.log_stopped()
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal  # a handler's SystemExit/KeyboardInterrupt: end as it asked
        return clean

    def _close_ownership(self) -> None:
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None

    async def run(self) -> bool:
        """Run until SIGINT/SIGTERM (or :meth:`stop`), then stop gracefully; see :meth:`Worker.run`."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        self._stop_requested = asyncio.Event()
        if self.handle_signals == "auto" and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int) -> None:
                if self._stop_requested.is_set():
                    self.log.warning("second signal: cancelling in-flight attempts")
                    self._cut_short = True
                    for task in self._tasks:
                        task.cancel()
                    return
                self.log.info("signal %d: finishing in-flight attempts, then stopping", signum)
                self._stop_requested.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
        self._running = True
        self._fatal = None
        self._cut_short = False
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            self._running = False
            try:
                clean = await self.stop()
            finally:
                # Only now: a second signal during the graceful stop cancels the attempts.
                for sig in installed:
                    loop.remove_signal_handler(sig)
        return clean

    def _stop_for(self, exc: BaseException) -> None:
        """A plain handler's SystemExit/KeyboardInterrupt stopped the thread worker: stop too."""
        self._fatal = self._fatal or exc
        self._stop_requested.set()

    @property
    def completed(self) -> int:
        """Attempts that finished their job (``async def`` and plain handlers)."""
        plain = self._sync_worker.completed if self._sync_worker is not None else 0
        return self._completed + plain

    @property
    def failed(self) -> int:
        """Attempts that ended in an exception (``async def`` and plain handlers)."""
        plain = self._sync_worker.failed if self._sync_worker is not None else 0
        return self._failed + plain

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop gracefully, as SIGTERM does (from the event loop's thread)."""
        self._stop_requested.set()

    async def drain(self, *, max_jobs: int | None = None) -> int:
        """Process due jobs on this task until none is due; return how many (see :meth:`Worker.drain`)."""
        if not self.type_names:
            raise WorkerConfigError("The worker has no handlers to drain with.")
        done = 0
        try:
            if self.handlers:
                done = await self._performer().drive(flow.drain(self, max_jobs))
        finally:
            if not self._tasks:
                # Its callback is bound to this event loop: a later run makes its own.
                self._close_ownership()
        if self._sync_worker is not None and (max_jobs is None or done < max_jobs):
            rest = None if max_jobs is None else max_jobs - done
            sync_worker = self._sync_worker
            done += await asyncio.to_thread(lambda: sync_worker.drain(max_jobs=rest))
        return done

    # --- leases of staged attempts: one renewal task each -----------------------------------

    def hold_lease(self, state: AttemptState, lease: dt.timedelta) -> None:
        """Start a task renewing ``state``'s lease every half lease."""
        if self._ownership is None:
            # Ownership-lost messages make the renewal task check at once.
            loop = asyncio.get_running_loop()

            def on_lost(job_id: uuid.UUID) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self._check_now, job_id)

            self._ownership = self.ctx.notify.listen_job_ownership_lost(on_lost)
        self._check.setdefault(state.job.id, asyncio.Event())
        key = (state.job.id, state.job.attempt)
        self.lease_tasks[key] = asyncio.create_task(
            self._renew_loop(state, lease), name=f"queuert-lease-{state.job.id}"
        )

    def release_lease(self, state: AttemptState) -> None:
        """Stop renewing ``state``'s lease (the attempt ended)."""
        task = self.lease_tasks.pop((state.job.id, state.job.attempt), None)
        if task is not None:
            task.cancel()
            if not any(job_id == state.job.id for job_id, _ in self.lease_tasks):
                self._check.pop(state.job.id, None)

    def held_ids(self) -> list[uuid.UUID]:
        """The jobs whose leases this worker renews (never reap those)."""
        return [job_id for job_id, _ in self.lease_tasks]

    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    def hint_idle(self) -> None:
        self.waker.hint_idle()

    def _check_now(self, job_id: uuid.UUID) -> None:
        """An ownership-lost message: renew that job's lease now (finds out why it was lost)."""
        event = self._check.get(job_id)
        if event is not None:
            event.set()

    async def _renew_loop(self, state: AttemptState, lease: dt.timedelta) -> None:
        delay = policy.renew_delay(lease)
        check = self._check.setdefault(state.job.id, asyncio.Event())
        performer = self._performer()
        while True:
            await wait_for_event(check, delay)
            check.clear()
            renewed = await performer.drive(staged.renew(self, state, lease))
            if renewed is False:
                return
            delay = (
                policy.renew_retry_delay(lease) if renewed is None else policy.renew_delay(lease)
            )
