"""Observers: a BaseObserver subclass overriding events, the recording twin, OtelObserver."""

from __future__ import annotations

import datetime as dt
from typing import Any, assert_type

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

import queuert_sa as q
from queuert_sa.observers import JobInfo, ObservedEvent
from queuert_sa.otel import OtelObserver

job_types = q.JobTypes()


class SlowAttempts(q.BaseObserver):
    def job_attempt_completed(
        self, *, job: JobInfo, worker_id: str, duration: float, continued_with: str | None
    ) -> None:
        assert_type(job.type_name, str)
        assert_type(job.attempt, int)


class Wrong(q.BaseObserver):
    def job_attempt_completed(self, *, job: JobInfo) -> None:  # expect-error
        pass


def configure(engine: Engine, aengine: AsyncEngine) -> None:
    recorder = q.RecordingObserver()
    queuert = q.Queuert(engine, job_types, observers=[SlowAttempts(), recorder, OtelObserver()])
    q.AsyncQueuert(aengine, job_types, observers=[OtelObserver(worker_id_attribute=True)])
    queuert.add_observer(recorder)
    assert_type(queuert.observers, tuple[q.Observer, ...])
    assert_type(recorder.names(), list[str])
    assert_type(recorder.of("job_created"), list[ObservedEvent])
    assert_type(recorder.of("job_created")[0]["job"], Any)
    queuert.worker(backlog_interval=30)
    queuert.worker(backlog_interval=dt.timedelta(minutes=1))
    queuert.worker(backlog_interval=None)

    # Wrong arguments.
    q.Queuert(engine, job_types, observers=SlowAttempts())  # expect-error
    queuert.worker(backlog_interval="15s")  # expect-error
    OtelObserver(worker_id_attribute="yes")  # expect-error
