"""The fan-out from the library's events to the client's observers.

Every layer reaches the observers through one :class:`Observers` on the
context. With none configured, ``active`` is False and callers skip building
an event's arguments at all: no observer costs nothing. An observer that
raises is logged once per (observer, event) and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from queuert_sa._logs import get_logger

from . import hooks
from ._entities import Job
from .models import JobStatus
from .observers import EVENT_NAMES, AttemptSpan, CreationSpan, JobInfo, Observer
from .state import NewJob
from .state.chains import chain_trace_contexts

if TYPE_CHECKING:
    from ._context import Context

log = get_logger("queuert_sa.observers")


def job_info(row: Mapping[Any, Any], attempt: int | None = None) -> JobInfo:
    """A job's identity from a row (or a snapshot's fields)."""
    return JobInfo(
        id=row["id"],
        type_name=row["type_name"],
        chain_id=row["chain_id"],
        chain_type_name=row["chain_type_name"],
        attempt=row["attempt"] if attempt is None else attempt,
    )


class Observers:
    """The client's observers, called safely; ``active`` False when there are none."""

    __slots__ = ("_failed", "_lock", "active", "all")

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.all: tuple[Observer, ...] = tuple(observers)
        for observer in self.all:
            missing = [n for n in EVENT_NAMES if not callable(getattr(observer, n, None))]
            if missing:
                raise TypeError(
                    f"{observer!r} is not an observer: it lacks {', '.join(missing)}. "
                    "Subclass queuert_sa.BaseObserver and override the events you want."
                )
        self.active = bool(self.all)
        self._failed: set[tuple[int, str]] = set()
        self._lock = threading.Lock()

    def emit(self, event: str, /, **fields: Any) -> None:
        """Call ``event`` on every observer; failures are logged once and swallowed."""
        for observer in self.all:
            try:
                getattr(observer, event)(**fields)
            except Exception:
                self.failed_once(observer, event)

    def after_commit(self, session: Session, event: str, /, **fields: Any) -> None:
        """Emit ``event`` once the session's current transaction (or SAVEPOINT) commits."""
        if self.active:
            hooks.on_commit(session, partial(self.emit, event, **fields))

    def failed_once(self, observer: object, event: str) -> None:
        key = (id(observer), event)
        with self._lock:
            first = key not in self._failed
            self._failed.add(key)
        if first:
            log.exception(
                "observer %r failed on %s (ignored; later failures of this event are not logged)",
                observer,
                event,
            )

    # --- tracing ----------------------------------------------------------------------

    def start_creation_span(
        self,
        job: JobInfo,
        chain_trace_context: str | None,
        origin_trace_context: str | None,
        blocker_trace_contexts: tuple[str | None, ...] = (),
    ) -> _Creation | None:
        """Spans of every tracing observer for a job about to be inserted, or None."""
        spans: list[CreationSpan] = []
        for observer in self.all:
            try:
                span = observer.start_creation_span(
                    job=job,
                    chain_trace_context=chain_trace_context,
                    origin_trace_context=origin_trace_context,
                    blocker_trace_contexts=blocker_trace_contexts,
                )
            except Exception:
                self.failed_once(observer, "start_creation_span")
                continue
            if span is not None:
                spans.append(span)
        return _Creation(self, spans) if spans else None

    def start_attempt_span(
        self,
        job: JobInfo,
        worker_id: str,
        trace_context: str | None,
        chain_trace_context: str | None,
    ) -> _Attempt | None:
        """Spans of every tracing observer for an attempt starting, or None."""
        spans: list[AttemptSpan] = []
        for observer in self.all:
            try:
                span = observer.start_attempt_span(
                    job=job,
                    worker_id=worker_id,
                    trace_context=trace_context,
                    chain_trace_context=chain_trace_context,
                )
            except Exception:
                self.failed_once(observer, "start_attempt_span")
                continue
            if span is not None:
                spans.append(span)
        return _Attempt(self, spans) if spans else None


class _Creation:
    """Creation spans of several observers: the first one's contexts are stored."""

    __slots__ = ("_observers", "_spans", "chain_trace_context", "trace_context")

    def __init__(self, observers: Observers, spans: list[CreationSpan]) -> None:
        self._observers = observers
        self._spans = spans
        self.trace_context = next((s.trace_context for s in spans if s.trace_context), None)
        self.chain_trace_context = next(
            (s.chain_trace_context for s in spans if s.chain_trace_context), None
        )

    def end(self) -> None:
        for span in self._spans:
            try:
                span.end()
            except Exception:
                self._observers.failed_once(span, "CreationSpan.end")


class _Attempt:
    """Attempt spans of several observers, ended together."""

    __slots__ = ("_observers", "_spans")

    def __init__(self, observers: Observers, spans: list[AttemptSpan]) -> None:
        self._observers = observers
        self._spans = spans

    def activate(self) -> Callable[[], None]:
        undo: list[Callable[[], None]] = []
        for span in self._spans:
            try:
                undo.append(span.activate())
            except Exception:
                self._observers.failed_once(span, "AttemptSpan.activate")

        def deactivate() -> None:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    self._observers.failed_once(step, "AttemptSpan.activate")

        return deactivate

    def end(
        self,
        *,
        error: BaseException | None,
        continued_with: str | None,
        retry_at: dt.datetime | None,
        chain_completed: bool,
    ) -> None:
        for span in self._spans:
            try:
                span.end(
                    error=error,
                    continued_with=continued_with,
                    retry_at=retry_at,
                    chain_completed=chain_completed,
                )
            except Exception:
                self._observers.failed_once(span, "AttemptSpan.end")


#: The observers of a client configured without any.
NO_OBSERVERS = Observers()


# --- creation -------------------------------------------------------------------------


def trace_new_jobs(
    session: Session,
    ctx: Context,
    jobs: Sequence[NewJob],
    origin: Job[Any] | None,
    blockers: Sequence[Sequence[uuid.UUID]],
) -> tuple[list[NewJob], list[_Creation | None]]:
    """The jobs with the trace contexts their creation spans give, and the spans.

    ``origin``: the job continued from (None for chains' first jobs), whose
    chain context the new jobs inherit; ``blockers``: each job's blocker
    chains, whose stored contexts its span links to (one read, only if any).
    """
    observers = ctx.observers
    wanted = {chain_id for chain_ids in blockers for chain_id in chain_ids}
    contexts = chain_trace_contexts(session, ctx.models, wanted) if wanted else {}
    traced: list[NewJob] = []
    spans: list[_Creation | None] = []
    chain_context = origin.chain_trace_context if origin is not None else None
    origin_context = origin.trace_context if origin is not None else None
    for new, chain_ids in zip(jobs, blockers, strict=True):
        span = observers.start_creation_span(
            JobInfo(new.id, new.type_name, new.chain_id, new.chain_type_name),
            chain_context,
            origin_context,
            tuple(contexts.get(chain_id) for chain_id in chain_ids),
        )
        spans.append(span)
        if span is None:
            traced.append(new)
            continue
        traced.append(
            dataclasses.replace(
                new,
                trace_context=span.trace_context,
                chain_trace_context=chain_context or span.chain_trace_context,
            )
        )
    return traced, spans


def created_after_commit(
    session: Session,
    observers: Observers,
    jobs: Sequence[NewJob],
    spans: Sequence[_Creation | None],
    blockers: Sequence[Sequence[uuid.UUID]],
) -> None:
    """Emit the creation events of inserted jobs (and end their spans) after COMMIT."""
    hooks.on_commit(session, partial(_created, observers, list(jobs), list(spans), blockers))


def _created(
    observers: Observers,
    jobs: list[NewJob],
    spans: list[_Creation | None],
    blockers: Sequence[Sequence[uuid.UUID]],
) -> None:
    for new, span, chain_ids in zip(jobs, spans, blockers, strict=True):
        if span is not None:
            span.end()
        job = JobInfo(new.id, new.type_name, new.chain_id, new.chain_type_name)
        if new.chain_index == 0:
            observers.emit("chain_created", chain_id=new.chain_id, type_name=new.chain_type_name)
        blocked = new.status == JobStatus.BLOCKED
        observers.emit("job_created", job=job, scheduled_at=new.scheduled_at, blocked=blocked)
        if blocked:
            observers.emit("job_blocked", job=job, blocker_chain_ids=tuple(chain_ids))


# --- ends -----------------------------------------------------------------------------


def finished_after_commit(
    session: Session,
    observers: Observers,
    job: Job[Any],
    *,
    continued: bool,
    worker_id: str | None,
    now: dt.datetime,
    chain_created_at: dt.datetime | None,
) -> None:
    """Emit ``job_completed`` (and ``chain_completed`` given ``chain_created_at``) after COMMIT."""
    info = JobInfo(job.id, job.type_name, job.chain_id, job.chain_type_name, job.attempt)
    observers.after_commit(
        session,
        "job_completed",
        job=info,
        worker_id=worker_id,
        duration=(now - job.created_at).total_seconds(),
        continued=continued,
    )
    if chain_created_at is not None:
        observers.after_commit(
            session,
            "chain_completed",
            chain_id=job.chain_id,
            type_name=job.chain_type_name,
            duration=(now - chain_created_at).total_seconds(),
        )


def unblocked_after_commit(
    session: Session, observers: Observers, rows: Sequence[Mapping[Any, Any]]
) -> None:
    """Emit ``job_unblocked`` for each row after COMMIT."""
    for row in rows:
        observers.after_commit(session, "job_unblocked", job=job_info(row))
