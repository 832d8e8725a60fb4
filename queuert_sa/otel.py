"""OpenTelemetry metrics and traces for queuert_sa (extra ``otel``: ``opentelemetry-api``).

::

    from queuert_sa.otel import OtelObserver

    queuert = q.Queuert(engine, job_types, observers=[OtelObserver()])

Uses the global tracer and meter providers unless given others; configure the
SDK and its exporters as usual (``queuert-sa worker --metrics-port`` does it
for Prometheus). What it records:

* **Counters** (``queuert.job.created``, ``queuert.job.attempt.started`` /
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
  when ``start_chain`` runs, e.g. the HTTP request's) with ``create
  job.{type}`` under it; each continuation's ``create job.{type}`` under the
  chain's span, linked to the job it continued from; ``start
  job-attempt.{type}`` (CONSUMER) under its job's span, current while the
  handler runs, ERROR with the exception when the attempt fails; ``complete
  chain.{type}`` when the chain ends. Contexts are stored in the job rows as
  W3C ``traceparent`` strings, so one trace follows a chain across processes.
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
        "messaging.destination.name": job.type_name,
        "queuert.job.id": str(job.id),
        "queuert.job.type": job.type_name,
        "queuert.chain.id": str(job.chain_id),
        "queuert.chain.type": job.chain_type_name,
    }


class _Creation:
    """The spans of one job's creation, ended after its transaction commits."""

    __slots__ = ("_spans", "chain_trace_context", "trace_context")

    def __init__(self, spans: list[trace.Span], chain_trace_context: str | None) -> None:
        self._spans = spans
        self.trace_context = _traceparent(spans[-1])
        self.chain_trace_context = chain_trace_context

    def end(self) -> None:
        for span in reversed(self._spans):
            span.end()


class _Attempt:
    """The span of one attempt."""

    __slots__ = ("_chain_link", "_job", "_span", "_tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        span: trace.Span,
        job: JobInfo,
        chain_link: trace.SpanContext | None,
    ) -> None:
        self._tracer = tracer
        self._span = span
        self._job = job
        self._chain_link = chain_link

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
            span.set_status(Status(StatusCode.OK))
        else:
            span.set_attribute("queuert.attempt.result", "failed")
            span.set_attribute("error.type", type(error).__qualname__)
            if retry_at is not None:
                span.set_attribute("queuert.rescheduled_at", retry_at.isoformat())
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        if chain_completed:
            job = self._job
            done = self._tracer.start_span(
                f"complete chain.{job.chain_type_name}",
                context=trace.set_span_in_context(span),
                kind=SpanKind.CONSUMER,
                attributes={
                    "queuert.chain.id": str(job.chain_id),
                    "queuert.chain.type": job.chain_type_name,
                },
                links=[Link(self._chain_link)] if self._chain_link is not None else None,
            )
            done.end()
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
        self._counters = {
            name: meter.create_counter(name, unit=_unit(name), description=description)
            for name, description in _COUNTERS.items()
        }

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
        self._processing = meter.create_up_down_counter(
            "queuert.job_type.processing", unit="{attempt}", description="Attempts running now"
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

    def _count(self, name: str, attributes: dict[str, Any]) -> None:
        self._counters[name].add(1, attributes)

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
        self._processing.add(1, {"queuert.job.type": job.type_name})

    def job_attempt_completed(
        self, *, job: JobInfo, worker_id: str, duration: float, continued_with: str | None
    ) -> None:
        attributes = self._job(job, worker_id)
        self._count("queuert.job.attempt.completed", attributes)
        self._attempt_duration.record(
            duration, {**attributes, "queuert.attempt.result": "completed"}
        )
        self._processing.add(-1, {"queuert.job.type": job.type_name})

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
        self._processing.add(-1, {"queuert.job.type": job.type_name})

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
    ) -> _Creation | None:
        if not self._traces:
            return None
        attributes = _job_attributes(job)
        if job.id == job.chain_id:
            # A chain's first job: the chain's span, under the caller's current one.
            chain = self._tracer.start_span(
                f"create chain.{job.chain_type_name}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "queuert.chain.id": str(job.chain_id),
                    "queuert.chain.type": job.chain_type_name,
                },
            )
            first = self._tracer.start_span(
                f"create job.{job.type_name}",
                context=trace.set_span_in_context(chain),
                kind=SpanKind.PRODUCER,
                attributes=attributes,
            )
            return _Creation([chain, first], _traceparent(chain))
        # A continuation: a sibling of the chain's other jobs, linked to its origin.
        parent = _context_of(chain_trace_context) or _context_of(origin_trace_context)
        origin = _span_context_of(origin_trace_context)
        span = self._tracer.start_span(
            f"create job.{job.type_name}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=[Link(origin)] if origin is not None else None,
        )
        return _Creation([span], chain_trace_context)

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
        span = self._tracer.start_span(
            f"start job-attempt.{job.type_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **_job_attributes(job),
                "messaging.operation.type": "process",
                "queuert.job.attempt": job.attempt,
                "queuert.worker.id": worker_id,
            },
        )
        return _Attempt(self._tracer, span, job, _span_context_of(chain_trace_context))
