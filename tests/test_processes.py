"""Worker processes: crash recovery (SIGKILL) and no double processing across processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, build_worker, job_types, staged_work, work
from .conftest import Db

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


#: The entry point of each kind of worker process (``tests/app.py``).
ENTRY_POINTS = {"thread": "run_from_env", "async": "run_async_atomic_from_env"}


def spawn_worker(
    db: Db,
    tmp_path: Path,
    *,
    concurrency: int = 1,
    batch: int = 1,
    kind: str = "thread",
    **extra_env: str,
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **extra_env,
        "QUEUERT_APP_URL": db.url,
        "QUEUERT_APP_CONCURRENCY": str(concurrency),
        "QUEUERT_APP_BATCH": str(batch),
        "QUEUERT_APP_STARTED_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    # A file, not a pipe: a worker logs a line per job (INFO), and a pipe nobody
    # reads until the end would fill and block it.
    log = tmp_path / f"worker-{len(LOGS)}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import tests.app as a; a.{ENTRY_POINTS[kind]}()"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    LOGS[proc.pid] = log
    return proc


#: Each spawned worker's log file, by process id.
LOGS: dict[int, Path] = {}


def output(proc: subprocess.Popen[str]) -> str:
    """What a spawned worker wrote so far."""
    return LOGS[proc.pid].read_text()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def count(db: Db, stmt: object) -> int:
    with Session(db.engine) as s:
        return s.execute(stmt).scalar_one()  # type: ignore[call-overload,no-any-return]


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_sigkill_mid_handler_job_returns_and_completes_exactly_once(
    db: Db, tmp_path: Path, processes: list[subprocess.Popen[str]], kind: str
) -> None:
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 5, "sleep": 60})

    proc = spawn_worker(db, tmp_path, kind=kind)
    processes.append(proc)
    marker = tmp_path / str(chain.id)
    wait_for(marker.exists, 30, "the handler to start in the worker process")

    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    # The database rolled the attempt back: the job is pending and due again,
    # and the handler's business row never existed.
    job = client.get_job(chain.id)
    assert job.status == "pending"
    assert job.attempt == 0
    assert count(db, select(func.count()).select_from(Effect)) == 0

    rescuer = build_worker(db.url, sleep_scale=0)
    try:
        assert rescuer.drain() == 1
        assert rescuer.drain() == 0
    finally:
        rescuer.client.engine.dispose()
    done = client.get_chain(chain.id)
    assert (done.status, done.output) == ("completed", 10)
    assert count(db, select(func.count()).select_from(Effect)) == 1


def test_sigkill_on_the_last_allowed_attempt(
    db: Db, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """With ``max_attempts=1``: an atomic attempt killed mid-handler is rolled back whole,
    its attempt with it, so the job is not failed and runs once more, exactly once; a staged
    attempt killed in its external step had committed its attempt, so once its lease lapses
    the reaper fails the job (no attempt left) and nothing of it is written."""
    client = q.Queuert(db.engine, job_types)
    chains = []
    for job_type, n in ((staged_work, 6), (work, 5)):  # one at a time: SQLite's one writer
        with Session(db.engine) as s, s.begin():
            chains.append(chain := client.start_chain(s, job_type, {"n": n, "sleep": 60}))
        proc = spawn_worker(db, tmp_path, QUEUERT_APP_MAX_ATTEMPTS="1", QUEUERT_APP_LEASE_MS="1000")
        processes.append(proc)
        marker = tmp_path / str(chain.id)
        wait_for(marker.exists, 30, "the handler to start in the worker process")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    staged, atomic = chains

    rescuer = build_worker(db.url, sleep_scale=0)
    rescuer.handlers = {
        name: dataclasses.replace(r, max_attempts=1) for name, r in rescuer.handlers.items()
    }
    try:
        wait_for(
            lambda: rescuer.drain() == 0 and client.get_job(staged.id).status == "failed",
            30,
            "the staged job's lease to lapse and the reaper to fail it",
        )
    finally:
        rescuer.client.engine.dispose()
    done = client.get_chain(atomic.id)
    assert (done.status, done.output) == ("completed", 10)
    failed = client.get_job(staged.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.last_attempt_error is not None
    assert "lease of attempt 1 expired" in failed.last_attempt_error
    with Session(db.engine) as s:
        labels = list(s.scalars(select(Effect.label)))
    assert labels == ["work"]  # the atomic job once; the staged one never


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_sigkill_of_a_worker_holding_a_group_keeps_nothing_and_loses_nothing(
    db: Db, tmp_path: Path, processes: list[subprocess.Popen[str]], kind: str
) -> None:
    """Group commit (batch=): the worker is killed while the group's handlers run, some
    done, one in flight. Every job of the group is pending, none of their writes exist;
    a rescuer completes each exactly once."""
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        quick = client.start_chains(s, [q.ChainStart(work, {"n": i, "sleep": 0}) for i in range(4)])
    with Session(db.engine) as s, s.begin():
        slow = client.start_chain(s, work, {"n": 9, "sleep": 60})  # the last of the group

    proc = spawn_worker(db, tmp_path, batch=10, kind=kind)
    processes.append(proc)
    marker = tmp_path / str(slow.id)
    wait_for(marker.exists, 30, "the group's last handler to start in the worker process")
    # The four before it ran in the same transaction, their Effect rows flushed.
    assert all((tmp_path / str(c.id)).exists() for c in quick)

    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    for chain in [*quick, slow]:
        job = client.get_job(chain.id)
        assert (job.status, job.attempt) == ("pending", 0)
    assert count(db, select(func.count()).select_from(Effect)) == 0

    rescuer = build_worker(db.url, sleep_scale=0, batch=10)
    try:
        assert rescuer.drain() == 5
        assert rescuer.drain() == 0
    finally:
        rescuer.client.engine.dispose()
    assert [client.get_chain(c.id).output for c in [*quick, slow]] == [0, 2, 4, 6, 18]
    assert count(db, select(func.count()).select_from(Effect)) == 5
    assert count(db, select(func.count(func.distinct(Effect.job_id)))) == 5


@pytest.mark.parametrize("jobs", [2000])
@pytest.mark.parametrize("batch", [1, 25])
def test_two_worker_processes_drain_without_double_processing(
    pg: Db, tmp_path: Path, processes: list[subprocess.Popen[str]], jobs: int, batch: int
) -> None:
    db = pg
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, [q.ChainStart(work, {"n": i, "sleep": 0}) for i in range(jobs)])

    started = time.monotonic()
    for _ in range(2):
        processes.append(spawn_worker(db, tmp_path, concurrency=4, batch=batch))
    done_stmt = select(func.count()).select_from(Job).where(Job.status == "completed")
    wait_for(lambda: count(db, done_stmt) == jobs, 120, f"{jobs} jobs to complete")
    elapsed = time.monotonic() - started

    for proc in processes:
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        proc.wait(timeout=30)
        out = output(proc)
        assert proc.returncode == 0, out
        assert "stopped" in out

    assert count(db, select(func.count()).select_from(Effect)) == jobs
    assert count(db, select(func.count(func.distinct(Effect.job_id)))) == jobs
    workers = count(db, select(func.count(func.distinct(Job.completed_by))))
    assert workers == 2, "both processes should have taken a share"
    print(f"\n{jobs} jobs, 2 processes x 4 threads: {elapsed:.1f} s ({jobs / elapsed:.0f} jobs/s)")


def test_sigkill_mid_attempt_reports_nothing_and_the_retry_continues_the_trace(
    db: Db, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """Observers under a crash: the killed attempt's span never ends (so is never
    exported), the job's trace goes on in the next worker, and completion is
    reported exactly once."""
    from .test_otel import Otel

    otel = Otel()
    recorder = q.RecordingObserver()
    client = q.Queuert(db.engine, job_types, observers=[otel.observer(), recorder])
    with (
        otel.tracer.start_as_current_span("POST /work") as request,
        Session(db.engine) as s,
        s.begin(),
    ):
        chain = client.start_chain(s, work, {"n": 5, "sleep": 60})
    spans = tmp_path / "killed.jsonl"
    proc = spawn_worker(db, tmp_path, QUEUERT_APP_SPANS=str(spans))
    processes.append(proc)
    wait_for((tmp_path / str(chain.id)).exists, 30, "the handler to start in the worker process")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    killed = [line for line in spans.read_text().splitlines() if line] if spans.exists() else []
    assert killed == []  # its attempt span was open when the process died

    rescuer = build_worker(db.url, sleep_scale=0)
    rescuer.client.add_observer(otel.observer())
    rescuer.client.add_observer(recorder)
    try:
        assert rescuer.drain() == 1
    finally:
        rescuer.client.engine.dispose()
    (attempt,) = [s for s in otel.finished() if s.name == "start job-attempt.work"]
    created = otel.span("create chain.work")
    assert attempt.context.trace_id == request.get_span_context().trace_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == created.context.span_id
    assert attempt.attributes is not None
    assert attempt.attributes["queuert.job.attempt"] == 1  # the killed one was rolled back
    assert [e["job"].id for e in recorder.of("job_completed")] == [chain.id]
    assert len(recorder.of("chain_completed")) == 1
    otel.close()
