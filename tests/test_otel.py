"""OpenTelemetry through ``queuert_sa.otel.OtelObserver``, with the real SDK's in-memory exporters.

What an operator relies on: a chain started inside a request's span is one
trace (request -> chain -> each job -> each attempt), across worker threads,
asyncio and processes; failed attempts are ERROR spans and counted with a
duration; a rolled-back start records nothing; the backlog gauges show the
table.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.otel import DURATION_BUCKETS, OtelObserver

from .app import WorkIn, work
from .conftest import Db
from .test_observers import blocking_kit, fetch, merge, observe, two_step_handlers, wait_for
from .test_worker import new_user_chain
from .workers import Kit

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["blocking_kit"]  # a fixture, used by name


class Otel:
    """An SDK tracer and meter provider with in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("tests")

    def observer(self, **options: Any) -> OtelObserver:
        return OtelObserver(self.tracer_provider, self.meter_provider, **options)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        (found,) = [s for s in self.finished() if s.name == name]
        return found

    def points(self, name: str) -> list[Any]:
        """The data points of one metric in a fresh collection."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **attributes: Any) -> float:
        return sum(
            p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )

    def close(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    providers = Otel()
    yield providers
    providers.close()


def test_a_chain_started_in_a_request_is_one_trace_down_to_every_attempt(
    kit: Kit, otel: Otel
) -> None:
    observe(kit, otel.observer())
    with otel.tracer.start_as_current_span("POST /signup") as request:
        chain = new_user_chain(kit.client, kit.db)
    worker = kit.worker()
    two_step_handlers(worker)
    assert worker.drain() == 2
    spans = {s.name: s for s in otel.finished()}
    assert set(spans) == {
        "POST /signup",
        "create chain.signup",
        "start job-attempt.signup",
        "create job.greet",
        "start job-attempt.greet",
    }
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.values()} == {trace_id}

    def parent(name: str) -> str:
        parent_context = spans[name].parent
        assert parent_context is not None, name
        (found,) = [s.name for s in spans.values() if s.context.span_id == parent_context.span_id]
        return found

    # The chain's span is the request's child and its first job's creation.
    assert parent("create chain.signup") == "POST /signup"
    assert parent("start job-attempt.signup") == "create chain.signup"
    # Continuations are siblings under the chain (a ten-step chain is not ten deep).
    assert parent("create job.greet") == "create chain.signup"
    assert parent("start job-attempt.greet") == "create job.greet"
    (ended,) = spans["start job-attempt.greet"].events
    assert ended.name == "chain completed"
    assert spans["create chain.signup"].kind == SpanKind.PRODUCER
    attempt = spans["start job-attempt.signup"]
    assert attempt.kind == SpanKind.CONSUMER
    assert attempt.status.status_code == StatusCode.OK
    assert attempt.attributes is not None
    assert attempt.attributes["queuert.job.id"] == str(chain.id)
    assert attempt.attributes["queuert.job.attempt"] == 1
    assert attempt.attributes["queuert.attempt.result"] == "completed"
    assert attempt.attributes["queuert.continued_with.job_type"] == "greet"
    # The contexts are stored as W3C traceparent strings on the rows.
    job = kit.client.get_job(chain.id)
    assert job.trace_context is not None
    chain_span = spans["create chain.signup"].context
    assert job.trace_context.startswith(f"00-{trace_id:032x}-{chain_span.span_id:016x}-")
    assert job.chain_trace_context == job.trace_context
    (second,) = [j for j in kit.client.list_chain_jobs(chain.id).items if j.chain_index == 1]
    assert second.chain_trace_context == job.chain_trace_context
    assert second.trace_context is not None
    assert f"{spans['create job.greet'].context.span_id:016x}" in second.trace_context
    # Metrics of the same run.
    assert otel.total("queuert.job.created") == 2
    assert otel.total("queuert.chain.created", **{"queuert.chain.type": "signup"}) == 1
    assert otel.total("queuert.job.attempt.completed", **{"queuert.job.type": "greet"}) == 1
    assert otel.total("queuert.job.completed", **{"queuert.job.continued": True}) == 1
    assert otel.total("queuert.chain.completed") == 1
    assert otel.total("queuert.job_type.processing") == 0
    (chain_duration,) = otel.points("queuert.chain.duration")
    assert chain_duration.count == 1
    assert list(chain_duration.explicit_bounds) == list(DURATION_BUCKETS)


def test_the_handlers_own_spans_are_children_of_its_attempt(kit: Kit, otel: Otel) -> None:
    observe(kit, otel.observer())
    with Session(kit.db.engine) as s, s.begin():
        kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
    worker = kit.worker()

    @worker.handler(work, **({"on_thread": True} if kit.is_async else {}))
    def traced(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with otel.tracer.start_as_current_span("call the mail provider"):
            pass
        return attempt.complete(1)

    assert worker.drain() == 1
    inner = otel.span("call the mail provider")
    attempt = otel.span("start job-attempt.work")
    assert inner.parent is not None
    assert inner.parent.span_id == attempt.context.span_id


def test_a_failing_attempt_is_an_error_span_and_a_failed_count_with_duration(
    kit: Kit, otel: Otel
) -> None:
    observe(kit, otel.observer())
    with Session(kit.db.engine) as s, s.begin():
        kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
    worker = kit.worker()

    @worker.handler(work, max_attempts=1)
    def fails(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise ValueError("the provider said no")

    assert worker.drain() == 1
    span = otel.span("start job-attempt.work")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ValueError: the provider said no"
    assert span.attributes is not None
    assert span.attributes["queuert.attempt.result"] == "failed"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert otel.total("queuert.job.attempt.failed", **{"error.type": "ValueError"}) == 1
    assert otel.total("queuert.job.failed", **{"queuert.job.type": "work"}) == 1
    (failed,) = [
        p
        for p in otel.points("queuert.job.attempt.duration")
        if p.attributes["queuert.attempt.result"] == "failed"
    ]
    assert failed.count == 1
    assert failed.sum >= 0
    # No worker id by default: a restart must not start new series.
    assert all(
        "queuert.worker.id" not in p.attributes for p in otel.points("queuert.job.attempt.failed")
    )


def test_a_rolled_back_start_records_no_metric_and_no_span(kit: Kit, otel: Otel) -> None:
    observe(kit, otel.observer())
    with Session(kit.db.engine) as s:
        kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
        s.rollback()
    assert otel.total("queuert.job.created") == 0
    assert otel.total("queuert.chain.created") == 0
    assert otel.finished() == []


def test_backlog_gauges_report_a_seeded_table(kit: Kit, otel: Otel) -> None:
    observe(kit, otel.observer())
    now = dt.datetime.now(dt.UTC)
    with Session(kit.db.engine) as s, s.begin():
        kit.client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(4)])
        kit.client.start_chains(
            s, [work({"n": i, "sleep": 0}, run_in=dt.timedelta(hours=1)) for i in range(2)]
        )
    worker = kit.worker(backlog_interval=3600)

    @worker.handler(work)
    def never_runs(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(0)

    worker.start()
    try:
        wait_for(lambda: otel.points("queuert.job_type.backlog"))
        points = otel.points("queuert.job_type.backlog")
        (lag,) = otel.points("queuert.job_type.oldest_ready_age")
    finally:
        worker.stop()
    backlog = {
        p.attributes["queuert.job.state"]: p.value
        for p in points
        if p.attributes["queuert.job.type"] == "work"
    }
    # Counted before the worker's first acquisition.
    assert backlog == {"ready": 4, "scheduled": 2, "blocked": 0, "running": 0}
    # A stopped worker no longer refreshes the count: its gauges go.
    assert otel.points("queuert.job_type.backlog") == []
    waited = (dt.datetime.now(dt.UTC) - now).total_seconds()
    assert 0 <= lag.value <= waited + 1


def test_an_async_producer_parents_the_chain_to_its_current_span(
    tmp_path: Path, otel: Otel
) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from .app import job_types

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        aqueuert = q.AsyncQueuert(engine, job_types, observers=[otel.observer()])
        async with engine.begin() as conn:
            await conn.run_sync(q.metadata.create_all)
        with otel.tracer.start_as_current_span("POST /async"):
            async with AsyncSession(engine) as s, s.begin():
                await aqueuert.start_chain(s, work, {"n": 1, "sleep": 0})
        await engine.dispose()

    asyncio.run(main())
    request = otel.span("POST /async")
    chain = otel.span("create chain.work")
    assert chain.parent is not None
    assert chain.parent.span_id == request.context.span_id


WORKER_SCRIPT = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
import queuert_sa as q
from queuert_sa.otel import OtelObserver
from sqlalchemy import create_engine
from tests.app import work

out = open(sys.argv[2], "w")
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
    out=out, formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\\n")))
engine = create_engine(sys.argv[1])
from tests.app import job_types
queuert = q.Queuert(engine, job_types, observers=[OtelObserver(tracer_provider=provider)])
worker = queuert.worker(handle_signals="never")
worker.handler(work)(lambda attempt: attempt.complete(attempt.input["n"]))
assert worker.drain() == 1
provider.shutdown()
out.close()
"""


def test_the_trace_crosses_into_a_worker_process(db: Db, otel: Otel, tmp_path: Path) -> None:
    from .app import job_types

    client = q.Queuert(db.engine, job_types, observers=[otel.observer()])
    with (
        otel.tracer.start_as_current_span("POST /work") as request,
        Session(db.engine) as s,
        s.begin(),
    ):
        client.start_chain(s, work, {"n": 5, "sleep": 0})
    db.engine.dispose()  # SQLite: let the other process write
    out = tmp_path / "spans.jsonl"
    subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, db.url, str(out)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    spans = [json.loads(line) for line in out.read_text().splitlines()]
    (attempt,) = [s for s in spans if s["name"] == "start job-attempt.work"]
    created = otel.span("create chain.work")
    assert attempt["context"]["trace_id"] == f"0x{request.get_span_context().trace_id:032x}"
    assert attempt["parent_id"] == f"0x{created.context.span_id:016x}"
    assert attempt["kind"] == "SpanKind.CONSUMER"
    time.sleep(0)  # the producer's spans are already exported (SimpleSpanProcessor)


def test_a_failed_commit_reports_a_failed_attempt_and_no_completion(kit: Kit, otel: Otel) -> None:
    """The handler's outcome was written, then COMMIT failed: observers must not hear
    of a completion that never happened, and must hear of the failure."""
    from sqlalchemy import text

    recorder = q.RecordingObserver()
    observe(kit, otel.observer())
    observe(kit, recorder)
    with kit.db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS deferred_child"))
        conn.execute(
            text(
                "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                "REFERENCES app_user(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    with Session(kit.db.engine) as s, s.begin():
        chain = kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
    worker = kit.worker()

    @worker.handler(work, max_attempts=5)
    def orphan(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        # Checked only at COMMIT: the outcome is written, the COMMIT fails.
        attempt.session.execute(text("INSERT INTO deferred_child VALUES (1, 999)"))
        return attempt.complete(1)

    try:
        assert worker.drain() == 1
    finally:
        with kit.db.engine.begin() as conn:
            conn.execute(text("DROP TABLE deferred_child"))
    assert recorder.of("job_completed") == []
    assert recorder.of("chain_completed") == []
    (failed,) = recorder.of("job_attempt_failed")
    assert failed["job"].id == chain.id
    assert failed["retry_at"] is not None
    assert otel.total("queuert.job.completed") == 0
    assert otel.total("queuert.job.attempt.failed") == 1
    assert otel.span("start job-attempt.work").status.status_code == StatusCode.ERROR
    assert otel.span("start job-attempt.work").events[-1].name == "exception"


def test_a_job_waiting_for_other_chains_links_to_their_traces(
    blocking_kit: Kit, otel: Otel
) -> None:
    kit = blocking_kit
    observe(kit, otel.observer())
    with otel.tracer.start_as_current_span("POST /fetch"), Session(kit.db.engine) as s, s.begin():
        blocker = kit.client.start_chain(s, fetch, {"url": "a"})
    with otel.tracer.start_as_current_span("POST /merge"), Session(kit.db.engine) as s, s.begin():
        kit.client.start_chain(s, merge, {"url": "m"}, blockers=[blocker])
    merge_job = otel.span("create chain.merge")
    (link,) = merge_job.links
    assert link.context.span_id == otel.span("create chain.fetch").context.span_id
    assert link.attributes is not None
    assert link.attributes["queuert.blocker.index"] == 0
    # Its own trace is its request's: the blocker's is another one, linked.
    assert merge_job.context.trace_id == otel.span("POST /merge").context.trace_id
    assert link.context.trace_id == otel.span("POST /fetch").context.trace_id
