"""One trace from a web request to every attempt of its chain, and the metrics beside it.

Run it:  python examples/tracing.py            (a SQLite file in a temporary directory)
         python examples/tracing.py --db URL   (e.g. a fresh PostgreSQL database)

Needs the OpenTelemetry SDK: ``pip install 'queuert_sa[prometheus]'`` (or
``opentelemetry-sdk`` beside the ``otel`` extra).

A pretend ``POST /orders`` request span starts a ``place-order`` chain in the
request's transaction. Its handler continues the chain with ``charge-card``,
which continues with ``send-receipt``, whose first attempt fails (the mail
provider times out) and whose second completes the chain. The worker runs in this process for brevity; the trace looks the
same when it runs in another, because each job row stores its span's W3C
``traceparent``. The script prints the spans as a tree (kind, status) and the
metrics the run recorded. An exporter (OTLP, Jaeger, Tempo, ...) would send
the same spans to your tracing backend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any, TypedDict

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.otel import OtelObserver


class OrderIn(TypedDict):
    order_id: int


job_types = q.JobTypes()
place_order = job_types.entry("place-order", input=OrderIn, continues_with=["charge-card"])
charge_card = job_types.define("charge-card", input=OrderIn, continues_with=["send-receipt"])
send_receipt = job_types.define("send-receipt", input=OrderIn, output=dict)


def tree(spans: list[ReadableSpan]) -> list[str]:
    """The spans as an indented tree, children in start order."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None else None
        by_parent.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in by_parent.get(parent, []):
            assert span.context is not None
            status = span.status.status_code.name
            kind = span.kind.name
            links = f", linked to {len(span.links)}" if span.links else ""
            events = f", events: {', '.join(e.name for e in span.events)}" if span.events else ""
            lines.append(f"{'  ' * depth}{span.name}  [{kind}, {status}{links}{events}]")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


def metric_totals(reader: InMemoryMetricReader) -> dict[str, float]:
    """Each counter's total and each histogram's count, by metric name."""
    totals: dict[str, float] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value: Any = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[union-attr]
                    totals[metric.name] = totals.get(metric.name, 0) + value
    return totals


def run(engine: Engine) -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    observer = OtelObserver(tracer_provider=tracer_provider, meter_provider=meter_provider)
    queuert = q.Queuert(engine, job_types, observers=[observer])
    q.metadata.create_all(engine)

    tracer = tracer_provider.get_tracer("shop")
    with tracer.start_as_current_span("POST /orders"), Session(engine) as s, s.begin():
        queuert.start_chain(s, place_order, {"order_id": 7})

    worker = queuert.worker(backoff=q.Backoff(initial=dt.timedelta(0), jitter=0))

    @worker.handler(place_order)
    def place(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.continue_with(charge_card, {"order_id": attempt.input["order_id"]})

    @worker.handler(charge_card)
    def charge(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.continue_with(send_receipt, {"order_id": attempt.input["order_id"]})

    @worker.handler(send_receipt)
    def receipt(attempt: q.Attempt[OrderIn, dict[str, Any]]) -> q.Outcome:
        if attempt.job.attempt == 1:
            raise TimeoutError("the mail provider timed out")
        return attempt.complete({"sent": True})

    while worker.drain():
        pass

    print("trace:")
    for line in tree(list(spans.get_finished_spans())):
        print(f"  {line}")
    print("metrics:")
    totals = metric_totals(reader)
    for name in (
        "queuert.chain.created",
        "queuert.job.created",
        "queuert.job.attempt.started",
        "queuert.job.attempt.completed",
        "queuert.job.attempt.failed",
        "queuert.job.attempt.duration",
        "queuert.chain.completed",
    ):
        print(f"  {name} = {totals.get(name, 0):g}")
    tracer_provider.shutdown()
    meter_provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temp directory)")
    args = parser.parse_args()
    if args.db:
        engine = create_engine(args.db)
        run(engine)
        engine.dispose()
        return
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'tracing.db'}")
        run(engine)
        engine.dispose()


if __name__ == "__main__":
    main()
