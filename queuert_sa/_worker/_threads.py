"""The thread driver: :class:`Worker` runs the shared flows on a pool of threads.

What is its own: slot threads, a ``Condition``-based waker, the SQLite writer
lock shared by every thread worker of the process, the lease keeper thread,
``signal.signal`` handlers, and performing each effect with a plain call (the
attempt's SAVEPOINT opens lazily, on the handler's first use of
``attempt.session``). The algorithm is in ``_flow``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from sqlalchemy.orm import Session

from queuert_sa._attempt import Attempt, AttemptState, Outcome
from queuert_sa._durations import Duration
from queuert_sa._errors import DatabaseUnavailableError, WorkerConfigError
from queuert_sa._job_types import JobType
from queuert_sa._logs import get_logger
from queuert_sa._retry import Backoff
from queuert_sa.notify import Subscription

from . import _flow as flow
from . import _keep as recurring
from . import _staged as staged
from ._config import (
    DEFAULT_ATOMIC_TIMEOUT,
    HandlerOptions,
    WorkerCore,
    WorkerOptions,
    config_duration,
)
from ._leases import LeaseKeeper
from ._thread_performer import Performer, Waker, WriterHold, writer_lock

if TYPE_CHECKING:
    from queuert_sa._client import Queuert

log = get_logger("queuert_sa.worker")

InT = TypeVar("InT")
OutT = TypeVar("OutT")
T = TypeVar("T")

Handler = Callable[[Attempt[InT, OutT]], Outcome]

BatchHandler = Callable[[list[Attempt[InT, OutT]]], Sequence[Outcome]]
"""A :meth:`Worker.batch_handler`: the group's attempts in, one outcome per attempt out."""


class Worker(WorkerCore):
    """Runs handlers for jobs of the types it has handlers for, on a pool of threads.

    Created by :meth:`Queuert.worker`. Register handlers with
    :meth:`handler`, then :meth:`run` (blocking; stops on SIGINT/SIGTERM) or
    :meth:`start`/:meth:`stop` when embedding.

    Args:
        concurrency: Number of attempts running at once (threads). Defaults to 1.
            On SQLite an atomic attempt holds the database's single write lock,
            so attempts run one at a time whatever this is.
        poll_interval: Longest sleep between checks for due jobs when no
            notification arrives; jittered by ±5 %. Defaults to 5 seconds.
        backoff: Retry delays for types that declare none. Defaults to
            ``Backoff()`` (10 s doubling to 300 s, ±10 %).
        max_attempts: Attempts a job may take before it becomes ``failed``
            (terminal, its last error kept), for handlers and types that set
            none. Defaults to None: a failing job is retried without limit.
        shutdown_grace: How long :meth:`stop` waits for in-flight attempts.
            Defaults to 30 seconds. Attempts still running after it are left to
            the database: when the process exits their transactions roll back
            and the jobs are pending again.
        worker_id: Recorded in ``completed_by``/``leased_by``. Defaults to
            ``host:pid:random``.
        session_factory: Makes the ``Session`` of each attempt. Defaults to
            ``Session(engine)``; pass your ``sessionmaker`` to get your session
            class and options in handlers.
        handle_signals: ``"auto"`` (default) installs SIGINT/SIGTERM handlers in
            :meth:`run` when called from the main thread; ``"never"`` leaves
            signals alone.
    """

    def __init__(
        self,
        client: Queuert,
        *,
        session_factory: Callable[[], Session] | None = None,
        **options: Unpack[WorkerOptions],
    ) -> None:
        super().__init__(client.ctx, **options)
        self.client = client
        engine = self.engine = client.engine
        self.session_factory: Callable[[], Session] = session_factory or (lambda: Session(engine))
        # A session of the worker's own is reachable only through
        # attempt.session, so an atomic attempt may open its SAVEPOINT on first
        # use; one from the application's factory (a scoped session) may be
        # written through directly, so it gets its SAVEPOINT up front.
        self.eager_savepoints = session_factory is not None
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self._stop_requested = threading.Event()
        self.waker = Waker(self.concurrency)
        self._subscription: Subscription | None = None
        self._fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None
        """Called (from the slot thread) when a handler's SystemExit/KeyboardInterrupt stops
        the worker; the asyncio worker running this one's plain handlers listens."""
        self._writer_lock = writer_lock(engine) if self.ctx.capabilities.single_writer else None
        # A performer (and writer hold) per renewal: holds are not shared between threads.
        self.leases = LeaseKeeper(
            self.ctx.notify,
            lambda state, lease: self._performer().drive(staged.renew(self, state, lease)),
        )

    # --- registration ------------------------------------------------------------

    def handler(
        self,
        job_type: JobType[InT, OutT],
        **options: Unpack[HandlerOptions],
    ) -> Callable[[Handler[InT, OutT]], Handler[InT, OutT]]:
        """Register the decorated function as the handler of ``job_type``.

        The handler receives an :class:`Attempt` and must return
        ``attempt.complete(output)`` or ``attempt.continue_with(type, input)``.
        Any exception rolls back everything the attempt wrote and retries the
        job after the backoff delay (``backoff`` here, else the type's, else
        the worker's), until the job has had ``max_attempts`` attempts: then it
        becomes ``failed``. ``raise q.Fail(reason)`` fails it at once.

        Args:
            mode: ``"atomic"`` (default): the handler runs inside the attempt's
                transaction; ``attempt.session`` writes commit with the
                completion. ``"staged"``: ``attempt.prepare()`` (short read
                transaction, commits a lease), external work with no transaction
                open, ``attempt.transaction()`` (ownership re-checked) to write.
            timeout: Atomic mode: on PostgreSQL the server ends an attempt's
                transaction when it sits idle (the handler doing non-database
                work, or hung) or one statement runs longer than this; the job
                becomes available again and the late completion is not
                written. (A handler that keeps issuing statements is not cut
                off: PostgreSQL before 17 has no whole-transaction timeout.)
                SQLite has no such mechanism. Defaults to 5 minutes.
            lease: Staged mode: how long the job stays reserved without a
                renewal; renewed every half lease while the handler runs. A
                worker that dies loses the job to another worker after it.
                Defaults to 60 seconds.
            max_attempts: Attempts a job may take; the failure of the last one
                makes the job ``failed`` (terminal: no more attempts; its error
                and attempt count kept; ``retry_job`` runs it again). Defaults
                to the type's, else the worker's; ``None`` here means no limit
                whatever those say. A ``q.Reschedule`` never fails a job.
            fail_on: Exception classes that fail the job at once, without
                retries (as ``q.Fail`` does), e.g. ``fail_on=(ValidationError,)``.
                Defaults to none.
            batch: Atomic mode: group commit. Once the slot has acquired a job
                of this type, it takes up to ``batch - 1`` more due ones in the
                same transaction, runs the handler on each (each attempt's
                writes in a SAVEPOINT of its own, so one that raises undoes
                only its own writes and is retried alone), writes the
                completions together and commits once. If that COMMIT fails,
                no job of the group is completed and each is retried. The
                group holds its rows locked until it commits, and a job waits
                for the jobs before it in its group. Defaults to 1 (a
                transaction per job).
            max_running: At most this many attempts of the type run at once,
                across every worker and process on the database (atomic and
                staged alike); a due job beyond it stays pending, and the slot
                takes other work. Declare it on every worker that runs the
                type. Not with ``batch``. Defaults to None: no limit.
        """
        build = self._registration(job_type, options)

        def register(fn: Handler[InT, OutT]) -> Handler[InT, OutT]:
            self._refuse_coroutine(job_type, fn)
            registration = build(fn)
            self.handlers[registration.job_type.name] = registration
            return fn

        return register

    def batch_handler(
        self,
        job_type: JobType[InT, OutT],
        *,
        size: int = 100,
        backoff: Backoff | None = None,
        timeout: Duration = DEFAULT_ATOMIC_TIMEOUT,
        max_attempts: int | None = None,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> Callable[[BatchHandler[InT, OutT]], BatchHandler[InT, OutT]]:
        """Register the decorated function as the handler of ``job_type``, for whole groups.

        The function receives a list of up to ``size`` atomic :class:`Attempt`
        objects, acquired in one transaction, and returns one outcome per
        attempt, in order: ``[a.complete(output) for a in attempts]``. All the
        attempts share one ``session``: write everything (a bulk insert, the
        results of one external call for all) through ``attempts[0].session``;
        it commits with the completions. If the function raises, the writes
        of the whole group are rolled back and every job of it is retried.
        ``backoff``, ``timeout``, ``max_attempts`` (None: the type's, else the
        worker's) and ``fail_on`` as for :meth:`handler`.
        """
        build = self._batch_registration(job_type, size, backoff, timeout, max_attempts, fail_on)

        def register(fn: BatchHandler[InT, OutT]) -> BatchHandler[InT, OutT]:
            self._refuse_coroutine(job_type, fn)
            registration = build(fn)
            self.handlers[registration.job_type.name] = registration
            return fn

        return register

    def _refuse_coroutine(self, job_type: JobType[Any, Any], fn: Callable[..., Any]) -> None:
        if inspect.iscoroutinefunction(fn):
            name = self.ctx.job_types.resolve(job_type).name
            raise WorkerConfigError(
                f"The handler for {name!r} is 'async def'; the thread worker "
                "runs plain functions. Make it a 'def' function."
            )

    @property
    def running(self) -> bool:
        return bool(self._threads)

    # --- what the performers ask of the worker -----------------------------------------

    def hold_lease(self, state: AttemptState, lease: dt.timedelta) -> None:
        self.leases.hold(state, lease)

    def release_lease(self, state: AttemptState) -> None:
        self.leases.release(state)

    def held_ids(self) -> set[uuid.UUID]:
        return self.leases.held_ids()

    def is_stopping(self) -> bool:
        return self.stopping.is_set()

    def hint_idle(self) -> None:
        self.waker.hint_idle()

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the slot threads and return. Idempotent while running.

        Raises :class:`SchemaMissingError` at once if queuert's tables do not
        exist (a worker that cannot ever succeed should not start). An
        unreachable database is only logged: the slots retry with backoff.
        Raises :class:`WorkerConfigError` if attempts of an earlier run are
        still in flight (a ``stop()`` that timed out).
        """
        self._stop_requested.clear()
        self._start()

    def _start(self) -> None:
        if not self.handlers:
            raise WorkerConfigError(
                "The worker has no handlers; register some with @worker.handler(job_type)."
            )
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            if not self.stopping.is_set():
                return
            raise WorkerConfigError(
                f"{len(self._threads)} attempt(s) of the previous run are still in flight; "
                "wait for stop() to return True before starting again."
            )
        try:
            if self.schedules_due(self.poll_interval):  # before any slot takes a tick
                self._performer().drive(recurring.keep(self))
            self._performer().drive(flow.next_due(self))
        except DatabaseUnavailableError as exc:
            self.log.warning(
                "worker %s: database unavailable at start (%s); will retry", self.worker_id, exc
            )
        self.stopping.clear()
        self.waker = waker = Waker(self.concurrency)
        self._subscription = self.ctx.notify.listen_job_scheduled(
            self.type_names, lambda _type_name, count: waker.hint(count)
        )
        for slot in range(self.concurrency):
            thread = threading.Thread(
                target=self._slot_thread, name=f"queuert-worker-{slot}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self.log_started("worker")

    def _performer(self) -> Performer:
        return Performer(self, WriterHold(self._writer_lock))

    def _slot_thread(self) -> None:
        try:
            self._performer().drive(flow.slot_loop(self))
        except BaseException as exc:
            # A handler raised SystemExit/KeyboardInterrupt: its attempt is
            # recorded as failed; the process was asked to end, so stop.
            self.log.critical(
                "worker %s: a handler raised %r; stopping the worker", self.worker_id, exc
            )
            if self.on_fatal is not None:
                self.on_fatal(exc)  # the owner (an AsyncWorker) raises it, not this stop()
            else:
                self._fatal = self._fatal or exc
            self.stopping.set()
            self._stop_requested.set()
            self.waker.close()

    def stop(self, timeout: Duration | None = None) -> bool:
        """Stop acquiring, wait for in-flight attempts, and return.

        Waits up to ``timeout`` (default: ``shutdown_grace``). Returns True if
        every attempt finished; False if some were still running (they roll back
        when their thread or the process ends). If a handler raised
        ``SystemExit``/``KeyboardInterrupt`` (which stopped the worker), it is
        raised here, once the worker has stopped.
        """
        if self._threads and not self.stopping.is_set():
            self.log_stopping()
        self.stopping.set()
        self._stop_requested.set()
        self.waker.close()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if not self._threads:
            return True
        grace = self.shutdown_grace if timeout is None else config_duration(timeout, "timeout")
        end = time.monotonic() + grace.total_seconds()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            self.log.warning(
                "worker %s: %d attempt(s) still running after the shutdown grace period",
                self.worker_id,
                len(alive),
            )
            return False
        self._threads = []
        self.leases.close()
        self.log_stopped()
        fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal  # a handler's SystemExit/KeyboardInterrupt: end as it asked
        return True

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop gracefully, as SIGTERM does (from any thread)."""
        self._stop_requested.set()

    def run(self) -> bool:
        """Run until SIGINT/SIGTERM (or :meth:`request_stop`/:meth:`stop`), then stop gracefully.

        Returns what :meth:`stop` returns: False if attempts were still running
        after ``shutdown_grace`` (their transactions roll back when the process
        exits). A second signal stops at once: attempts in flight are abandoned
        and their transactions roll back, leaving the jobs pending. A handler
        that raises ``SystemExit`` or ``KeyboardInterrupt`` has its attempt
        recorded, stops the worker gracefully, and ``run()`` then raises it.
        """
        self._stop_requested.clear()
        previous: dict[int, Any] = {}
        if self.handle_signals == "auto" and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                if self._stop_requested.is_set():
                    self.log.warning(
                        "second signal: exiting without waiting for in-flight attempts"
                    )
                    raise SystemExit(128 + signum)
                self.log.info("signal %d: finishing in-flight attempts, then stopping", signum)
                self._stop_requested.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        clean = False
        self._fatal = None
        try:
            # Handlers first, threads second: a signal during start-up still
            # stops the worker gracefully.
            if not self._stop_requested.is_set():
                self._start()
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            try:
                clean = self.stop()
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return clean

    def drain(self, *, max_jobs: int | None = None) -> int:
        """Process due jobs in the calling thread until none is due; return how many.

        For scripts, tests and one-shot runs (e.g. from cron); no threads, no
        waiting. Expired leases of staged attempts (crashed workers) are
        returned to pending and run too. A job whose attempt fails is not taken
        again by the same ``drain()`` call, even if its retry is due at once.
        """
        if not self.handlers:
            raise WorkerConfigError("The worker has no handlers to drain with.")
        try:
            return self._performer().drive(flow.drain(self, max_jobs))
        finally:
            if not self._threads:
                # No slot threads running: the lease keeper (and its
                # ownership-lost subscription) is not needed after this call.
                self.leases.close()
