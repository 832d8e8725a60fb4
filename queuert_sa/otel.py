"""OpenTelemetry metrics and traces for queuert_sa (extra ``otel``: ``opentelemetry-api``).

::

    from queuert_sa.otel import OtelObserver

    queuert = q.Queuert(engine, job_types, observers=[OtelObserver()])

Uses the global tracer and meter providers unless given others; configure the
SDK and its exporters as usual (``queuert-sa worker --metrics-port`` does it
for Prometheus). What it records:

* **Counters**, counted in Python and read when the SDK collects (``queuert.job.created``, ``queuert.job.attempt.started`` /
  ``.completed`` / ``.failed``, ``queuert.job.completed`` / ``.failed``,
  ``queuert.chain.created`` / ``.completed`` ..., see ``docs/observability.md``)
  by job type and chain type. Worker ids are left out unless
  ``worker_id_attribute=True`` (each restart would make new series).
* **Histograms** in seconds, with boundaries from 5 ms to a day:
  ``queuert.job.attempt.duration`` (every attempt, ``queuert.attempt.result``
  = completed|failed), ``queuert.job.duration``, ``queuert.chain.duration``.
* **Gauges**: ``queuert.job_type.processing`` (attempts running in this
  process), and from the workers' periodic backlog query
  ``queuert.job_type.backlog`` (open jobs by ``queuert.job.state`` = ready,
  scheduled, blocked, running) and ``queuert.job_type.oldest_ready_age``
  (the queue lag, seconds).
* **Spans**: ``create chain.{type}`` (PRODUCER, a child of the span current
  when ``start_chain`` runs, e.g. the HTTP request's: the creation of the
  chain and of its first job); each continuation's ``create job.{type}``
  under the chain's span, linked to the job it continued from, and to the
  chains it waits for; ``start job-attempt.{type}`` (CONSUMER) under its
  job's span, current while the handler runs, ERROR with the exception when
  the attempt fails, with a ``chain completed`` event when it ends the chain.
  Contexts are stored in the job rows as W3C ``traceparent`` strings, so one
  trace follows a chain across processes.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from .observers import BacklogCount, BaseObserver, JobInfo

__all__ = ["DURATION_BUCKETS", "OtelObserver"]

#: Histogram boundaries (seconds): attempts of milliseconds to chains of a day.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
)  # fmt: skip

_SCOPE = "queuert_sa"
_PROPAGATOR = TraceContextTextMapPropagator()

_COUNTERS = {
    "queuert.worker.started": "Workers started",
    "queuert.worker.error": "Worker passes that failed (the worker backs off and retries)",
    "queuert.worker.stopping": "Workers asked to stop",
    "queuert.worker.stopped": "Workers stopped",
    "queuert.job.created": "Jobs created (chains' first jobs and continuations)",
    "queuert.job.blocked": "Jobs created waiting for other chains",
    "queuert.job.unblocked": "Blocked jobs freed by their last blocker completing",
    "queuert.job.triggered": "Jobs made due now by trigger_job",
    "queuert.job.completed": "Jobs finished (completed, or continued the chain)",
    "queuert.job.failed": "Jobs that became failed (no attempts left, or Fail)",
    "queuert.job.reaped": "Expired leases taken back by a worker",
    "queuert.job.attempt.started": "Attempts started",
    "queuert.job.attempt.completed": "Attempts whose outcome committed",
    "queuert.job.attempt.failed": "Attempts that raised or lost their job",
    "queuert.job.attempt.taken_by_another_worker": "Staged attempts whose job another took",
    "queuert.job.attempt.already_completed": "Staged attempts whose job was completed elsewhere",
    "queuert.job.attempt.lease_expired": "Staged attempts that outlived their lease",
    "queuert.job.attempt.lease_renewed": "Staged lease renewals",
    "queuert.chain.created": "Chains created",
    "queuert.chain.completed": "Chains completed",
    "queuert.chain.cancelled": "Chains cancelled",
    "queuert.chain.deleted": "Chains deleted",
    "queuert.state_adapter.error": "Database operations that failed in a worker's pass",
    "queuert.notify_adapter.error": "Notify adapter calls that failed",
}


_PROCESSING = "queuert.job_type.processing"


class _Totals:
    """Counts kept in Python, read by the SDK's asynchronous instruments when it collects.

    An event costs a dict increment under a lock instead of an SDK measurement
    (which cleans, hashes and aggregates its attributes each time: about 30 µs).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[tuple[str, Any], ...], int]] = {}

    def add(self, name: str, attributes: dict[str, Any], amount: int = 1) -> None:
        key = tuple(attributes.items())
        with self._lock:
            counts = self._counts.setdefault(name, {})
            counts[key] = counts.get(key, 0) + amount

    def reader(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                counts = list(self._counts.get(name, {}).items())
            return [Observation(value, dict(key)) for key, value in counts]

        return observe


def _unit(name: str) -> str:
    """A counter's unit, in the semantic conventions' style (``{job}``: a count of jobs)."""
    if name.endswith(".error"):
        return "{error}"
    if name.startswith("queuert.job.attempt."):
        return "{attempt}"
    return "{" + name.split(".")[1] + "}"


def _context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` carries; None if absent or invalid."""
    if not traceparent:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def _span_context_of(traceparent: str | None) -> trace.SpanContext | None:
    extracted = _context_of(traceparent)
    return None if extracted is None else trace.get_current_span(extracted).get_span_context()


def _traceparent(span: trace.Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def _job_attributes(job: JobInfo) -> dict[str, Any]:
    return {
        "messaging.system": "queuert",
        "queuert.job.id": str(job.id),
        "queuert.job.type": job.type_name,
        "queuert.chain.id": str(job.chain_id),
        "queuert.chain.type": job.chain_type_name,
    }


class _Creation:
    """The span of one job's creation, ended after its transaction commits."""

    __slots__ = ("_span", "chain_trace_context", "trace_context")

    def __init__(self, span: trace.Span, chain_trace_context: str | None) -> None:
        self._span = span
        self.trace_context = _traceparent(span)
        # A chain's first job: its span is the chain's.
        self.chain_trace_context = chain_trace_context or self.trace_context

    def end(self) -> None:
        self._span.end()


class _Attempt:
    """The span of one attempt."""

    __slots__ = ("_job", "_span")

    def __init__(self, span: trace.Span, job: JobInfo) -> None:
        self._span = span
        self._job = job

    def activate(self) -> Callable[[], None]:
        token = otel_context.attach(trace.set_span_in_context(self._span))
        return lambda: otel_context.detach(token)

    def end(
        self,
        *,
        error: BaseException | None,
        continued_with: str | None,
        retry_at: dt.datetime | None,
        chain_completed: bool,
    ) -> None:
        span = self._span
        if error is None:
            span.set_attribute("queuert.attempt.result", "completed")
            if continued_with is not None:
                span.set_attribute("queuert.continued_with.job_type", continued_with)
            if chain_completed:
                span.add_event("chain completed", {"queuert.chain.type": self._job.chain_type_name})
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_attribute("queuert.attempt.result", "failed")
            span.set_attribute("error.type", type(error).__qualname__)
            if retry_at is not None:
                span.set_attribute("queuert.rescheduled_at", retry_at.isoformat())
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


class OtelObserver(BaseObserver):
    """An observer recording OpenTelemetry metrics and spans (see the module's docs).

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Where metrics go; the global provider by default.
        worker_id_attribute: Add ``queuert.worker.id`` to the metrics of
            attempts and workers. Off by default: worker ids change on every
            restart, and each would start new time series. Spans carry it always.
        traces: Record spans (default True); False records metrics only.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        worker_id_attribute: bool = False,
        traces: bool = True,
    ) -> None:
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        self._traces = traces
        self._worker_ids = worker_id_attribute
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        # Counters are counted here and read by the SDK when it collects
        # (asynchronous instruments): an increment per event, not a measurement.
        self._totals = _Totals()
        for name, description in _COUNTERS.items():
            meter.create_observable_counter(
                name,
                callbacks=[self._totals.reader(name)],
                unit=_unit(name),
                description=description,
            )

        def histogram(name: str, description: str) -> metrics.Histogram:
            return meter.create_histogram(
                name,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
            )

        self._attempt_duration = histogram(
            "queuert.job.attempt.duration", "Attempts, from handler start to COMMIT"
        )
        self._job_duration = histogram(
            "queuert.job.duration", "Jobs, from creation to completion (waits and retries too)"
        )
        self._chain_duration = histogram(
            "queuert.chain.duration", "Chains, from creation to their last job's completion"
        )
        meter.create_observable_up_down_counter(
            _PROCESSING,
            callbacks=[self._totals.reader(_PROCESSING)],
            unit="{attempt}",
            description="Attempts running now in this process",
        )
        self._lock = threading.Lock()
        self._backlog: Sequence[BacklogCount] = ()
        meter.create_observable_gauge(
            "queuert.job_type.backlog",
            callbacks=[self._observe_backlog],
            unit="{job}",
            description="Open jobs by type and state, from the workers' backlog query",
        )
        meter.create_observable_gauge(
            "queuert.job_type.oldest_ready_age",
            callbacks=[self._observe_lag],
            unit="s",
            description="How long the longest-waiting due job has waited (queue lag)",
        )

    # --- metrics ------------------------------------------------------------------------

    def _count(self, name: str, attributes: dict[str, Any], amount: int = 1) -> None:
        self._totals.add(name, attributes, amount)

    def _job(self, job: JobInfo, worker_id: str | None = None) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "queuert.job.type": job.type_name,
            "queuert.chain.type": job.chain_type_name,
        }
        if worker_id is not None and self._worker_ids:
            attributes["queuert.worker.id"] = worker_id
        return attributes

    def _worker(self, worker_id: str) -> dict[str, Any]:
        return {"queuert.worker.id": worker_id} if self._worker_ids else {}

    def worker_started(
        self, *, worker_id: str, type_names: tuple[str, ...], concurrency: int
    ) -> None:
        self._count("queuert.worker.started", self._worker(worker_id))

    def worker_stopping(self, *, worker_id: str) -> None:
        self._count("queuert.worker.stopping", self._worker(worker_id))

    def worker_stopped(self, *, worker_id: str) -> None:
        self._count("queuert.worker.stopped", self._worker(worker_id))
        with self._lock:
            self._backlog = ()  # no longer refreshed by this process

    def worker_error(self, *, worker_id: str, error: BaseException) -> None:
        attributes = {**self._worker(worker_id), "error.type": type(error).__qualname__}
        self._count("queuert.worker.error", attributes)

    def chain_created(self, *, chain_id: uuid.UUID, type_name: str) -> None:
        self._count("queuert.chain.created", {"queuert.chain.type": type_name})

    def job_created(self, *, job: JobInfo, scheduled_at: dt.datetime, blocked: bool) -> None:
        self._count("queuert.job.created", self._job(job))

    def job_blocked(self, *, job: JobInfo, blocker_chain_ids: tuple[uuid.UUID, ...]) -> None:
        self._count("queuert.job.blocked", self._job(job))

    def job_unblocked(self, *, job: JobInfo) -> None:
        self._count("queuert.job.unblocked", self._job(job))

    def job_triggered(self, *, job: JobInfo) -> None:
        self._count("queuert.job.triggered", self._job(job))

    def job_attempt_started(self, *, job: JobInfo, worker_id: str) -> None:
        self._count("queuert.job.attempt.started", self._job(job, worker_id))
        self._count(_PROCESSING, {"queuert.job.type": job.type_name})

    def job_attempt_completed(
        self, *, job: JobInfo, worker_id: str, duration: float, continued_with: str | None
    ) -> None:
        attributes = self._job(job, worker_id)
        self._count("queuert.job.attempt.completed", attributes)
        self._attempt_duration.record(
            duration, {**attributes, "queuert.attempt.result": "completed"}
        )
        self._count(_PROCESSING, {"queuert.job.type": job.type_name}, -1)

    def job_attempt_failed(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        duration: float,
        error: BaseException,
        retry_at: dt.datetime | None,
    ) -> None:
        attributes = {**self._job(job, worker_id), "error.type": type(error).__qualname__}
        self._count("queuert.job.attempt.failed", attributes)
        self._attempt_duration.record(duration, {**attributes, "queuert.attempt.result": "failed"})
        self._count(_PROCESSING, {"queuert.job.type": job.type_name}, -1)

    def job_attempt_taken_by_another_worker(self, *, job: JobInfo, worker_id: str) -> None:
        self._count("queuert.job.attempt.taken_by_another_worker", self._job(job, worker_id))

    def job_attempt_already_completed(self, *, job: JobInfo, worker_id: str) -> None:
        self._count("queuert.job.attempt.already_completed", self._job(job, worker_id))

    def job_attempt_lease_expired(self, *, job: JobInfo, worker_id: str) -> None:
        self._count("queuert.job.attempt.lease_expired", self._job(job, worker_id))

    def job_attempt_lease_renewed(
        self, *, job: JobInfo, worker_id: str, leased_until: dt.datetime
    ) -> None:
        self._count("queuert.job.attempt.lease_renewed", self._job(job, worker_id))

    def job_reaped(self, *, job: JobInfo, worker_id: str, failed: bool) -> None:
        self._count("queuert.job.reaped", self._job(job, worker_id))

    def job_completed(
        self, *, job: JobInfo, worker_id: str | None, duration: float, continued: bool
    ) -> None:
        attributes = {**self._job(job, worker_id), "queuert.job.continued": continued}
        self._count("queuert.job.completed", attributes)
        self._job_duration.record(duration, self._job(job))

    def job_failed(self, *, job: JobInfo, worker_id: str | None, error: str) -> None:
        self._count("queuert.job.failed", self._job(job, worker_id))

    def chain_completed(self, *, chain_id: uuid.UUID, type_name: str, duration: float) -> None:
        self._count("queuert.chain.completed", {"queuert.chain.type": type_name})
        self._chain_duration.record(duration, {"queuert.chain.type": type_name})

    def chain_cancelled(self, *, chain_id: uuid.UUID, type_name: str, reason: str | None) -> None:
        self._count("queuert.chain.cancelled", {"queuert.chain.type": type_name})

    def chain_deleted(self, *, chain_id: uuid.UUID, type_name: str) -> None:
        self._count("queuert.chain.deleted", {"queuert.chain.type": type_name})

    def notify_error(self, *, operation: str, error: BaseException) -> None:
        self._count("queuert.notify_adapter.error", {"queuert.adapter.operation": operation})

    def database_error(self, *, operation: str, error: BaseException) -> None:
        self._count("queuert.state_adapter.error", {"queuert.adapter.operation": operation})

    def backlog(self, *, counts: Sequence[BacklogCount]) -> None:
        with self._lock:
            self._backlog = tuple(counts)

    def _observe_backlog(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = self._backlog
        return [
            Observation(c.count, {"queuert.job.type": c.type_name, "queuert.job.state": c.state})
            for c in counts
        ]

    def _observe_lag(self, _options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = self._backlog
        return [
            Observation(c.oldest_age, {"queuert.job.type": c.type_name})
            for c in counts
            if c.state == "ready" and c.oldest_age is not None
        ]

    # --- spans ----------------------------------------------------------------------------

    def start_creation_span(
        self,
        *,
        job: JobInfo,
        chain_trace_context: str | None,
        origin_trace_context: str | None,
        blocker_trace_contexts: tuple[str | None, ...] = (),
    ) -> _Creation | None:
        if not self._traces:
            return None
        # The chains it waits for: links (their traces may be other requests').
        links = [
            Link(context, {"queuert.blocker.index": index})
            for index, stored in enumerate(blocker_trace_contexts)
            if (context := _span_context_of(stored)) is not None
        ]
        if job.id == job.chain_id:
            # A chain's first job: one span, the chain's, under the caller's current one.
            span = self._tracer.start_span(
                f"create chain.{job.chain_type_name}",
                kind=SpanKind.PRODUCER,
                attributes=_job_attributes(job),
                links=links or None,
            )
            return _Creation(span, None)
        # A continuation: a sibling of the chain's other jobs, linked to the job
        # it continued from (unless that is the chain's first, its parent anyway).
        parent = _context_of(chain_trace_context) or _context_of(origin_trace_context)
        if origin_trace_context != chain_trace_context:
            origin = _span_context_of(origin_trace_context)
            if origin is not None:
                links.insert(0, Link(origin, {"queuert.link": "continued_from"}))
        span = self._tracer.start_span(
            f"create job.{job.type_name}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=_job_attributes(job),
            links=links or None,
        )
        return _Creation(span, chain_trace_context)

    def start_attempt_span(
        self,
        *,
        job: JobInfo,
        worker_id: str,
        trace_context: str | None,
        chain_trace_context: str | None,
    ) -> _Attempt | None:
        if not self._traces:
            return None
        # A job stored without a context (created before tracing) starts a trace.
        parent = _context_of(trace_context) or otel_context.Context()
        attributes = _job_attributes(job)
        attributes["queuert.job.attempt"] = job.attempt
        attributes["queuert.worker.id"] = worker_id
        span = self._tracer.start_span(
            f"start job-attempt.{job.type_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        return _Attempt(span, job)
