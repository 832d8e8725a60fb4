"""The observer conformance test: one scenario that raises every kind of event, run
against each shipped observer (the recording twin and OpenTelemetry's), on both workers
and both engines. Each must take every event without an error, and show what a user of
that observer would look at."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q

from .test_observers import Fetch, blocking_kit, fetch, merge, observe, wait_for
from .test_otel import Otel, otel
from .workers import Kit

__all__ = ["blocking_kit", "otel"]  # fixtures, used by name

#: What the scenario makes happen, as event names.
EVENTS = {
    "chain_created",
    "job_created",
    "job_blocked",
    "job_unblocked",
    "job_triggered",
    "job_attempt_started",
    "job_attempt_completed",
    "job_attempt_failed",
    "job_completed",
    "job_failed",
    "chain_completed",
    "chain_cancelled",
    "chain_deleted",
    "worker_started",
    "worker_stopping",
    "worker_stopped",
    "backlog",
}

#: The same, as the OpenTelemetry metrics they feed.
METRICS = {
    "queuert.chain.created",
    "queuert.job.created",
    "queuert.job.blocked",
    "queuert.job.unblocked",
    "queuert.job.triggered",
    "queuert.job.attempt.started",
    "queuert.job.attempt.completed",
    "queuert.job.attempt.failed",
    "queuert.job.attempt.duration",
    "queuert.job.completed",
    "queuert.job.duration",
    "queuert.job.failed",
    "queuert.chain.completed",
    "queuert.chain.duration",
    "queuert.chain.cancelled",
    "queuert.chain.deleted",
    "queuert.worker.started",
    "queuert.worker.stopping",
    "queuert.worker.stopped",
    "queuert.job_type.processing",
}


def scenario(kit: Kit, observer: q.Observer) -> None:
    observe(kit, observer)
    with Session(kit.db.engine) as s, s.begin():
        blocker = kit.client.start_chain(s, fetch, {"url": "ok"})
        waiting = kit.client.start_chain(s, merge, {"url": "m"}, blockers=[blocker])
        kit.client.start_chain(s, fetch, {"url": "fails"})
        later = kit.client.start_chain(s, fetch, {"url": "later"}, run_in=dt.timedelta(hours=1))
        doomed = kit.client.start_chain(s, merge, {"url": "d"}, blockers=[later])
    with Session(kit.db.engine) as s, s.begin():
        kit.client.trigger_job(s, later.id)
    worker = kit.worker(backlog_interval=0.01, poll_interval=0.05)

    @worker.handler(fetch, max_attempts=1)
    def get(attempt: q.Attempt[Fetch, int]) -> q.Outcome:
        if attempt.input["url"] == "fails":
            raise ConnectionError("unreachable")
        return attempt.complete(1)

    @worker.handler(merge)
    def combine(attempt: q.Attempt[Fetch, int]) -> q.Outcome:
        return attempt.complete(2)

    worker.start()
    try:
        wait_for(lambda: kit.client.get_chain(waiting.id).is_completed)
        wait_for(lambda: kit.client.get_chain(doomed.id).is_completed)
    finally:
        assert worker.stop() is True
    with Session(kit.db.engine) as s, s.begin():
        cancel = kit.client.start_chain(s, merge, {"url": "c"}, blockers=[blocker])
    with Session(kit.db.engine) as s, s.begin():
        kit.client.delete_chains(s, [cancel.id])
    with Session(kit.db.engine) as s, s.begin():
        again = kit.client.start_chain(s, fetch, {"url": "x"}, run_in=dt.timedelta(hours=1))
    with Session(kit.db.engine) as s, s.begin():
        kit.client.cancel_chain(s, again.id)


@pytest.mark.parametrize("which", ["recording", "otel"])
def test_every_event_reaches_each_shipped_observer(
    blocking_kit: Kit, otel: Otel, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    observer: Any = q.RecordingObserver() if which == "recording" else otel.observer()
    with caplog.at_level(logging.ERROR, logger="queuert_sa.observers"):
        scenario(blocking_kit, observer)
    assert [r.getMessage() for r in caplog.records if r.name == "queuert_sa.observers"] == []
    if which == "recording":
        assert set(observer.names()) >= EVENTS, EVENTS - set(observer.names())
        return
    data = otel.reader.get_metrics_data()
    assert data is not None
    seen = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.data.data_points
    }
    assert seen >= METRICS, METRICS - seen
    assert otel.total("queuert.job.failed") == 1
    assert otel.total("queuert.job.attempt.failed", **{"error.type": "ConnectionError"}) == 1
    names = {s.name for s in otel.finished()}
    assert {"create chain.fetch", "create chain.merge", "start job-attempt.merge"} <= names
