"""How the asyncio worker ends: a plain handler's SystemExit, a second signal, its counts."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q

from . import app
from .conftest import Db
from .workers import async_url

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 30.0


def test_systemexit_in_a_plain_handler_ends_the_async_workers_run(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain ``def`` handler (on the thread worker inside) raising SystemExit stops the
    asyncio worker too, and its ``run()`` raises it, after the attempt is recorded; the
    counts include the plain handlers' attempts."""
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, app.work, {"n": 1, "sleep": 0})
    ended: list[BaseException | None] = []
    counts: list[tuple[int, int]] = []

    async def main() -> None:
        engine = create_async_engine(async_url(db))
        thread_engine = create_engine(db.url)
        try:
            aqueuert = q.AsyncQueuert(engine, app.job_types)
            worker = aqueuert.worker(
                thread_engine=thread_engine,
                handle_signals="never",
                poll_interval=dt.timedelta(seconds=30),
            )

            @worker.handler(app.work)
            def leave(attempt: q.Attempt[app.WorkIn, int]) -> q.Outcome:
                raise SystemExit(4)

            try:
                await worker.run()
            finally:
                counts.append((worker.completed, worker.failed))
        finally:
            await engine.dispose()
            thread_engine.dispose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            ended.append(exc)
        else:
            ended.append(None)
        gc.collect()  # a task left holding the exception says so now, while captured

    thread = threading.Thread(target=run, name="own-event-loop")
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the asyncio worker's run() did not end"
    assert isinstance(ended[0], SystemExit), ended
    assert ended[0].code == 4
    assert counts == [(0, 1)]
    # Raised once, by run(): not also left in a task or an executor thread.
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 1)


WORKER = """
import asyncio, datetime as dt, os
from sqlalchemy.ext.asyncio import create_async_engine
import queuert_sa as q
from tests import app

async def main():
    engine = create_async_engine(os.environ["QUEUERT_ASYNC_URL"])
    worker = q.AsyncQueuert(engine, app.job_types).worker(
        shutdown_grace=dt.timedelta(seconds=120), poll_interval=dt.timedelta(seconds=0.2)
    )

    @worker.handler(app.work)
    async def slow(attempt):
        print("entered", flush=True)
        await asyncio.sleep(120)
        return attempt.complete(0)

    print("clean" if await worker.run() else "cut short", flush=True)
    await engine.dispose()

asyncio.run(main())
"""


def test_a_second_signal_cuts_the_async_workers_graceful_stop_short(db: Db, tmp_path: Path) -> None:
    """SIGTERM: the attempt in flight may finish (grace 120 s here); a second SIGTERM
    cancels it, its transaction rolls back (the job is pending again) and the process ends."""
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, app.work, {"n": 1, "sleep": 0})
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUEUERT_ASYNC_URL": async_url(db)}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while "entered" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the handler never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the first signal must wait for the attempt in flight"
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert returncode == 0, output
    assert "cut short" in output
    job = client.get_job(chain.id)
    assert (job.status, job.attempt) == ("pending", 0)  # rolled back whole, acquisition too
