"""Recurring schedules: cron in a time zone, and a fixed period, kept by two workers at once.

Run it:  python examples/schedules.py            (a SQLite file in a temporary directory)
         python examples/schedules.py --db URL   (e.g. postgresql+psycopg://localhost/app)

Two workers (standing for two processes of the same app) both declare the
same schedules with ``worker.recurring``: a "heartbeat" every second and a
"nightly-report" at 03:00 in Europe/Berlin. Each tick becomes one chain,
started ahead of its time with a deduplication key made of the schedule's
name and the tick, so the database lets one chain per tick in however many
workers keep the schedule. The script runs both workers for about 3.5
seconds, prints each heartbeat with the worker that ran it, then checks
that every tick has exactly one chain and shows when the report runs next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TypedDict
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

RUN_FOR = dt.timedelta(seconds=3.5)


class Beat(TypedDict):
    tick: str


class ReportIn(TypedDict):
    day: str


job_types = q.JobTypes()
heartbeat = job_types.entry("heartbeat", input=Beat)
nightly_report = job_types.entry("nightly-report", input=ReportIn)


def make_worker(queuert: q.Queuert, name: str, lock: threading.Lock) -> q.Worker:
    worker = queuert.worker(worker_id=name, poll_interval=dt.timedelta(milliseconds=250))

    @worker.handler(heartbeat)
    def beat(attempt: q.Attempt[Beat, None]) -> q.Outcome:
        late = (dt.datetime.now(dt.UTC) - attempt.job.scheduled_at).total_seconds()
        with lock:
            print(f"heartbeat {attempt.input['tick']} by {name} ({late * 1000:.0f} ms after)")
        return attempt.complete(None)

    @worker.handler(nightly_report)
    def report(attempt: q.Attempt[ReportIn, None]) -> q.Outcome:
        return attempt.complete(None)

    # Declared the same way in every process: one chain per tick all the same.
    worker.recurring(
        "heartbeat",
        heartbeat,
        every=dt.timedelta(seconds=1),
        input=lambda tick: {"tick": f"{tick:%H:%M:%S}"},
    )
    worker.recurring(
        "nightly-report",
        nightly_report,
        cron="0 3 * * *",
        tz=ZoneInfo("Europe/Berlin"),
        input=lambda tick: {"day": f"{tick:%Y-%m-%d}"},
        missed="skip",  # a report that could not run at 03:00 waits for the next night
    )
    return worker


def run(url: str) -> int:
    engine = create_engine(url)
    try:
        q.metadata.create_all(engine)  # production: the Alembic branch
        queuert = q.Queuert(engine, job_types)
        lock = threading.Lock()
        workers = [make_worker(queuert, name, lock) for name in ("worker-a", "worker-b")]
        print(f"two workers keep the same schedules for {RUN_FOR.total_seconds():g} s")
        for worker in workers:
            worker.start()
        time.sleep(RUN_FOR.total_seconds())
        stopped = all([worker.stop() for worker in workers])
        print("workers stopped" if stopped else "workers did not stop in time")

        with Session(engine) as session:
            keys = session.scalars(
                select(Job.deduplication_key).where(Job.type_name == "heartbeat")
            ).all()
            report = session.execute(
                select(Job.scheduled_at, Job.input).where(Job.type_name == "nightly-report")
            ).one()
        per_tick = Counter(keys)
        print(f"heartbeat ticks: {len(per_tick)}, chains per tick: {set(per_tick.values())}")
        berlin = report.scheduled_at.astimezone(ZoneInfo("Europe/Berlin"))
        print(f"nightly-report for {report.input['day']} runs at {berlin:%Y-%m-%d %H:%M %Z}")
        for schedule in workers[0].schedules:
            print(f"schedule {schedule.name}: {schedule.description}, missed={schedule.missed}")
        return 0 if stopped and set(per_tick.values()) == {1} else 1
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Recurring schedules kept by two workers.")
    parser.add_argument(
        "--db", metavar="URL", help="database URL (default: a SQLite file in a temp directory)"
    )
    args = parser.parse_args(argv)
    if args.db:
        return run(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        return run(f"sqlite:///{Path(tmp) / 'schedules.db'}")


if __name__ == "__main__":
    raise SystemExit(main())
