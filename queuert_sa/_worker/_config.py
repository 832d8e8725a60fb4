"""What both workers share without IO: settings, the handler registry, counters.

:class:`WorkerCore` is the base of :class:`Worker` and :class:`AsyncWorker`:
it validates the settings, registers handlers (refusing duplicates, bad modes
and bad durations), knows the lease bound and per-type timeouts the acquiring
statement needs, decides retries and counts and logs each attempt's end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, cast

from queuert_sa._context import Context
from queuert_sa._durations import Duration, as_duration
from queuert_sa._errors import DatabaseUnavailableError, DuplicateHandlerError, WorkerConfigError
from queuert_sa._job_types import JobType
from queuert_sa._logs import get_logger, worker_fields
from queuert_sa._rate import Rate
from queuert_sa._retry import DEFAULT_BACKOFF, Backoff, is_attempt_limit, retry_decision
from queuert_sa._rules import Decision

from . import _reports as reports
from ._limits import Limits, check_max_running, check_rate
from ._recurring import Recurring

log = get_logger("queuert_sa.worker")

#: How long an atomic attempt may hold its transaction (per handler: ``timeout=``).
DEFAULT_ATOMIC_TIMEOUT = dt.timedelta(minutes=5)

#: How long a staged attempt's lease lasts without renewal (per handler: ``lease=``).
DEFAULT_LEASE = dt.timedelta(seconds=60)

Mode = Literal["atomic", "staged"]


def default_worker_id() -> str:
    """``host:pid:random``: unique per worker, readable in ``completed_by``/``leased_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WorkerOptions(TypedDict, total=False):
    """The options both workers take (``queuert.worker(**options)``); see :class:`WorkerCore`."""

    concurrency: int
    poll_interval: Duration
    backoff: Backoff | None
    max_attempts: int | None
    shutdown_grace: Duration
    worker_id: str | None
    handle_signals: Literal["auto", "never"]
    backlog_interval: Duration | None


class HandlerOptions(TypedDict, total=False):
    """The options of ``@worker.handler(job_type, **options)`` (both workers).

    ``mode`` (``"atomic"``, the default, or ``"staged"``), ``backoff`` and
    ``max_attempts`` (default: the type's, else the worker's), ``fail_on``
    (default: none), ``timeout`` (atomic; default 5 minutes), ``lease``
    (staged; default 60 seconds) and ``batch`` (atomic; default 1): see
    :meth:`Worker.handler`.
    """

    mode: Mode
    backoff: Backoff | None
    max_attempts: int | None
    fail_on: type[BaseException] | tuple[type[BaseException], ...]
    timeout: Duration
    lease: Duration
    batch: int
    max_running: int | None
    rate: Rate | None


#: The largest group of attempts one transaction may hold (``batch=``, ``size=``).
MAX_BATCH = 1000


@dataclass(frozen=True)
class Registration:
    """A handler as registered: its type, function and options."""

    job_type: JobType[Any, Any]
    fn: Callable[..., Any]
    mode: Mode
    backoff: Backoff
    timeout: dt.timedelta
    lease: dt.timedelta
    batch: int = 1
    """How many due jobs of the type one transaction takes and commits together."""
    max_attempts: int | None = None
    """Attempts before a failing job becomes ``failed``; None: retried without limit."""
    fail_on: tuple[type[BaseException], ...] = ()
    """Exceptions that fail the job at once, without retries."""
    whole: bool = False
    """The function takes the whole group (``batch_handler``), not one attempt."""
    max_running: int | None = None
    """Attempts of the type that may run at once across every worker; None: no limit."""
    rate: Rate | None = None
    """How many attempts of the type may start per period across every worker."""


def config_duration(value: object, name: str) -> dt.timedelta:
    """A worker or handler option's duration (seconds or ``timedelta``); bad ones refused."""
    try:
        return as_duration(value, name)
    except TypeError as exc:
        raise WorkerConfigError(str(exc)) from None


def check_max_attempts(value: object, where: str) -> int | None:
    """A retry limit: None (unlimited) or a whole number of attempts, at least 1."""
    if not is_attempt_limit(value):
        raise WorkerConfigError(
            f"max_attempts of {where} must be a whole number of attempts (at least 1) or None "
            f"for no limit, not {value!r}"
        )
    return cast("int | None", value)


def check_fail_on(value: object, type_name: str) -> tuple[type[BaseException], ...]:
    """``fail_on=``: an exception class or a tuple of them."""
    classes: tuple[object, ...] = (
        cast("tuple[object, ...]", value) if isinstance(value, tuple) else (value,)
    )
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise WorkerConfigError(
                f"fail_on of the handler for {type_name!r} takes exception classes, e.g. "
                f"fail_on=(ValueError, KeyError); {cls!r} is not one"
            )
    return cast("tuple[type[BaseException], ...]", classes)


def check_batch(type_name: str, mode: Mode, value: object, option: str) -> None:
    """Refuse a group size that is not a whole number from 1 to :data:`MAX_BATCH`, or staged."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH:
        raise WorkerConfigError(
            f"{option}= of the handler for {type_name!r} must be a whole number of jobs from 1 "
            f"to {MAX_BATCH}, not {value!r}"
        )
    if mode == "staged" and value > 1:
        raise WorkerConfigError(
            f"batch= groups atomic attempts in one transaction; the handler for {type_name!r} "
            "is staged, and each staged attempt commits on its own. Drop batch= or use "
            "mode='atomic'."
        )


class WorkerCore(Recurring):
    """Settings, handlers and counters of a worker; the drivers add the IO.

    Args (all keyword-only in the public constructors):
        concurrency: Attempts running at once. Defaults to 1.
        poll_interval: Longest sleep between looks for due jobs without a
            notification; jittered by ±5 %. Defaults to 5 seconds.
        backoff: Retry delays for types that declare none. Defaults to
            ``Backoff()`` (10 s doubling to 300 s, ±10 %).
        max_attempts: Attempts a job may take before it becomes ``failed``,
            for handlers and types that set none. Defaults to None: a
            failing job is retried without limit.
        shutdown_grace: How long ``stop()`` waits for attempts in flight.
            Defaults to 30 seconds.
        worker_id: Recorded in ``completed_by``/``leased_by``. Defaults to
            ``host:pid:random``.
        handle_signals: ``"auto"`` (default) installs SIGINT/SIGTERM handlers
            in ``run()`` on the main thread; ``"never"`` leaves signals alone.
        backlog_interval: With observers configured, how often the worker
            counts the open jobs by type and state for their ``backlog``
            event (one query). Defaults to 15 seconds; None: never.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        concurrency: int = 1,
        poll_interval: Duration = dt.timedelta(seconds=5),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
        shutdown_grace: Duration = dt.timedelta(seconds=30),
        worker_id: str | None = None,
        handle_signals: Literal["auto", "never"] = "auto",
        backlog_interval: Duration | None = dt.timedelta(seconds=15),
    ) -> None:
        poll_interval = config_duration(poll_interval, "poll_interval")
        shutdown_grace = config_duration(shutdown_grace, "shutdown_grace")
        if concurrency < 1:
            raise WorkerConfigError(f"concurrency must be at least 1, got {concurrency}")
        if poll_interval <= dt.timedelta(0):
            raise WorkerConfigError(f"poll_interval must be positive, got {poll_interval}")
        if handle_signals not in ("auto", "never"):
            raise WorkerConfigError(
                f"handle_signals must be 'auto' or 'never', not {handle_signals!r}"
            )
        self.ctx = ctx
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.backoff = backoff or DEFAULT_BACKOFF
        self.max_attempts = check_max_attempts(max_attempts, "the worker")
        self.shutdown_grace = shutdown_grace
        self.worker_id = worker_id or default_worker_id()
        self.handle_signals: Literal["auto", "never"] = handle_signals
        self.handlers: dict[str, Registration] = {}
        self.eager_savepoints = True
        """Open the atomic SAVEPOINT before the handler runs (else on its first use)."""
        self.rng = random.Random()
        self._init_recurring()
        self.limits = Limits()
        """The types found at their ``max_running`` limit, left out for a moment."""
        self._counts_lock = threading.Lock()
        self._completed = 0
        self._failed = 0
        self.backlog_interval = (
            None
            if backlog_interval is None
            else config_duration(backlog_interval, "backlog_interval")
        )
        self.backlog_next = 0.0
        """When (``time.monotonic()``) a slot next runs the backlog query."""
        self.observed: dict[uuid.UUID, Any] = {}
        """Attempts in flight with observers' spans: job id -> their spans."""
        self.observed_lock = threading.Lock()
        self.reap_next = 0.0
        """When (``time.monotonic()``) an idle slot next looks for expired leases."""

    def reap_due(self) -> bool:
        """True for one idle slot per ``poll_interval``: the worker's reaping pass.

        One statement per worker per interval, however many slots are idle
        (each idle slot used to send its own). A pass that reaped a lease
        makes the next one due at once, to take back a backlog quickly.
        """
        now = time.monotonic()
        with self.observed_lock:
            if now < self.reap_next:
                return False
            self.reap_next = now + self.poll_interval.total_seconds()
        return True

    def reap_soon(self) -> None:
        """The next pass may reap at once: this one took back a lease, or failed."""
        self.reap_next = 0.0

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The worker's logger: its records carry ``worker_id`` (see ``queuert_sa._logs``)."""
        return logging.LoggerAdapter(log, worker_fields(self.worker_id))

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.worker_id} types={list(self.type_names)} "
            f"concurrency={self.concurrency}>"
        )

    # --- registration ----------------------------------------------------------------

    def _registration(
        self, job_type: JobType[Any, Any], options: HandlerOptions
    ) -> Callable[[Callable[..., Any]], Registration]:
        """Check the options now; return what checks and builds the registration of a function."""
        unknown = sorted(set(options) - set(HandlerOptions.__annotations__))
        if unknown:
            raise TypeError(
                f"handler() got an unexpected keyword argument {unknown[0]!r}; it takes "
                "mode, backoff, max_attempts, fail_on, timeout, lease, batch, max_running and "
                "rate."
            )
        mode = options.get("mode", "atomic")
        batch = options.get("batch", 1)
        backoff = options.get("backoff")
        timeout = config_duration(options.get("timeout", DEFAULT_ATOMIC_TIMEOUT), "timeout")
        lease = config_duration(options.get("lease", DEFAULT_LEASE), "lease")
        resolved = self.ctx.job_types.resolve(job_type)
        if mode not in ("atomic", "staged"):
            raise WorkerConfigError(f"mode must be 'atomic' or 'staged', not {mode!r}")
        if timeout <= dt.timedelta(0) or lease <= dt.timedelta(0):
            raise WorkerConfigError("timeout and lease must be positive")
        check_batch(resolved.name, mode, batch, "batch")
        where = f"the handler for {resolved.name!r}"
        # The most specific limit wins; a handler's explicit None lifts the others.
        if "max_attempts" in options:
            max_attempts = check_max_attempts(options["max_attempts"], where)
        elif resolved.max_attempts is not None:
            max_attempts = resolved.max_attempts
        else:
            max_attempts = self.max_attempts
        fail_on = check_fail_on(options.get("fail_on", ()), resolved.name)
        max_running = check_max_running(resolved.name, options.get("max_running"), batch)
        rate = check_rate(resolved.name, options.get("rate"), batch)

        def build(fn: Callable[..., Any]) -> Registration:
            if resolved.name in self.type_names:
                raise DuplicateHandlerError(resolved.name)
            if self.running:
                raise WorkerConfigError("register handlers before the worker starts")
            return Registration(
                job_type=resolved,
                fn=fn,
                mode=mode,
                backoff=backoff or resolved.backoff or self.backoff,
                timeout=timeout,
                lease=lease,
                batch=batch,
                max_attempts=max_attempts,
                fail_on=fail_on,
                max_running=max_running,
                rate=rate,
            )

        return build

    def _batch_registration(
        self,
        job_type: JobType[Any, Any],
        size: int,
        backoff: Backoff | None,
        timeout: Duration,
        max_attempts: int | None = None,
        fail_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> Callable[[Callable[..., Any]], Registration]:
        """:meth:`_registration` of a function taking a whole group of attempts."""
        name = self.ctx.job_types.resolve(job_type).name
        check_batch(name, "atomic", size, "size")
        options: HandlerOptions = {
            "backoff": backoff,
            "timeout": timeout,
            "batch": size,
            "fail_on": fail_on,
        }
        if max_attempts is not None:
            options["max_attempts"] = max_attempts
        build = self._registration(
            job_type,
            options,
        )

        def build_whole(fn: Callable[..., Any]) -> Registration:
            return dataclasses.replace(build(fn), whole=True)

        return build_whole

    @property
    def completed(self) -> int:
        """Attempts that finished their job (completed or continued)."""
        return self._completed

    @property
    def failed(self) -> int:
        """Attempts that ended in an exception (rescheduled, or their job was lost)."""
        return self._failed

    @property
    def running(self) -> bool:
        """True while the worker's slots run (set by the driver)."""
        return False

    @property
    def type_names(self) -> tuple[str, ...]:
        """The job types this worker processes."""
        return tuple(self.handlers)

    @property
    def acquired_types(self) -> tuple[str, ...]:
        """The job types this worker's own slots acquire: its handlers' less those at their limit."""
        full = self.limits.full_now()
        return tuple(n for n in self.handlers if n not in full) if full else tuple(self.handlers)

    @property
    def max_running(self) -> dict[str, int]:
        """Per type with a fleet-wide concurrency limit, how many attempts may run at once."""
        return {n: r.max_running for n, r in self.handlers.items() if r.max_running is not None}

    @property
    def lease_bound(self) -> dt.timedelta:
        """The provisional lease the acquiring statement writes, before the mode is known.

        Invisible for atomic attempts (their row lock and timeout rule);
        renewed, or kept, by a staged ``prepare()``.
        """
        return max(
            (r.timeout if r.mode == "atomic" else r.lease for r in self.handlers.values()),
            default=DEFAULT_ATOMIC_TIMEOUT,
        )

    @property
    def attempt_limits(self) -> dict[str, int]:
        """Per type with a retry limit, how many attempts its jobs may take."""
        return {n: r.max_attempts for n, r in self.handlers.items() if r.max_attempts is not None}

    @property
    def atomic_timeouts(self) -> dict[str, dt.timedelta]:
        """Per atomic type, how long its transaction may idle or one statement run."""
        return {n: r.timeout for n, r in self.handlers.items() if r.mode == "atomic"}

    # --- the end of an attempt -------------------------------------------------------

    def retry(
        self, registration: Registration, error: BaseException, attempt: int
    ) -> tuple[dt.datetime | None, str]:
        """When a failed attempt runs again (None: the job fails), and the error text to keep."""
        return retry_decision(
            error,
            attempt=attempt,
            backoff=registration.backoff,
            now=self.ctx.clock(),
            rng=self.rng,
            max_attempts=registration.max_attempts,
            fail_on=registration.fail_on,
        )

    def count(
        self,
        row: Any,
        error: BaseException | None,
        retry_at: dt.datetime | None,
        *,
        lost: str | None = None,
        duration: float = 0.0,
        decision: Decision | None = None,
    ) -> None:
        """Count the attempt, log how it ended and tell the observers.

        ``lost``: why a failed attempt was not rescheduled; ``duration``: from
        the acquisition to the outcome's COMMIT, seconds; ``decision``: what a
        successful handler decided. A failed attempt with no retry and no
        ``lost`` reason made its job ``failed``: the chain's waiters
        (``await_chain``) are told.
        """
        with self._counts_lock:
            if error is None:
                self._completed += 1
            else:
                self._failed += 1
        reports.ended(self, row, error, retry_at, lost, decision, duration)

    def log_failed_pass(self, exc: Exception, failures: int, delay: float) -> None:
        """Log a slot's pass that failed (``failures`` in a row) before it waits ``delay`` s."""
        if failures == 1 and isinstance(exc, DatabaseUnavailableError):
            # An outage, not a bug: one line; the traceback would only repeat it.
            self.log.warning(
                "worker %s: %s; retrying in %.0f s (and with backoff until it is back)",
                self.worker_id,
                exc,
                delay,
            )
        elif failures == 1:
            self.log.exception("worker %s: loop failed; retrying in %.0f s", self.worker_id, delay)
        else:
            self.log.warning(
                "worker %s: loop failed again (%d in a row: %s); retrying in %.0f s",
                self.worker_id,
                failures,
                exc,
                delay,
            )

    def log_started(self, kind: str) -> None:
        """Log (and tell observers) that the worker's slots run."""
        self.log.info(
            "%s %s started: types=%s concurrency=%d",
            kind,
            self.worker_id,
            ",".join(self.type_names),
            self.concurrency,
        )
        self.ctx.observers.emit(
            "worker_started",
            worker_id=self.worker_id,
            type_names=self.type_names,
            concurrency=self.concurrency,
        )

    def log_stopping(self) -> None:
        """Tell observers the worker stops acquiring."""
        self.ctx.observers.emit("worker_stopping", worker_id=self.worker_id)

    def log_stopped(self) -> None:
        """Log (and tell observers) that every slot has ended."""
        self.log.info("worker %s stopped", self.worker_id)
        self.ctx.observers.emit("worker_stopped", worker_id=self.worker_id)

    def log_recovered(self, failures: int) -> None:
        """Log that a slot works again after ``failures`` failed passes (the database is back)."""
        self.log.info("worker %s: working again after %d failed pass(es)", self.worker_id, failures)
