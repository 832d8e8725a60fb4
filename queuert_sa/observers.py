"""Observers: what happened to jobs, chains and workers, as typed events.

An observer receives every event the library knows of, with plain typed
arguments (ids, type names, datetimes, seconds, the exception). Pass
observers to the client, ``Queuert(engine, job_types, observers=[...])`` (or
:class:`~queuert_sa.AsyncQueuert`): its workers report to the same ones.
:class:`queuert_sa.otel.OtelObserver` turns the events into OpenTelemetry
metrics and traces; :class:`RecordingObserver` keeps them in memory for tests.

When events fire:

* Events of a transaction (``chain_created``, ``job_created``,
  ``job_blocked``, ``job_unblocked``, ``job_triggered``, ``job_completed``,
  ``chain_completed``, ``chain_cancelled``, ``chain_deleted``) fire after it
  COMMITs, in order; a rollback, or a rolled-back SAVEPOINT, drops them.
* Attempt events fire as the attempt runs (``job_attempt_started``) and once
  its outcome is committed (``job_attempt_completed``/``job_attempt_failed``,
  ``job_failed``); worker, lease and error events when they happen.

Events arrive on the thread that caused them (a worker slot's, the caller's),
so an observer must be thread-safe and fast. An observer that raises is
logged once per event name and never breaks processing.

Subclass :class:`BaseObserver` and override the events you want; a class
that implements every method of :class:`Observer` works as well.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "AttemptSpan",
    "BacklogCount",
    "BaseObserver",
    "CreationSpan",
    "JobInfo",
    "ObservedEvent",
    "Observer",
    "RecordingObserver",
]


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Who a job is, in an event: its id, type, chain and attempt number."""

    id: uuid.UUID
    type_name: str
    chain_id: uuid.UUID
    chain_type_name: str
    attempt: int = 0
    """The attempt the event is about (0 for a job not yet attempted)."""


@dataclass(frozen=True, slots=True)
class BacklogCount:
    """Open jobs of one type in one state, as a worker's periodic backlog query saw them."""

    type_name: str
    state: str
    """``ready`` (due, pending), ``scheduled`` (pending, not yet due), ``blocked`` or ``running``."""
    count: int
    oldest_age: float | None = None
    """For ``ready``: seconds since the longest-waiting job became due (the queue lag)."""


class CreationSpan(Protocol):
    """A tracing observer's span around the creation of a job (see ``start_creation_span``)."""

    @property
    def trace_context(self) -> str | None:
        """The W3C ``traceparent`` stored in the job's row (its attempts' parent)."""
        ...

    @property
    def chain_trace_context(self) -> str | None:
        """The ``traceparent`` stored as the chain's (inherited by its later jobs)."""
        ...

    def end(self) -> None:
        """The creating transaction committed (never called if it rolled back)."""
        ...


class AttemptSpan(Protocol):
    """A tracing observer's span around one attempt (see ``start_attempt_span``)."""

    def activate(self) -> Callable[[], None]:
        """Make the span current while the handler runs; returns what undoes that.

        Called on the thread (or asyncio task) that runs the handler, so the
        handler's own spans (HTTP calls, SQL) are children of the attempt's.
        """
        ...

    def end(
        self,
        *,
        error: BaseException | None,
        continued_with: str | None,
        retry_at: dt.datetime | None,
        chain_completed: bool,
    ) -> None:
        """The attempt's outcome is committed (``error`` None: it completed or continued)."""
        ...


class Observer(Protocol):
    """The events an observer receives (see the module's documentation for when)."""

    # --- workers ----------------------------------------------------------------------
    def worker_started(
        self, *, worker_id: str, type_names: tuple[str, ...], concurrency: int
    ) -> None: ...
    def worker_stopping(self, *, worker_id: str) -> None: ...
    def worker_stopped(self, *, worker_id: str) -> None: ...
    def worker_error(self, *, worker_id: str, error: BaseException) -> None:
        """A worker's pass failed (it backs off and tries again)."""
        ...

    # --- creation (after COMMIT) ----------------------------------------------------
    def chain_created(self, *, chain_id: uuid.UUID, type_name: str) -> None: ...
    def job_created(self, *, job: JobInfo, scheduled_at: dt.datetime, blocked: bool) -> None:
        """A chain's first job or a continuation was inserted (not a deduplicated start)."""
        ...

    def job_blocked(self, *, job: JobInfo, blocker_chain_ids: tuple[uuid.UUID, ...]) -> None: ...
    def job_unblocked(self, *, job: JobInfo) -> None:
        """The last chain a job waited for completed: the job is pending."""
        ...

    def job_triggered(self, *, job: JobInfo) -> None: ...

    # --- attempts ---------------------------------------------------------------------
    def job_attempt_started(self, *, job: JobInfo, worker_id: str) -> None: ...
    def job_attempt_completed(
        self, *, job: JobInfo, worker_id: str, duration: float, continued_with: str | None
    ) -> None:
        """The attempt's outcome committed; ``duration``: handler start to COMMIT, seconds."""
        ...

    def job_attempt_failed(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        duration: float,
        error: BaseException,
        retry_at: dt.datetime | None,
    ) -> None:
        """The attempt raised (or lost its job); ``retry_at`` None: it is not retried."""
        ...

    def job_attempt_taken_by_another_worker(self, *, job: JobInfo, worker_id: str) -> None: ...
    def job_attempt_already_completed(self, *, job: JobInfo, worker_id: str) -> None: ...
    def job_attempt_lease_expired(self, *, job: JobInfo, worker_id: str) -> None:
        """A staged attempt outlived its lease (its outcome is still written if nobody took it)."""
        ...

    def job_attempt_lease_renewed(
        self, *, job: JobInfo, worker_id: str, leased_until: dt.datetime
    ) -> None: ...
    def job_reaped(self, *, job: JobInfo, worker_id: str, failed: bool) -> None:
        """A worker took back an expired lease (``failed``: no attempts were left)."""
        ...

    def job_limit_reached(self, *, type_name: str, worker_id: str, max_running: int) -> None:
        """A due job of ``type_name`` was left pending: ``max_running`` of its attempts run."""
        ...

    def job_rate_limited(self, *, type_name: str, worker_id: str, delay: float) -> None:
        """A due job of ``type_name`` was delayed ``delay`` seconds: its rate had no token."""
        ...

    # --- ends (after COMMIT) --------------------------------------------------------
    def job_completed(
        self, *, job: JobInfo, worker_id: str | None, duration: float, continued: bool
    ) -> None:
        """A job finished (``worker_id`` None: ``complete_chain``); ``duration``: since created."""
        ...

    def job_failed(self, *, job: JobInfo, worker_id: str | None, error: str) -> None:
        """A job's last allowed attempt failed, or it raised ``Fail``: status ``failed``."""
        ...

    def chain_completed(self, *, chain_id: uuid.UUID, type_name: str, duration: float) -> None:
        """A chain's last job completed; ``duration``: since the chain was created, seconds."""
        ...

    def chain_cancelled(
        self, *, chain_id: uuid.UUID, type_name: str, reason: str | None
    ) -> None: ...
    def chain_deleted(self, *, chain_id: uuid.UUID, type_name: str) -> None: ...

    # --- the outside world ------------------------------------------------------------
    def notify_error(self, *, operation: str, error: BaseException) -> None:
        """A notify adapter call failed (hints only: polling covers for it)."""
        ...

    def database_error(self, *, operation: str, error: BaseException) -> None:
        """The database was unreachable for a worker's pass (it backs off and retries)."""
        ...

    def backlog(self, *, counts: Sequence[BacklogCount]) -> None:
        """A worker's periodic backlog query (``backlog_interval``): open jobs by type and state."""
        ...

    # --- tracing ----------------------------------------------------------------------
    def start_creation_span(
        self,
        *,
        job: JobInfo,
        chain_trace_context: str | None,
        origin_trace_context: str | None,
        blocker_trace_contexts: tuple[str | None, ...],
    ) -> CreationSpan | None:
        """A job is about to be inserted: a span whose context is stored with it, or None.

        ``chain_trace_context`` is None for a chain's first job (the span may
        start the chain's); ``origin_trace_context`` is the job continued
        from; ``blocker_trace_contexts`` the chains the job waits for, by slot.
        """
        ...

    def start_attempt_span(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        trace_context: str | None,
        chain_trace_context: str | None,
    ) -> AttemptSpan | None:
        """An attempt starts: a span, or None (the contexts are the job's stored ones)."""
        ...


class BaseObserver:
    """An observer that ignores every event: subclass it and override the ones you want."""

    def worker_started(
        self, *, worker_id: str, type_names: tuple[str, ...], concurrency: int
    ) -> None:
        return None

    def worker_stopping(self, *, worker_id: str) -> None:
        return None

    def worker_stopped(self, *, worker_id: str) -> None:
        return None

    def worker_error(self, *, worker_id: str, error: BaseException) -> None:
        return None

    def chain_created(self, *, chain_id: uuid.UUID, type_name: str) -> None:
        return None

    def job_created(self, *, job: JobInfo, scheduled_at: dt.datetime, blocked: bool) -> None:
        return None

    def job_blocked(self, *, job: JobInfo, blocker_chain_ids: tuple[uuid.UUID, ...]) -> None:
        return None

    def job_unblocked(self, *, job: JobInfo) -> None:
        return None

    def job_triggered(self, *, job: JobInfo) -> None:
        return None

    def job_attempt_started(self, *, job: JobInfo, worker_id: str) -> None:
        return None

    def job_attempt_completed(
        self, *, job: JobInfo, worker_id: str, duration: float, continued_with: str | None
    ) -> None:
        return None

    def job_attempt_failed(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        duration: float,
        error: BaseException,
        retry_at: dt.datetime | None,
    ) -> None:
        return None

    def job_attempt_taken_by_another_worker(self, *, job: JobInfo, worker_id: str) -> None:
        return None

    def job_attempt_already_completed(self, *, job: JobInfo, worker_id: str) -> None:
        return None

    def job_attempt_lease_expired(self, *, job: JobInfo, worker_id: str) -> None:
        return None

    def job_attempt_lease_renewed(
        self, *, job: JobInfo, worker_id: str, leased_until: dt.datetime
    ) -> None:
        return None

    def job_reaped(self, *, job: JobInfo, worker_id: str, failed: bool) -> None:
        return None

    def job_limit_reached(self, *, type_name: str, worker_id: str, max_running: int) -> None:
        return None

    def job_rate_limited(self, *, type_name: str, worker_id: str, delay: float) -> None:
        return None

    def job_completed(
        self, *, job: JobInfo, worker_id: str | None, duration: float, continued: bool
    ) -> None:
        return None

    def job_failed(self, *, job: JobInfo, worker_id: str | None, error: str) -> None:
        return None

    def chain_completed(self, *, chain_id: uuid.UUID, type_name: str, duration: float) -> None:
        return None

    def chain_cancelled(self, *, chain_id: uuid.UUID, type_name: str, reason: str | None) -> None:
        return None

    def chain_deleted(self, *, chain_id: uuid.UUID, type_name: str) -> None:
        return None

    def notify_error(self, *, operation: str, error: BaseException) -> None:
        return None

    def database_error(self, *, operation: str, error: BaseException) -> None:
        return None

    def backlog(self, *, counts: Sequence[BacklogCount]) -> None:
        return None

    def start_creation_span(
        self,
        *,
        job: JobInfo,
        chain_trace_context: str | None,
        origin_trace_context: str | None,
        blocker_trace_contexts: tuple[str | None, ...],
    ) -> CreationSpan | None:
        return None

    def start_attempt_span(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        trace_context: str | None,
        chain_trace_context: str | None,
    ) -> AttemptSpan | None:
        return None


@dataclass(frozen=True)
class ObservedEvent:
    """One event a :class:`RecordingObserver` received: its name and its arguments."""

    name: str
    fields: dict[str, Any] = field(default_factory=lambda: {})

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


class RecordingObserver(BaseObserver):
    """Keeps every event in memory, in order: the in-memory twin for your tests.

    ``observer.names()`` lists the event names received; ``observer.of(name)``
    the events of one name. Thread-safe. Tracing hooks return None (no spans).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[ObservedEvent] = []

    @property
    def events(self) -> list[ObservedEvent]:
        """Every event so far (a copy)."""
        with self._lock:
            return list(self._events)

    def names(self) -> list[str]:
        """The names of the events so far, in order."""
        return [e.name for e in self.events]

    def of(self, name: str) -> list[ObservedEvent]:
        """The events of one name, in order."""
        return [e for e in self.events if e.name == name]

    def clear(self) -> None:
        """Forget the events so far."""
        with self._lock:
            self._events.clear()

    def _record(self, name: str, fields: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(ObservedEvent(name, fields))


def _recorder(name: str) -> Any:
    def record(self: RecordingObserver, **fields: Any) -> None:
        self._record(name, fields)  # pyright: ignore[reportPrivateUsage]

    record.__name__ = name
    record.__doc__ = f"Record a ``{name}`` event."
    return record


#: Every event name of :class:`Observer`, in declaration order (tracing hooks aside).
EVENT_NAMES: tuple[str, ...] = tuple(
    name
    for name in BaseObserver.__dict__
    if not name.startswith("_") and not name.startswith("start_")
)

for _name in EVENT_NAMES:
    setattr(RecordingObserver, _name, _recorder(_name))
