"""The synchronous worker: a pool of threads, each running one attempt at a time.

Each slot thread loops: acquire a due job and run its handler (atomic mode:
acquisition, handler writes, completion and continuation in ONE transaction),
or, when nothing is due, sleep until the next job is due, the poll interval
passes, or a notification arrives — whichever is first.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, SessionTransaction

from ._attempt import Attempt, Outcome, StagedDriver, retry_decision
from ._entities import Chain
from ._errors import (
    DatabaseUnavailableError,
    DuplicateHandlerError,
    HandlerError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobOwnershipError,
    JobTakenByAnotherWorkerError,
    WorkerConfigError,
)
from ._job_types import JobType
from ._leases import LeaseKeeper, lost_reason
from ._retry import DEFAULT_BACKOFF, Backoff
from .models import JobStatus
from .notify import Subscription
from .state import operations as ops
from .state.capabilities import BEGIN_IMMEDIATE

if TYPE_CHECKING:
    from ._client import Queuert

log = logging.getLogger("queuert_sa.worker")

InT = TypeVar("InT")
OutT = TypeVar("OutT")

Handler = Callable[[Attempt[InT, OutT]], Outcome]
HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])

#: How long an atomic attempt may hold its transaction (per handler: ``timeout=``).
DEFAULT_ATOMIC_TIMEOUT = dt.timedelta(minutes=5)

#: How long a staged attempt's lease lasts without renewal (per handler: ``lease=``).
DEFAULT_LEASE = dt.timedelta(seconds=60)

#: With a due job held by another attempt, how soon to look again (seconds).
HELD_JOB_RECHECK_S = 1.0

#: Delays after consecutive infrastructure failures (database down), capped.
RECOVERY_INITIAL_S = 1.0
RECOVERY_MAX_S = 30.0

# SQLite admits one writer per database file. Worker threads of one process
# queue on this lock instead of spinning in SQLite's busy handler.
_sqlite_writer_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_sqlite_writer_locks_guard = threading.Lock()


def _writer_lock(engine: Engine) -> threading.Lock:
    with _sqlite_writer_locks_guard:
        lock = _sqlite_writer_locks.get(engine)
        if lock is None:
            lock = _sqlite_writer_locks[engine] = threading.Lock()
        return lock


@dataclass(frozen=True)
class Registration:
    """A handler as registered: its type, function and options (both workers)."""

    job_type: JobType[Any, Any]
    fn: Callable[..., Any]
    mode: Literal["atomic", "staged"]
    backoff: Backoff
    timeout: dt.timedelta
    lease: dt.timedelta


class _WriterHold:
    """This thread's hold on the SQLite writer lock (no-op on PostgreSQL)."""

    def __init__(self, lock: threading.Lock | None) -> None:
        self._lock = lock
        self._held = False

    def take(self) -> None:
        if self._lock is not None and not self._held:
            self._lock.acquire()
            self._held = True

    def drop(self) -> None:
        if self._held:
            assert self._lock is not None
            self._held = False
            self._lock.release()


class _Waker:
    """Wake hints for idle slots. Hints are counted, so one that arrives
    between "found nothing" and "sleep" is not lost: the sleep returns at once."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._hints = 0
        self._limit = limit
        self._closed = False
        self._idle = 0

    def hint(self, count: int = 1) -> None:
        with self._cond:
            self._hints = min(self._hints + count, self._limit)
            self._cond.notify(count)

    def hint_idle(self) -> None:
        """Wake one slot that is asleep now, if any (no hint is kept for later)."""
        with self._cond:
            if self._idle > self._hints:
                self._hints += 1
                self._cond.notify(1)

    def wait(self, timeout: float) -> None:
        with self._cond:
            if self._hints == 0 and not self._closed:
                self._idle += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._idle -= 1
            if self._hints > 0:
                self._hints -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _transaction_open(session: Session, tx: SessionTransaction) -> bool:
    current = session.get_nested_transaction()
    while current is not None:
        if current is tx:
            return True
        current = current.parent
    return False


class Worker:
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
        concurrency: int = 1,
        poll_interval: dt.timedelta = dt.timedelta(seconds=5),
        backoff: Backoff | None = None,
        shutdown_grace: dt.timedelta = dt.timedelta(seconds=30),
        worker_id: str | None = None,
        session_factory: Callable[[], Session] | None = None,
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
        engine = client.engine
        self._session_factory: Callable[[], Session] = session_factory or (lambda: Session(engine))
        # A session of the worker's own is reachable only through
        # attempt.session, so an atomic attempt may open its SAVEPOINT on first
        # use; one from the application's factory (a scoped session) may be
        # written through directly, so it gets its SAVEPOINT up front.
        self._private_sessions = session_factory is None
        self.handle_signals = handle_signals
        self._handlers: dict[str, Registration] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._waker = _Waker(concurrency)
        self._subscription: Subscription | None = None
        self._rng = random.Random()
        self._writer_lock = _writer_lock(engine) if client.capabilities.single_writer else None
        self._leases = LeaseKeeper(
            client,
            worker_id=self.worker_id,
            session_factory=self._session_factory,
            writer_lock=self._writer_lock,
        )
        self._counts_lock = threading.Lock()
        self.completed = 0
        """Attempts that finished their job (completed or continued)."""
        self.failed = 0
        """Attempts that ended in an exception and were rescheduled."""

    def __repr__(self) -> str:
        return (
            f"<Worker {self.worker_id} types={list(self._handlers)} concurrency={self.concurrency}>"
        )

    # --- registration ------------------------------------------------------------

    def handler(
        self,
        job_type: JobType[InT, OutT],
        *,
        mode: Literal["atomic", "staged"] = "atomic",
        backoff: Backoff | None = None,
        timeout: dt.timedelta = DEFAULT_ATOMIC_TIMEOUT,
        lease: dt.timedelta = DEFAULT_LEASE,
    ) -> Callable[[Handler[InT, OutT]], Handler[InT, OutT]]:
        """Register the decorated function as the handler of ``job_type``.

        The handler receives an :class:`Attempt` and must return
        ``attempt.complete(output)`` or ``attempt.continue_with(type, input)``.
        Any exception rolls back everything the attempt wrote and retries the
        job after the backoff delay (``backoff`` here, else the type's, else
        the worker's).

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
        """
        resolved = self.client.job_types.resolve(job_type)
        if mode not in ("atomic", "staged"):
            raise WorkerConfigError(f"mode must be 'atomic' or 'staged', not {mode!r}")
        if timeout <= dt.timedelta(0) or lease <= dt.timedelta(0):
            raise WorkerConfigError("timeout and lease must be positive")

        def register(fn: Handler[InT, OutT]) -> Handler[InT, OutT]:
            if inspect.iscoroutinefunction(fn):
                raise WorkerConfigError(
                    f"The handler for {resolved.name!r} is 'async def'; the thread worker "
                    "runs plain functions. Make it a 'def' function."
                )
            if resolved.name in self._handlers:
                raise DuplicateHandlerError(resolved.name)
            if self._threads:
                raise WorkerConfigError("register handlers before the worker starts")
            self._handlers[resolved.name] = Registration(
                job_type=resolved,
                fn=fn,
                mode=mode,
                backoff=backoff or resolved.backoff or self.backoff,
                timeout=timeout,
                lease=lease,
            )
            return fn

        return register

    @property
    def _handlers_lease_bound(self) -> dt.timedelta:
        # Provisional lease written at acquisition (before the handler's mode is
        # known): invisible for atomic attempts, renewed by a staged prepare().
        return max(
            (r.timeout if r.mode == "atomic" else r.lease for r in self._handlers.values()),
            default=DEFAULT_ATOMIC_TIMEOUT,
        )

    @property
    def _atomic_timeouts(self) -> dict[str, dt.timedelta]:
        return {n: r.timeout for n, r in self._handlers.items() if r.mode == "atomic"}

    @property
    def type_names(self) -> tuple[str, ...]:
        """The job types this worker processes."""
        return tuple(self._handlers)

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
        if not self._handlers:
            raise WorkerConfigError(
                "The worker has no handlers; register some with @worker.handler(job_type)."
            )
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            if not self._stopping.is_set():
                return
            raise WorkerConfigError(
                f"{len(self._threads)} attempt(s) of the previous run are still in flight; "
                "wait for stop() to return True before starting again."
            )
        try:
            self._next_due()
        except DatabaseUnavailableError as exc:
            log.warning(
                "worker %s: database unavailable at start (%s); will retry", self.worker_id, exc
            )
        self._stopping.clear()
        self._waker = _Waker(self.concurrency)
        waker = self._waker
        self._subscription = self.client.notify.listen_job_scheduled(
            self.type_names, lambda _type_name, count: waker.hint(count)
        )
        for slot in range(self.concurrency):
            thread = threading.Thread(
                target=self._slot_loop, name=f"queuert-worker-{slot}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        log.info(
            "worker %s started: types=%s concurrency=%d",
            self.worker_id,
            ",".join(self.type_names),
            self.concurrency,
        )

    def stop(self, timeout: dt.timedelta | None = None) -> bool:
        """Stop acquiring, wait for in-flight attempts, and return.

        Waits up to ``timeout`` (default: ``shutdown_grace``). Returns True if
        every attempt finished; False if some were still running (they roll back
        when their thread or the process ends).
        """
        self._stopping.set()
        self._stop_requested.set()
        self._waker.close()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        if not self._threads:
            return True
        end = time.monotonic() + (timeout or self.shutdown_grace).total_seconds()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "worker %s: %d attempt(s) still running after the shutdown grace period",
                self.worker_id,
                len(alive),
            )
            return False
        self._threads = []
        self._leases.close()
        log.info("worker %s stopped", self.worker_id)
        return True

    def run(self) -> bool:
        """Run until SIGINT/SIGTERM (or :meth:`stop` from another thread), then stop gracefully.

        Returns what :meth:`stop` returns: False if attempts were still running
        after ``shutdown_grace`` (their transactions roll back when the process
        exits). A second signal stops at once: attempts in flight are abandoned
        and their transactions roll back, leaving the jobs pending.
        """
        self._stop_requested.clear()
        previous: dict[int, Any] = {}
        if self.handle_signals == "auto" and threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                if self._stop_requested.is_set():
                    log.warning("second signal: exiting without waiting for in-flight attempts")
                    raise SystemExit(128 + signum)
                log.info("signal %d: finishing in-flight attempts, then stopping", signum)
                self._stop_requested.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        clean = False
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
        if not self._handlers:
            raise WorkerConfigError("The worker has no handlers to drain with.")
        done = 0
        failed: set[uuid.UUID] = set()
        try:
            while max_jobs is None or done < max_jobs:
                step = self._process_one(exclude=failed, look_first=done == 0)
                if step.job_id is None:
                    if self._reap_one():
                        continue
                    break
                done += 1
                if step.failed:
                    failed.add(step.job_id)
        finally:
            if not self._threads:
                # No slot threads running: the lease keeper (and its
                # ownership-lost subscription) is not needed after this call.
                self._leases.close()
        return done

    # --- the slot loop -----------------------------------------------------------

    def _slot_loop(self) -> None:
        failures = 0
        busy = False
        while not self._stopping.is_set():
            try:
                step = self._process_one(slot=True, look_first=not busy)
                busy = step.job_id is not None
                failures = 0
                if step.job_id is not None:
                    # Work begets work: wake one idle slot to look for more
                    # (this slot looks again itself; a kept hint would only
                    # make it look twice).
                    self._waker.hint_idle()
                    continue
                if self._reap_one():
                    continue
                self._sleep_until(step.next_due)
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
                self._stopping.wait(delay)
            except BaseException as exc:
                # A handler raised SystemExit/KeyboardInterrupt: its attempt is
                # recorded as failed; the process was asked to end, so stop.
                log.critical(
                    "worker %s: a handler raised %r; stopping the worker", self.worker_id, exc
                )
                self._stopping.set()
                self._stop_requested.set()
                self._waker.close()
                return

    def _sleep_until(self, next_due: dt.datetime | None) -> None:
        timeout = self.poll_interval.total_seconds() * self._rng.uniform(0.95, 1.05)
        if next_due is not None:
            until_due = (next_due - self.client.clock()).total_seconds()
            # Due, yet the acquire found nothing: another attempt holds it (its
            # transaction is open). Look again soon, without spinning.
            timeout = min(timeout, until_due if until_due > 0 else HELD_JOB_RECHECK_S)
        self._waker.wait(timeout)

    @contextmanager
    def _write_transaction(self, hold: _WriterHold) -> Generator[Session]:
        """A new session in a write transaction (SQLite: writer lock + BEGIN IMMEDIATE).

        Commits on success, rolls back on error, always closes.
        """
        hold.take()
        try:
            with self._session_factory() as session:
                if self._writer_lock is not None:
                    session.connection(execution_options={BEGIN_IMMEDIATE: True})
                try:
                    yield session
                    session.commit()
                except BaseException:
                    _rollback_quietly(session)
                    raise
        finally:
            hold.drop()

    def _staged_driver(self, registration: Registration, hold: _WriterHold) -> StagedDriver:
        client = self.client

        def commit_prepare(attempt: Attempt[Any, Any]) -> None:
            session = attempt.session
            now = client.clock()
            acquired_at = attempt.job.last_attempt_at
            # The acquiring statement wrote a provisional lease (the longest of
            # this worker's handlers). It stands when it is this handler's and
            # prepare() took under a tenth of it; else the lease is set anew.
            if (
                registration.lease != self._handlers_lease_bound
                or acquired_at is None
                or now - acquired_at >= registration.lease / 10
            ):
                ops.renew_lease(
                    session,
                    client.models,
                    job_id=attempt.job.id,
                    worker_id=self.worker_id,
                    attempt=attempt.job.attempt,
                    leased_until=now + registration.lease,
                )
            session.commit()
            attempt.prepared = True
            session.close()
            # The external work runs with no transaction and no SQLite write lock.
            hold.drop()
            self._leases.hold(attempt, registration.lease)

        @contextmanager
        def owned_transaction(attempt: Attempt[Any, Any]) -> Generator[Session]:
            with self._write_transaction(hold) as session:
                row = ops.lock_job(session, client.models, client.capabilities, attempt.job.id)
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

        return StagedDriver(commit_prepare=commit_prepare, owned_transaction=owned_transaction)

    def _blockers_of(
        self, session: Session, job_type: JobType[Any, Any], job_id: uuid.UUID
    ) -> list[Chain[Any, Any]]:
        if not job_type.blocker_types:
            return []
        return self.client.get_job_blockers(job_id, session=session)

    def _reap_one(self) -> bool:
        """Return one expired lease of this worker's types to pending; True if one was."""
        client = self.client
        if self._writer_lock is not None:
            # Single writer: look with a read before taking the write lock.
            with client.engine.connect() as conn:
                expired = ops.has_expired_lease(
                    conn, client.models, type_names=self.type_names, now=client.clock()
                )
                conn.commit()
                if not expired:
                    return False
        with self._write_transaction(_WriterHold(self._writer_lock)) as session:
            row = ops.reap_expired_lease(
                session,
                client.models,
                client.capabilities,
                type_names=self.type_names,
                exclude_ids=self._leases.held_ids(),
                now=client.clock(),
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
            # The worker that held the lease may be alive but stalled: tell it.
            client.notify.notify_job_ownership_lost(row["id"])
        except Exception:
            log.exception("notify after reaping failed")
        return True

    def _next_due(self) -> dt.datetime | None:
        with self.client.engine.connect() as conn:
            due = ops.next_due_at(conn, self.client.models, type_names=self.type_names)
            # Ended by COMMIT: the pool's reset would roll back, which makes
            # psycopg drop every prepared statement of the connection.
            conn.commit()
            return due

    def _process_one(
        self,
        *,
        slot: bool = False,
        exclude: Collection[uuid.UUID] = (),
        look_first: bool = True,
    ) -> Step:
        """Run at most one attempt; with nothing to run, say when the next job is due.

        ``look_first=False`` (the previous pass ran a job, so more are likely
        due) skips SQLite's read-only look before taking the write lock.
        """
        if self._writer_lock is None:
            step = self._attempt(exclude, _WriterHold(None))
            return step if step.job_id is not None else Step(next_due=self._next_due())
        if look_first:
            # Single writer: look before taking the write lock, which blocks every
            # other writer of the database (including the application's requests).
            next_due = self._next_due()
            if next_due is None or next_due > self.client.clock():
                return Step(next_due=next_due)
        hold = _WriterHold(self._writer_lock)
        hold.take()
        try:
            if slot and self._stopping.is_set():
                return Step()
            step = self._attempt(exclude, hold)
        finally:
            hold.drop()
        return step if step.job_id is not None else Step(next_due=self._next_due())

    def _attempt(self, exclude: Collection[uuid.UUID], hold: _WriterHold) -> Step:
        client = self.client
        session = self._session_factory()
        attempt: Attempt[Any, Any] | None = None
        try:
            if self._writer_lock is not None:
                session.connection(execution_options={BEGIN_IMMEDIATE: True})
            now = client.clock()
            type_names = self.type_names
            row = ops.acquire_job(
                session,
                client.models,
                client.capabilities,
                type_names=type_names,
                worker_id=self.worker_id,
                # Provisional for both modes; a staged prepare() renews it.
                lease_until=now + self._handlers_lease_bound,
                now=now,
                exclude_ids=exclude,
                timeouts=self._atomic_timeouts,
            )
            if row is None:
                # Commit, not roll back: the transaction wrote nothing, and a
                # ROLLBACK makes psycopg drop every prepared statement.
                session.commit()
                return Step()
            registration = self._handlers[row["type_name"]]
            lost = False
            if registration.mode == "atomic":
                # The server-side time limit was set by the acquiring statement.
                error, lost = self._run_handler(session, registration, row)
            else:
                attempt, error = self._run_staged(session, registration, row, hold)
                if attempt is not None and attempt.written and isinstance(error, Exception):
                    # The outcome is committed: the job is done, whatever the
                    # handler did afterwards.
                    log.warning(
                        "job %s (%s): the handler raised %r after its outcome was committed",
                        row["id"],
                        row["type_name"],
                        error,
                    )
                    error = None
            retry_at = None
            if attempt is not None and attempt.prepared:
                # Staged, first transaction committed: the failure is recorded
                # in a transaction of its own, if the job is still ours.
                if error is not None:
                    retry_at = self._reschedule_owned(attempt, registration, error, hold)
            elif lost:
                assert error is not None
                retry_at = self._record_lost_attempt(row, registration, error, None)
            else:
                try:
                    if error is not None:
                        retry_at, error_text = self._retry(registration, error, row["attempt"])
                        ops.reschedule_job(
                            session,
                            client.models,
                            job_id=row["id"],
                            scheduled_at=retry_at,
                            error=error_text,
                            now=client.clock(),
                        )
                    session.commit()
                except Exception as commit_error:
                    _rollback_quietly(session)
                    error = error or commit_error
                    retry_at = self._record_lost_attempt(row, registration, error, commit_error)
        finally:
            if attempt is not None:
                self._leases.release(attempt)
            session.close()
        self._count(row, error, retry_at)
        if error is not None and not isinstance(error, Exception):
            raise error  # SystemExit/KeyboardInterrupt, now that the attempt is recorded
        return Step(job_id=row["id"], failed=error is not None)

    def _run_staged(
        self, session: Session, registration: Registration, row: Any, hold: _WriterHold
    ) -> tuple[Attempt[Any, Any] | None, BaseException | None]:
        """Run a staged handler; return the attempt and the exception that ended it."""
        from ._client import job_from_row

        job_type = registration.job_type
        driver = self._staged_driver(registration, hold)
        try:
            attempt = Attempt(
                client=self.client,
                job_type=job_type,
                job=job_from_row(row, job_type),
                session=session,
                worker_id=self.worker_id,
                mode="staged",
                driver=driver,
                blockers=self._blockers_of(session, job_type, row["id"]),
            )
        except BaseException as exc:
            return None, exc
        try:
            result = registration.fn(attempt)
            if not attempt.owns(result):
                raise HandlerError(
                    f"The handler of {job_type.name!r} returned {result!r:.80}; it must return "
                    "attempt.complete(output) or attempt.continue_with(job_type, input).",
                    job_id=row["id"],
                    type_name=job_type.name,
                )
            if not attempt.written:
                # complete()/continue_with() outside transaction(): write it now,
                # under the same ownership check.
                with attempt.transaction():
                    pass
            return attempt, None
        except BaseException as exc:
            return attempt, exc

    def _reschedule_owned(
        self,
        attempt: Attempt[Any, Any],
        registration: Registration,
        error: BaseException,
        hold: _WriterHold,
    ) -> dt.datetime | None:
        """Reschedule a failed staged attempt if it still owns its job; else leave the job be."""
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
            with self._staged_driver(registration, hold).owned_transaction(attempt) as session:
                ops.reschedule_job(
                    session,
                    client.models,
                    job_id=attempt.job.id,
                    scheduled_at=retry_at,
                    error=text,
                    now=client.clock(),
                )
        except OWNERSHIP_ERRORS:
            return None
        return retry_at

    def _record_lost_attempt(
        self,
        row: Any,
        registration: Registration,
        error: BaseException,
        failure: Exception | None,
    ) -> dt.datetime:
        """The attempt's transaction failed to commit (all rolled back): count it, with backoff.

        ``failure`` is what ended the transaction; None when writing the
        outcome failed and the worker rolled the transaction back itself.
        """
        client = self.client
        retry_at, text = self._retry(registration, error, row["attempt"])
        if failure is None:
            text = f"writing the attempt's outcome failed; nothing was kept: {text}"
        elif error is failure:
            text = f"the attempt's COMMIT failed: {text}"
        else:
            text = f"the attempt's transaction failed ({failure}) after: {text}"
        with self._session_factory() as session, session.begin():
            ops.record_failed_attempt(
                session,
                client.models,
                job_id=row["id"],
                scheduled_at=retry_at,
                error=text,
                now=client.clock(),
            )
        return retry_at

    def _retry(
        self, registration: Registration, error: BaseException, attempt: int
    ) -> tuple[dt.datetime, str]:
        """When a failed attempt runs again, and the error text to keep."""
        return retry_decision(
            error,
            attempt=attempt,
            backoff=registration.backoff,
            now=self.client.clock(),
            rng=self._rng,
        )

    def _count(self, row: Any, error: BaseException | None, retry_at: dt.datetime | None) -> None:
        with self._counts_lock:
            if error is None:
                self.completed += 1
            else:
                self.failed += 1
        if error is None:
            log.debug("job %s (%s) done", row["id"], row["type_name"])
        else:
            log.warning(
                "job %s (%s) attempt %d failed, retry at %s: %r",
                row["id"],
                row["type_name"],
                row["attempt"],
                retry_at.isoformat() if retry_at else "?",
                error,
            )

    def _run_handler(
        self, session: Session, registration: Registration, row: Any
    ) -> tuple[BaseException | None, bool]:
        """Run the handler and write its outcome in a SAVEPOINT.

        Returns the exception that ended it, with everything the attempt wrote
        undone, or None when the outcome is written; and whether the whole
        transaction was rolled back (the acquisition with it).

        The SAVEPOINT opens when the handler first reads ``attempt.session``
        (at once with an application ``session_factory``): a handler that only
        computes its output costs no SAVEPOINT round trips. Its outcome is then written without one, and if that write
        fails the worker rolls back the whole transaction (nothing of the
        attempt is kept) and records the attempt afresh.
        """
        from ._client import job_from_row

        job_type = registration.job_type
        savepoint: SessionTransaction | None = None

        def open_savepoint() -> None:
            nonlocal savepoint
            savepoint = session.begin_nested()

        try:
            attempt = Attempt(
                client=self.client,
                job_type=job_type,
                job=job_from_row(row, job_type),
                session=session,
                worker_id=self.worker_id,
                blockers=self._blockers_of(session, job_type, row["id"]),
            )
            if self._private_sessions:
                attempt.on_first_use(open_savepoint)
            else:
                open_savepoint()
            result = registration.fn(attempt)
            if savepoint is not None and not _transaction_open(session, savepoint):
                raise HandlerError(
                    f"The handler of {job_type.name!r} committed, rolled back or closed "
                    "attempt.session; the worker owns that transaction. Write through it and "
                    "return; use session.begin_nested() for a sub-transaction.",
                    job_id=row["id"],
                    type_name=job_type.name,
                )
            if not attempt.owns(result):
                raise HandlerError(
                    f"The handler of {job_type.name!r} returned {result!r:.80}; it must return "
                    "attempt.complete(output) or attempt.continue_with(job_type, input).",
                    job_id=row["id"],
                    type_name=job_type.name,
                )
        except BaseException as exc:
            if savepoint is not None and _transaction_open(session, savepoint):
                try:
                    savepoint.rollback()
                except Exception:
                    # The connection is gone (e.g. the server ended a timed-out
                    # transaction); the commit path records the attempt.
                    log.debug("rolling back the handler's savepoint failed", exc_info=True)
            return exc, False
        if savepoint is None:
            try:
                attempt.write_outcome(session)
            except BaseException as exc:
                _rollback_quietly(session)
                return exc, True
            return None, False
        try:
            # The handler's own pending writes first, so their errors are theirs.
            session.flush()
            attempt.write_outcome(session)
            savepoint.commit()
            return None, False
        except BaseException as exc:
            if _transaction_open(session, savepoint):
                try:
                    savepoint.rollback()
                except Exception:
                    log.debug("rolling back the handler's savepoint failed", exc_info=True)
            return exc, False


def _rollback_quietly(session: Session) -> None:
    try:
        session.rollback()
    except Exception:
        log.debug("rollback failed (connection lost?)", exc_info=True)


OWNERSHIP_ERRORS = (JobOwnershipError, JobNotFoundError)


@dataclass(frozen=True)
class Step:
    """What one pass of a slot did (both workers)."""

    job_id: uuid.UUID | None = None
    """The job attempted, or None if there was nothing to run."""
    failed: bool = False
    """The attempt ended in an exception (and was rescheduled)."""
    next_due: dt.datetime | None = None
    """With nothing to run: when the next pending job is due, if any."""
