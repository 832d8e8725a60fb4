"""max_running across processes: three worker processes of eight slots, 200 jobs of a type
limited to three at once, one process SIGKILLed while it runs some; the spans the handlers
wrote (committed with their jobs) never overlap more than three deep, and the other type
keeps flowing meanwhile."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, Span, job_types, most_at_once, staged_work, work
from .conftest import Db
from .test_processes import output, processes, spawn_worker, wait_for

__all__ = ["processes"]  # the fixture

pytestmark = pytest.mark.slow


def test_three_processes_keep_a_type_to_three_at_once_through_a_sigkill(
    pg: Db, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    # PostgreSQL only: on SQLite an atomic attempt holds the one writer lock, so attempts
    # never overlap there anyway (tests/test_limits.py covers SQLite's staged attempts).
    db = pg
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, [work({"n": i, "sleep": 0.05}) for i in range(200)])
        client.start_chains(s, [staged_work({"n": i, "sleep": 0.0}) for i in range(100)])
    for _ in range(3):
        processes.append(spawn_worker(db, tmp_path, concurrency=8, QUEUERT_APP_MAX_RUNNING="3"))

    def done(type_name: str) -> int:
        with Session(db.engine) as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.type_name == type_name, Job.status == "completed")
                )
                or 0
            )

    wait_for(lambda: done("work") >= 30, 60, "30 limited jobs to complete")
    processes[0].send_signal(signal.SIGKILL)  # mid-attempt: its slot locks go with its sessions
    assert processes[0].wait(10) == -signal.SIGKILL
    # The other type is not held up behind the limit: all done while the limited one runs.
    assert done("staged-work") == 100
    wait_for(lambda: done("work") == 200, 120, "every limited job to complete")
    for proc in processes[1:]:
        proc.send_signal(signal.SIGTERM)
    for proc in processes[1:]:
        assert proc.wait(30) == 0, output(proc)

    with Session(db.engine) as s:
        spans = [(b, e) for b, e in s.execute(select(Span.started, Span.ended)).all()]
        effects = s.scalar(select(func.count()).select_from(Effect).where(Effect.label == "work"))
    assert len(spans) == 200  # one committed run per job: none twice, none lost
    assert effects == 200
    assert most_at_once(spans) == 3


def test_three_processes_keep_a_rate_of_twenty_a_second_over_200_jobs(
    pg: Db, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    client = q.Queuert(pg.engine, job_types)
    with Session(pg.engine) as s, s.begin():
        client.start_chains(s, [work({"n": i, "sleep": 0.0}) for i in range(200)])
    for _ in range(3):
        processes.append(spawn_worker(pg, tmp_path, concurrency=8, QUEUERT_APP_RATE="20"))

    def done() -> int:
        with Session(pg.engine) as s:
            return s.scalar(select(func.count()).select_from(Span)) or 0

    wait_for(lambda: done() == 200, 60, "every job to run")
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        assert proc.wait(30) == 0, output(proc)
    with Session(pg.engine) as s:
        begun = sorted(s.scalars(select(Span.started)).all())
        attempts = set(s.scalars(select(Job.attempt)).all())
    took = begun[-1] - begun[0]
    # One token every 50 ms fleet-wide: 199 gaps, 9.95 s at the least. A token taken late
    # is not made up for (burst=1), so a loaded machine takes a little longer.
    assert 9.9 <= took <= 12.0, took
    # In no second did more than the rate start (a handler starts a few ms after its token).
    most = max(sum(1 for t in begun if first <= t < first + 1.0) for first in begun)
    assert most <= 20 + 2, most
    assert attempts == {1}  # delayed, never failed or retried
    print(f"200 jobs at 20/s across 3 processes took {took:.2f} s")
