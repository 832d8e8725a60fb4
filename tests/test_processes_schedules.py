"""A recurring schedule kept by three worker processes, one of them SIGKILLed halfway:
exactly one chain per tick, every tick run, each run's write committed once."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from queuert_sa.models import Job

from .app import Effect
from .conftest import Db
from .test_processes import output, processes, spawn_worker, wait_for

__all__ = ["processes"]  # the fixture

pytestmark = pytest.mark.slow


def tick_of(key: str) -> dt.datetime:
    """The tick a ``schedule:beat:<UTC ISO>`` deduplication key names."""
    return dt.datetime.fromisoformat(key.removeprefix("schedule:beat:"))


def test_three_processes_one_chain_per_tick_through_a_sigkill(
    db: Db, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    for _ in range(3):
        processes.append(spawn_worker(db, tmp_path, concurrency=2, QUEUERT_APP_SCHEDULE_EVERY="1"))

    def first_tick() -> dt.datetime | None:
        with Session(db.engine) as s:
            key = s.scalar(select(func.min(Job.deduplication_key)))
        return None if key is None else tick_of(key)

    wait_for(lambda: first_tick() is not None, 30, "a worker to start the first tick")
    started = first_tick()
    assert started is not None
    time.sleep(5)
    processes[0].send_signal(signal.SIGKILL)
    assert processes[0].wait(10) == -signal.SIGKILL
    time.sleep(5)
    for proc in processes[1:]:
        proc.send_signal(signal.SIGTERM)
    for proc in processes[1:]:
        assert proc.wait(30) == 0, output(proc)
    ended = dt.datetime.now(dt.UTC)

    with Session(db.engine) as s:
        rows = s.execute(
            select(Job.id, Job.deduplication_key, Job.scheduled_at, Job.status).where(
                Job.deduplication_key.like("schedule:beat:%")
            )
        ).all()
        effects = Counter(s.scalars(select(Effect.job_id)).all())
    per_key = Counter(key for _, key, _, _ in rows)
    assert max(per_key.values()) == 1, [k for k, n in per_key.items() if n > 1]
    # Every whole second from shortly after the start to shortly before the end has its
    # chain, completed, its handler's write committed exactly once.
    first = started
    expected = [
        first + dt.timedelta(seconds=i) for i in range(int((ended - first).total_seconds()) - 1)
    ]
    assert len(expected) >= 7
    # The tick is in the key: a tick started late (a process still starting) is due at once.
    by_tick = {tick_of(key): (job_id, status) for job_id, key, _, status in rows}
    missing = [t.isoformat() for t in expected if t not in by_tick]
    assert missing == []
    for tick in expected:
        job_id, status = by_tick[tick]
        assert status == "completed", (tick, status)
        assert effects[str(job_id)] == 1, tick
