"""The asyncio worker: slots are tasks on the event loop, handlers are coroutines.

The same protocol as the thread worker (:mod:`._worker`), on ``AsyncSession``:
an atomic attempt acquires its job, runs the handler in a SAVEPOINT and writes
the outcome in ONE transaction; a staged attempt commits a lease in
``prepare()``, does its external work with no transaction open while a task
renews the lease, and writes in ``transaction()`` after re-checking ownership.
Every statement is the sync one, run through ``run_sync``.

Plain ``def`` handlers registered here run on threads, in a thread worker that
this worker starts and stops with itself (on a sync engine for the same
database).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import random
import signal
import threading
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, cast

from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction, async_sessionmaker

from ._attempt import Attempt, AttemptSignal, Outcome, retry_decision
from ._entities import Chain, Job
from ._errors import (
    DatabaseUnavailableError,
    DuplicateHandlerError,
    HandlerError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobTakenByAnotherWorkerError,
    WorkerConfigError,
)
from ._job_types import ChainStart, JobType
from ._leases import lost_reason
from ._retry import DEFAULT_BACKOFF, Backoff
from ._worker import (
    DEFAULT_ATOMIC_TIMEOUT,
    DEFAULT_LEASE,
    HELD_JOB_RECHECK_S,
    OWNERSHIP_ERRORS,
    RECOVERY_INITIAL_S,
    RECOVERY_MAX_S,
    Registration,
    Step,
    Worker,
    default_worker_id,
)
from .models import JobStatus
from .notify import Subscription
from .state import operations as ops
from .state.capabilities import BEGIN_IMMEDIATE

if TYPE_CHECKING:
    from ._async_client import AsyncQueuert

log = logging.getLogger("queuert_sa.worker")

InT = TypeVar("InT")
OutT = TypeVar("OutT")
NextInT = TypeVar("NextInT")
BlockerOutT = TypeVar("BlockerOutT")
P = ParamSpec("P")

AsyncHandler = Callable[["AsyncAttempt[InT, OutT]"], Awaitable[Outcome]]
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


class _Hold:
    """A slot's hold on the worker's SQLite writer lock (no-op without one)."""

    def __init__(self, lock: asyncio.Lock | None) -> None:
        self._lock = lock
        self._held = False

    async def take(self) -> None:
        if self._lock is not None and not self._held:
            await self._lock.acquire()
            self._held = True

    def drop(self) -> None:
        if self._held:
            assert self._lock is not None
            self._held = False
            self._lock.release()


class _Waker:
    """Counted wake hints for idle slot tasks (see the thread worker's ``_Waker``)."""

    def __init__(self, limit: int) -> None:
        self._hints = 0
        self._limit = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def hint_idle(self) -> None:
        """Wake one slot that is asleep now, if any (no hint is kept for later)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def hint(self, count: int = 1) -> None:
        for _ in range(count):
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
            else:
                self._hints = min(self._hints + 1, self._limit)

    async def wait(self, timeout: float) -> None:
        if self._hints > 0:
            self._hints -= 1
            return
        if self._closed:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class AsyncAttempt(Generic[InT, OutT]):
    """What an ``async def`` handler gets: the job, its input and the attempt's ``AsyncSession``.

    Atomic mode: ``session`` is the attempt's transaction; what you write
    through it commits together with the job's completion, or not at all.
    Staged mode: ``async with attempt.prepare() as s:`` (short; commits a
    lease), the external work with no transaction open, then ``async with
    attempt.transaction() as s:`` to write, after an ownership check.
    """

    def __init__(
        self, inner: Attempt[InT, OutT], session: AsyncSession, worker: AsyncWorker
    ) -> None:
        self._inner = inner
        self.session = session
        self._worker = worker
        self._prepare_opened = False
        self._transaction_opened = False
        self._hold = _Hold(None)

    @property
    def job(self) -> Job[InT]:
        return self._inner.job

    @property
    def job_type(self) -> JobType[InT, OutT]:
        return self._inner.job_type

    @property
    def input(self) -> InT:
        """The job's input, decoded with its type."""
        return self._inner.input

    @property
    def blockers(self) -> list[Chain[Any, Any]]:
        """The completed chains this job waited for, in slot order."""
        return self._inner.blockers

    @property
    def signal(self) -> AttemptSignal:
        """Set when a staged attempt lost its job (see :class:`AttemptSignal`)."""
        return self._inner.signal

    @property
    def mode(self) -> str:
        return self._inner.mode

    @property
    def worker_id(self) -> str | None:
        return self._inner.worker_id

    @property
    def outcome(self) -> Outcome | None:
        return self._inner.outcome

    def blocker_outputs(self, job_type: JobType[Any, BlockerOutT]) -> list[BlockerOutT]:
        """Outputs of the completed blocker chains of ``job_type``, in slot order."""
        return self._inner.blocker_outputs(job_type)

    def complete(self, output: OutT) -> Outcome:
        """Finish the job, and with it the chain, with ``output``; return the result."""
        return self._inner.complete(output)

    def continue_with(
        self,
        job_type: Callable[P, ChainStart[NextInT, Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Outcome:
        """Hand the chain to a next job of ``job_type``; see :meth:`Attempt.continue_with`."""
        return self._inner.continue_with(job_type, *args, **kwargs)

    def owns(self, result: object) -> bool:
        return self._inner.owns(result)

    def _staged(self, action: str) -> None:
        if self._inner.mode != "staged":
            raise HandlerError(
                f"{action} is for staged handlers; register the handler with "
                f"@worker.handler({self.job_type.name!r}, mode='staged').",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )

    @asynccontextmanager
    async def prepare(self) -> AsyncGenerator[AsyncSession]:
        """The short first transaction of a staged attempt (see :meth:`Attempt.prepare`)."""
        self._staged("prepare()")
        if self._prepare_opened or self._inner.prepared:
            raise HandlerError(
                "prepare() runs once, before the external work and before transaction().",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        self._prepare_opened = True
        savepoint = await self.session.begin_nested()
        try:
            yield self.session
        except BaseException:
            if savepoint.is_active:
                await savepoint.rollback()
            raise
        await savepoint.commit()
        await self._worker._commit_prepare(self)  # pyright: ignore[reportPrivateUsage]

    @asynccontextmanager
    async def transaction(self) -> AsyncGenerator[AsyncSession]:
        """The closing transaction of a staged attempt (see :meth:`Attempt.transaction`)."""
        self._staged("transaction()")
        if self._transaction_opened:
            raise HandlerError(
                "transaction() runs once per attempt: record the outcome and its writes in "
                "one block.",
                job_id=self.job.id,
                type_name=self.job_type.name,
            )
        self._transaction_opened = True
        worker = self._worker
        if not self._inner.prepared:
            await worker._commit_prepare(self)  # pyright: ignore[reportPrivateUsage]
        async with worker._owned_transaction(self) as session:  # pyright: ignore[reportPrivateUsage]
            yield session
            if self._inner.outcome is not None:
                await session.flush()
                await session.run_sync(self._inner.write_outcome)
                self._inner.written = True


class AsyncWorker:
    """Runs ``async def`` handlers as asyncio tasks (and plain ``def`` handlers on threads).

    Created by :meth:`AsyncQueuert.worker`. Register handlers with
    :meth:`handler`, then ``await worker.run()`` (stops on SIGINT/SIGTERM) or
    :meth:`start`/:meth:`stop` when embedding (e.g. in a FastAPI lifespan).

    Args:
        concurrency: Attempts running at once (tasks; and threads for plain
            ``def`` handlers). Defaults to 1. On SQLite attempts that write run
            one at a time whatever this is.
        poll_interval, backoff, shutdown_grace, worker_id, handle_signals: As
            for :class:`Worker`.
        session_factory: Makes the ``AsyncSession`` of each attempt; defaults
            to ``AsyncSession(engine)``. Pass your ``async_sessionmaker``.
    """

    def __init__(
        self,
        client: AsyncQueuert,
        *,
        concurrency: int = 1,
        poll_interval: dt.timedelta = dt.timedelta(seconds=5),
        backoff: Backoff | None = None,
        shutdown_grace: dt.timedelta = dt.timedelta(seconds=30),
        worker_id: str | None = None,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
        handle_signals: Literal["auto", "never"] = "auto",
    ) -> None:
        if concurrency < 1:
            raise WorkerConfigError(f"concurrency must be at least 1, got {concurrency}")
        if poll_interval <= dt.timedelta(0):
            raise WorkerConfigError(f"poll_interval must be positive, got {poll_interval}")
        self.client = client
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.backoff = backoff or DEFAULT_BACKOFF
        self.shutdown_grace = shutdown_grace
        self.worker_id = worker_id or default_worker_id()
        self.handle_signals = handle_signals
        engine = client.engine
        self._session_factory: Callable[[], AsyncSession] = session_factory or (
            lambda: AsyncSession(engine, expire_on_commit=False)
        )
        self._single_writer = client.capabilities.single_writer
        self._writer: asyncio.Lock | None = None
        self._handlers: dict[str, Registration] = {}
        self._sync_worker: Worker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._leases: dict[tuple[uuid.UUID, int], asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._running = False
        self._waker = _Waker(concurrency)
        self._subscription: Subscription | None = None
        self._ownership: Subscription | None = None
        self._check: dict[uuid.UUID, asyncio.Event] = {}
        self._rng = random.Random()
        self.completed = 0
        """Attempts that finished their job (completed or continued)."""
        self.failed = 0
        """Attempts that ended in an exception and were rescheduled."""

    def __repr__(self) -> str:
        return (
            f"<AsyncWorker {self.worker_id} types={list(self.type_names)} "
            f"concurrency={self.concurrency}>"
        )

    # --- registration ----------------------------------------------------------------

    def handler(
        self,
        job_type: JobType[InT, OutT],
        *,
        mode: Literal["atomic", "staged"] = "atomic",
        backoff: Backoff | None = None,
        timeout: dt.timedelta = DEFAULT_ATOMIC_TIMEOUT,
        lease: dt.timedelta = DEFAULT_LEASE,
    ) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the handler of ``job_type``.

        An ``async def`` handler receives an :class:`AsyncAttempt`; a plain
        ``def`` handler receives an :class:`Attempt` and runs on a thread (as
        on :class:`Worker`). Options as for :meth:`Worker.handler`; in atomic
        mode an ``async def`` handler still running after ``timeout`` is
        cancelled, its writes rolled back and the job retried.
        """
        resolved = self.client.job_types.resolve(job_type)
        if mode not in ("atomic", "staged"):
            raise WorkerConfigError(f"mode must be 'atomic' or 'staged', not {mode!r}")
        if timeout <= dt.timedelta(0) or lease <= dt.timedelta(0):
            raise WorkerConfigError("timeout and lease must be positive")

        def register(fn: HandlerT) -> HandlerT:
            if resolved.name in self.type_names:
                raise DuplicateHandlerError(resolved.name)
            if self._tasks:
                raise WorkerConfigError("register handlers before the worker starts")
            if not inspect.iscoroutinefunction(fn):
                self._thread_worker().handler(
                    resolved, mode=mode, backoff=backoff, timeout=timeout, lease=lease
                )(fn)
                return fn
            self._handlers[resolved.name] = Registration(
                job_type=resolved,
                fn=cast("Callable[[AsyncAttempt[Any, Any]], Awaitable[object]]", fn),
                mode=mode,
                backoff=backoff or resolved.backoff or self.backoff,
                timeout=timeout,
                lease=lease,
            )
            return fn

        return register

    def _thread_worker(self) -> Worker:
        if self._sync_worker is None:
            from ._client import Queuert

            client = self.client
            engine = create_engine(sync_url(client.engine.url))
            sync_client = Queuert(
                engine,
                client.job_types,
                notify=client.notify,
                models=client.models,
                clock=client.clock,
            )
            self._sync_worker = sync_client.worker(
                concurrency=self.concurrency,
                poll_interval=self.poll_interval,
                backoff=self.backoff,
                shutdown_grace=self.shutdown_grace,
                worker_id=self.worker_id,
                handle_signals="never",
            )
        return self._sync_worker

    @property
    def type_names(self) -> tuple[str, ...]:
        """The job types this worker processes (async and plain handlers)."""
        plain = self._sync_worker.type_names if self._sync_worker is not None else ()
        return (*self._handlers, *plain)

    @property
    def _lease_bound(self) -> dt.timedelta:
        return max(
            (r.timeout if r.mode == "atomic" else r.lease for r in self._handlers.values()),
            default=DEFAULT_ATOMIC_TIMEOUT,
        )

    # --- lifecycle -----------------------------------------------------------------------

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
        self._stopping = asyncio.Event()
        if not self._running:
            self._stop_requested = asyncio.Event()
        if self._sync_worker is not None:
            await asyncio.to_thread(self._sync_worker.start)
        if not self._handlers:
            return
        if self._single_writer:
            self._writer = asyncio.Lock()
        try:
            await self._next_due()
        except DatabaseUnavailableError as exc:
            log.warning("worker %s: database unavailable at start (%s)", self.worker_id, exc)
        loop = asyncio.get_running_loop()
        self._waker = waker = _Waker(self.concurrency)

        def on_scheduled(_type_name: str, count: int) -> None:
            # Adapters call back from their own threads.
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(waker.hint, count)

        self._subscription = self.client.notify.listen_job_scheduled(
            tuple(self._handlers), on_scheduled
        )
        self._tasks = [
            asyncio.create_task(self._slot_loop(), name=f"queuert-worker-{slot}")
            for slot in range(self.concurrency)
        ]
        log.info(
            "async worker %s started: types=%s concurrency=%d",
            self.worker_id,
            ",".join(self.type_names),
            self.concurrency,
        )

    async def stop(self, timeout: dt.timedelta | None = None) -> bool:
        """Stop acquiring, wait up to ``timeout`` (default ``shutdown_grace``) for attempts.

        Returns True if every attempt finished. Attempts still running are
        cancelled: atomic ones roll back (the job is pending again), staged
        ones are left to their lease.
        """
        self._stopping.set()
        self._stop_requested.set()
        self._waker.close()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None
        grace = (timeout or self.shutdown_grace).total_seconds()
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
                log.warning(
                    "worker %s: %d attempt(s) cancelled after the shutdown grace period",
                    self.worker_id,
                    len(pending),
                )
                await asyncio.gather(*pending, return_exceptions=True)
                clean = False
            self._tasks = []
        if sync_stop is not None and self._sync_worker is not None:
            sync_clean = await asyncio.wait_for(sync_stop, max(deadline - loop.time(), 0) + 5)
            if sync_clean:
                # Its engine is ours (made in _thread_worker): close its connections.
                self._sync_worker.client.engine.dispose()
            clean = clean and sync_clean
        for task in list(self._leases.values()):
            task.cancel()
        self._leases.clear()
        if self._ownership is not None:
            self._ownership.close()
            self._ownership = None
        return clean

    async def run(self) -> bool:
        """Run until SIGINT/SIGTERM (or :meth:`stop`), then stop gracefully; see :meth:`Worker.run`."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        self._stop_requested = asyncio.Event()
        if self.handle_signals == "auto" and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int) -> None:
                if self._stop_requested.is_set():
                    log.warning("second signal: cancelling in-flight attempts")
                    for task in self._tasks:
                        task.cancel()
                    return
                log.info("signal %d: finishing in-flight attempts, then stopping", signum)
                self._stop_requested.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
        self._running = True
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            self._running = False
            for sig in installed:
                loop.remove_signal_handler(sig)
            clean = await self.stop()
        return clean

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop gracefully (from the event loop's thread)."""
        self._stop_requested.set()

    async def drain(self, *, max_jobs: int | None = None) -> int:
        """Process due jobs on this task until none is due; return how many (see :meth:`Worker.drain`)."""
        if not self.type_names:
            raise WorkerConfigError("The worker has no handlers to drain with.")
        if self._single_writer and self._writer is None:
            self._writer = asyncio.Lock()
        done = 0
        failed: set[uuid.UUID] = set()
        try:
            while max_jobs is None or done < max_jobs:
                step = (
                    await self._process_one(exclude=failed, look_first=done == 0)
                    if self._handlers
                    else Step()
                )
                if step.job_id is None:
                    if self._handlers and await self._reap_one():
                        continue
                    break
                done += 1
                if step.failed:
                    failed.add(step.job_id)
        finally:
            if not self._tasks and self._ownership is not None:
                # Its callback is bound to this event loop: a later run makes its own.
                self._ownership.close()
                self._ownership = None
        if self._sync_worker is not None and (max_jobs is None or done < max_jobs):
            rest = None if max_jobs is None else max_jobs - done
            sync_worker = self._sync_worker
            done += await asyncio.to_thread(lambda: sync_worker.drain(max_jobs=rest))
        return done

    # --- the slot loop -------------------------------------------------------------------

    async def _slot_loop(self) -> None:
        failures = 0
        busy = False
        while not self._stopping.is_set():
            try:
                step = await self._process_one(look_first=not busy)
                busy = step.job_id is not None
                failures = 0
                if step.job_id is not None:
                    self._waker.hint_idle()  # this slot looks again itself
                    continue
                if await self._reap_one():
                    continue
                await self._sleep_until(step.next_due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = min(RECOVERY_INITIAL_S * 2 ** (failures - 1), RECOVERY_MAX_S)
                if failures == 1:
                    log.exception(
                        "worker %s: loop failed; retrying in %.0f s", self.worker_id, delay
                    )
                else:
                    log.warning(
                        "worker %s: loop failed again (%d in a row: %s); retrying in %.0f s",
                        self.worker_id,
                        failures,
                        exc,
                        delay,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _sleep_until(self, next_due: dt.datetime | None) -> None:
        timeout = self.poll_interval.total_seconds() * self._rng.uniform(0.95, 1.05)
        if next_due is not None:
            until_due = (next_due - self.client.clock()).total_seconds()
            timeout = min(timeout, until_due if until_due > 0 else HELD_JOB_RECHECK_S)
        await self._waker.wait(timeout)

    @asynccontextmanager
    async def _write_lock(self) -> AsyncGenerator[None]:
        if self._writer is None:
            yield
            return
        async with self._writer:
            yield

    @asynccontextmanager
    async def _write_transaction(self) -> AsyncGenerator[AsyncSession]:
        """A new session in a write transaction (SQLite: writer lock + BEGIN IMMEDIATE)."""
        async with self._write_lock(), self._session_factory() as session:
            if self._single_writer:
                await session.connection(execution_options={BEGIN_IMMEDIATE: True})
            try:
                yield session
                await session.commit()
            except BaseException:
                await _rollback_quietly(session)
                raise

    async def _next_due(self) -> dt.datetime | None:
        client = self.client
        names = tuple(self._handlers)
        async with client.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: ops.next_due_at(c, client.models, type_names=names)
            )

    async def _reap_one(self) -> bool:
        client = self.client
        names = tuple(self._handlers)
        if self._single_writer:
            async with client.engine.connect() as conn:
                expired = await conn.run_sync(
                    lambda c: ops.has_expired_lease(
                        c, client.models, type_names=names, now=client.clock()
                    )
                )
            if not expired:
                return False
        held = [job_id for job_id, _ in self._leases]
        async with self._write_transaction() as session:
            row = await session.run_sync(
                lambda s: ops.reap_expired_lease(
                    s,
                    client.models,
                    client.capabilities,
                    type_names=names,
                    exclude_ids=held,
                    now=client.clock(),
                )
            )
        if row is None:
            return False
        log.warning(
            "job %s (%s): lease expired, returned to pending (attempt %d kept)",
            row["id"],
            row["type_name"],
            row["attempt"],
        )
        try:
            client.notify.notify_job_scheduled(row["type_name"], 1)
            client.notify.notify_job_ownership_lost(row["id"])
        except Exception:
            log.exception("notify after reaping failed")
        return True

    async def _process_one(
        self, *, exclude: Collection[uuid.UUID] = (), look_first: bool = True
    ) -> Step:
        if self._single_writer and look_first:
            # Look before taking the write lock, which blocks every writer.
            next_due = await self._next_due()
            if next_due is None or next_due > self.client.clock():
                return Step(next_due=next_due)
        hold = _Hold(self._writer)
        await hold.take()
        try:
            if self._stopping.is_set() and self._tasks:
                return Step()
            step = await self._attempt(exclude, hold)
        finally:
            hold.drop()
        return step if step.job_id is not None else Step(next_due=await self._next_due())

    async def _attempt(self, exclude: Collection[uuid.UUID], hold: _Hold) -> Step:
        from ._client import job_from_row

        client = self.client
        sync = client.sync
        session = self._session_factory()
        attempt: AsyncAttempt[Any, Any] | None = None
        registration: Registration | None = None
        row: Any = None
        error: BaseException | None = None
        retry_at: dt.datetime | None = None
        try:
            if self._single_writer:
                await session.connection(execution_options={BEGIN_IMMEDIATE: True})
            now = client.clock()
            names = tuple(self._handlers)
            lease_until = now + self._lease_bound
            timeouts = {n: r.timeout for n, r in self._handlers.items() if r.mode == "atomic"}
            row = await session.run_sync(
                lambda s: ops.acquire_job(
                    s,
                    client.models,
                    client.capabilities,
                    type_names=names,
                    worker_id=self.worker_id,
                    lease_until=lease_until,
                    now=now,
                    exclude_ids=exclude,
                    timeouts=timeouts,
                )
            )
            if row is None:
                await session.rollback()
                return Step()
            registration = self._handlers[row["type_name"]]
            job_type = registration.job_type

            def build(s: Any) -> Attempt[Any, Any]:
                blockers = (
                    sync.get_job_blockers(row["id"], session=s) if job_type.blocker_types else []
                )
                return Attempt(
                    client=sync,
                    job_type=job_type,
                    job=job_from_row(row, job_type),
                    session=s,
                    worker_id=self.worker_id,
                    mode=registration.mode,
                    blockers=blockers,
                )

            try:
                inner = await session.run_sync(build)
            except Exception as exc:
                error = exc
            else:
                attempt = AsyncAttempt(inner, session, self)
                attempt._hold = hold  # pyright: ignore[reportPrivateUsage]
                if registration.mode == "atomic":
                    # The acquiring statement set the server-side time limit.
                    error = await self._run_atomic(session, registration, attempt)
                else:
                    error = await self._run_staged(registration, attempt)
                    if attempt._inner.written and isinstance(error, Exception):  # pyright: ignore[reportPrivateUsage]
                        log.warning(
                            "job %s (%s): the handler raised %r after its outcome was committed",
                            row["id"],
                            row["type_name"],
                            error,
                        )
                        error = None
            if attempt is not None and attempt._inner.prepared:  # pyright: ignore[reportPrivateUsage]
                if error is not None:
                    retry_at = await self._reschedule_owned(attempt, registration, error)
            else:
                try:
                    if error is not None:
                        retry_at, text = self._retry(registration, error, row["attempt"])
                        scheduled = retry_at
                        await session.run_sync(
                            lambda s: ops.reschedule_job(
                                s,
                                client.models,
                                job_id=row["id"],
                                scheduled_at=scheduled,
                                error=text,
                                now=client.clock(),
                            )
                        )
                    await session.commit()
                except Exception as commit_error:
                    await _rollback_quietly(session)
                    error = error or commit_error
                    retry_at = await self._record_lost_attempt(
                        row, registration, error, commit_error
                    )
        finally:
            if attempt is not None:
                self._release_lease(attempt)
            await session.close()
        self._count(row, error, retry_at)
        if error is not None and not isinstance(error, Exception):
            raise error
        return Step(job_id=row["id"], failed=error is not None)

    async def _run_atomic(
        self, session: AsyncSession, registration: Registration, attempt: AsyncAttempt[Any, Any]
    ) -> BaseException | None:
        job_type = registration.job_type
        savepoint = await session.begin_nested()
        try:
            async with asyncio.timeout(registration.timeout.total_seconds()):
                result = await registration.fn(attempt)
            if not _transaction_open(session, savepoint):
                raise HandlerError(
                    f"The handler of {job_type.name!r} committed, rolled back or closed "
                    "attempt.session; the worker owns that transaction.",
                    job_id=attempt.job.id,
                    type_name=job_type.name,
                )
            _check_result(attempt, result)
            await session.flush()
            await session.run_sync(attempt._inner.write_outcome)  # pyright: ignore[reportPrivateUsage]
            await savepoint.commit()
            return None
        except BaseException as exc:
            if _transaction_open(session, savepoint):
                try:
                    await savepoint.rollback()
                except Exception:
                    log.debug("rolling back the handler's savepoint failed", exc_info=True)
            if isinstance(exc, asyncio.CancelledError):
                # Cut off (stop() after the grace period, a second signal): the
                # whole transaction, acquisition included, rolls back as the
                # session closes, so the job is pending again as it was.
                raise
            return exc

    async def _run_staged(
        self, registration: Registration, attempt: AsyncAttempt[Any, Any]
    ) -> BaseException | None:
        try:
            result = await registration.fn(attempt)
            _check_result(attempt, result)
            if not attempt._inner.written:  # pyright: ignore[reportPrivateUsage]
                async with attempt.transaction():
                    pass
            return None
        except asyncio.CancelledError:
            raise  # cut off: a committed lease is left to expire, then reaped
        except BaseException as exc:
            return exc

    # --- staged plumbing -----------------------------------------------------------------

    async def _commit_prepare(self, attempt: AsyncAttempt[Any, Any]) -> None:
        client = self.client
        registration = self._handlers[attempt.job.type_name]
        session = attempt.session
        until = client.clock() + registration.lease
        await session.run_sync(
            lambda s: ops.renew_lease(
                s,
                client.models,
                job_id=attempt.job.id,
                worker_id=self.worker_id,
                attempt=attempt.job.attempt,
                leased_until=until,
            )
        )
        await session.commit()
        attempt._inner.prepared = True  # pyright: ignore[reportPrivateUsage]
        await session.close()
        # The external work runs without holding SQLite's write lock.
        attempt._hold.drop()  # pyright: ignore[reportPrivateUsage]
        if self._ownership is None:
            # Ownership-lost messages make the renewal task check at once.
            loop = asyncio.get_running_loop()

            def on_lost(job_id: uuid.UUID) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self._check_now, job_id)

            self._ownership = client.notify.listen_job_ownership_lost(on_lost)
        self._check.setdefault(attempt.job.id, asyncio.Event())
        key = (attempt.job.id, attempt.job.attempt)
        self._leases[key] = asyncio.create_task(
            self._renew_loop(attempt, registration.lease), name=f"queuert-lease-{attempt.job.id}"
        )

    def _release_lease(self, attempt: AsyncAttempt[Any, Any]) -> None:
        task = self._leases.pop((attempt.job.id, attempt.job.attempt), None)
        if task is not None:
            task.cancel()
            if not any(job_id == attempt.job.id for job_id, _ in self._leases):
                self._check.pop(attempt.job.id, None)

    def _check_now(self, job_id: uuid.UUID) -> None:
        """An ownership-lost message: renew that job's lease now (finds out why it was lost)."""
        event = self._check.get(job_id)
        if event is not None:
            event.set()

    async def _renew_loop(self, attempt: AsyncAttempt[Any, Any], lease: dt.timedelta) -> None:
        client = self.client
        delay = lease.total_seconds() / 2
        check = self._check.setdefault(attempt.job.id, asyncio.Event())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(check.wait(), delay)
            check.clear()
            try:
                async with self._write_transaction() as session:

                    def renew(s: Any) -> tuple[bool, Any]:
                        ops.limit_lock_wait(s, client.capabilities, lease / 8)
                        ours = ops.renew_lease(
                            s,
                            client.models,
                            job_id=attempt.job.id,
                            worker_id=self.worker_id,
                            attempt=attempt.job.attempt,
                            leased_until=client.clock() + lease,
                        )
                        return ours, None if ours else ops.get_job(s, client.models, attempt.job.id)

                    still_ours, row = await session.run_sync(renew)
            except Exception as exc:
                log.warning(
                    "renewing the lease of job %s failed (%s); retrying", attempt.job.id, exc
                )
                delay = min(lease.total_seconds() / 10, 5)
                continue
            if not still_ours:
                attempt.signal.set(lost_reason(row))
                log.warning("job %s: lease lost (%s)", attempt.job.id, attempt.signal.reason)
                return
            delay = lease.total_seconds() / 2

    @asynccontextmanager
    async def _owned_transaction(
        self, attempt: AsyncAttempt[Any, Any]
    ) -> AsyncGenerator[AsyncSession]:
        client = self.client
        async with self._write_transaction() as session:
            row = await session.run_sync(
                lambda s: ops.lock_job(s, client.models, client.capabilities, attempt.job.id)
            )
            if (
                row is None
                or row["status"] != JobStatus.RUNNING
                or row["leased_by"] != self.worker_id
                or row["attempt"] != attempt.job.attempt
            ):
                attempt.signal.set(lost_reason(row))
                if row is None:
                    raise JobNotFoundError(attempt.job.id)
                if row["status"] == JobStatus.COMPLETED:
                    raise JobAlreadyCompletedError(attempt.job.id)
                raise JobTakenByAnotherWorkerError(
                    attempt.job.id, worker_id=self.worker_id, leased_by=row["leased_by"]
                )
            yield session

    async def _reschedule_owned(
        self, attempt: AsyncAttempt[Any, Any], registration: Registration, error: BaseException
    ) -> dt.datetime | None:
        if isinstance(error, OWNERSHIP_ERRORS) or attempt.signal.is_set():
            log.warning(
                "job %s: staged attempt ended without its job (%s); not rescheduling",
                attempt.job.id,
                attempt.signal.reason or type(error).__name__,
            )
            return None
        client = self.client
        retry_at, text = self._retry(registration, error, attempt.job.attempt)
        try:
            async with self._owned_transaction(attempt) as session:
                await session.run_sync(
                    lambda s: ops.reschedule_job(
                        s,
                        client.models,
                        job_id=attempt.job.id,
                        scheduled_at=retry_at,
                        error=text,
                        now=client.clock(),
                    )
                )
        except OWNERSHIP_ERRORS:
            return None
        return retry_at

    async def _record_lost_attempt(
        self, row: Any, registration: Registration, error: BaseException, failure: Exception
    ) -> dt.datetime:
        client = self.client
        retry_at, text = self._retry(registration, error, row["attempt"])
        if error is failure:
            text = f"the attempt's COMMIT failed: {text}"
        else:
            text = f"the attempt's transaction failed ({failure}) after: {text}"
        async with self._session_factory() as session, session.begin():
            await session.run_sync(
                lambda s: ops.record_failed_attempt(
                    s,
                    client.models,
                    job_id=row["id"],
                    scheduled_at=retry_at,
                    error=text,
                    now=client.clock(),
                )
            )
        return retry_at

    def _retry(
        self, registration: Registration, error: BaseException, attempt: int
    ) -> tuple[dt.datetime, str]:
        return retry_decision(
            error,
            attempt=attempt,
            backoff=registration.backoff,
            now=self.client.clock(),
            rng=self._rng,
        )

    def _count(self, row: Any, error: BaseException | None, retry_at: dt.datetime | None) -> None:
        if error is None:
            self.completed += 1
            log.debug("job %s (%s) done", row["id"], row["type_name"])
            return
        self.failed += 1
        log.warning(
            "job %s (%s) attempt %d failed, retry at %s: %r",
            row["id"],
            row["type_name"],
            row["attempt"],
            retry_at.isoformat() if retry_at else "?",
            error,
        )


def _check_result(attempt: AsyncAttempt[Any, Any], result: object) -> None:
    if not attempt.owns(result):
        raise HandlerError(
            f"The handler of {attempt.job_type.name!r} returned {result!r:.80}; it must return "
            "attempt.complete(output) or attempt.continue_with(job_type, input).",
            job_id=attempt.job.id,
            type_name=attempt.job_type.name,
        )


def _transaction_open(session: AsyncSession, tx: AsyncSessionTransaction) -> bool:
    current = session.sync_session.get_nested_transaction()
    while current is not None:
        if current is tx.sync_transaction:
            return True
        current = current.parent
    return False


async def _rollback_quietly(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception:
        log.debug("rollback failed (connection lost?); discarding the connection", exc_info=True)
        # A connection whose rollback failed (e.g. cancelled in the middle of a
        # statement) may still hold its transaction, and on SQLite the write
        # lock: close it now rather than when it is garbage-collected.
        with contextlib.suppress(Exception):
            await session.invalidate()


def sync_url(url: URL) -> URL:
    """The URL of the same database with a sync driver (for plain handlers' threads)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    raise WorkerConfigError(f"No sync driver known for {url.drivername!r}.")


__all__: Sequence[str] = ("AsyncAttempt", "AsyncWorker")
