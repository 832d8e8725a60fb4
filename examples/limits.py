"""Fleet-wide limits: at most two SMS sends at once, and at most five a second, across workers.

Run it:  python examples/limits.py            (a SQLite file in a temporary directory)
         python examples/limits.py --db URL   (e.g. postgresql+psycopg://localhost/app)

Two workers of six slots each (standing for two processes) run 20 ``send-sms``
jobs (staged: the gateway call holds no transaction) declared with
``max_running=2`` and ``rate=q.Rate(5, per=1 s)``, and 20
``resize-image`` jobs with no limit. Each send records when it ran, in the
same transaction as its completion; the script then reads those rows: the
most sends that overlapped, how fast they started, and that the images were
not held up behind the limited type. Jobs over a limit wait (pending, their
attempt count untouched); none fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Float, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q
from queuert_sa.models import Job


class Base(DeclarativeBase):
    pass


class Sent(Base):
    """One row per SMS handler run, written with the job's completion."""

    __tablename__ = "example_sms_sent"
    id: Mapped[int] = mapped_column(primary_key=True)
    to: Mapped[str] = mapped_column(String(32))
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float] = mapped_column(Float)


class SmsIn(TypedDict):
    to: str


class ImageIn(TypedDict):
    image: int


job_types = q.JobTypes()
send_sms = job_types.entry("send-sms", input=SmsIn)
resize_image = job_types.entry("resize-image", input=ImageIn)


def make_worker(queuert: q.Queuert, name: str) -> q.Worker:
    worker = queuert.worker(worker_id=name, concurrency=6, poll_interval=0.2)

    # Staged: the gateway call runs with no transaction open (a lease holds the job).
    @worker.handler(
        send_sms, mode="staged", max_running=2, rate=q.Rate(5, per=dt.timedelta(seconds=1))
    )
    def send(attempt: q.Attempt[SmsIn, None]) -> q.Outcome:
        with attempt.prepare():
            pass
        started = time.time()
        time.sleep(0.3)  # the SMS gateway's answer
        with attempt.transaction() as session:
            session.add(Sent(to=attempt.input["to"], started=started, ended=time.time()))
            return attempt.complete(None)

    @worker.handler(resize_image)
    def resize(attempt: q.Attempt[ImageIn, None]) -> q.Outcome:
        time.sleep(0.05)
        return attempt.complete(None)

    return worker


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def run(url: str) -> int:
    engine = create_engine(url)
    try:
        q.metadata.create_all(engine)  # production: the Alembic branch
        Base.metadata.create_all(engine)
        queuert = q.Queuert(engine, job_types)
        with Session(engine) as session, session.begin():
            queuert.start_chains(session, [send_sms({"to": f"+4915{i:07d}"}) for i in range(20)])
            queuert.start_chains(session, [resize_image({"image": i}) for i in range(20)])
        workers = [make_worker(queuert, name) for name in ("worker-a", "worker-b")]
        for worker in workers:
            worker.start()
        while True:
            with Session(engine) as session:
                done = session.scalar(
                    select(func.count()).select_from(Job).where(Job.status == "completed")
                )
            if done == 40:
                break
            time.sleep(0.05)
        stopped = all([worker.stop() for worker in workers])
        with Session(engine) as session:
            spans = [(b, e) for b, e in session.execute(select(Sent.started, Sent.ended))]
            images_done = session.scalar(
                select(func.max(Job.completed_at)).where(Job.type_name == "resize-image")
            )
            attempts = set(session.scalars(select(Job.attempt)).all())
        first = min(b for b, _ in spans)
        last = max(b for b, _ in spans)
        assert images_done is not None
        images_first = images_done.timestamp() < max(e for _, e in spans)
        print(f"sms sent: {len(spans)}, most at once: {most_at_once(spans)} (max_running=2)")
        print(f"sms starts spread over {last - first:.1f} s (rate 5/s: at least 3.8 s)")
        print(f"images done before the last sms: {images_first}")
        print(f"attempts per job: {sorted(attempts)}")
        print("workers stopped" if stopped else "workers did not stop in time")
        ok = most_at_once(spans) <= 2 and attempts == {1} and stopped and images_first
        return 0 if ok else 1
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fleet-wide concurrency and rate limits.")
    parser.add_argument(
        "--db", metavar="URL", help="database URL (default: a SQLite file in a temp directory)"
    )
    args = parser.parse_args(argv)
    if args.db:
        return run(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        return run(f"sqlite:///{Path(tmp) / 'limits.db'}")


if __name__ == "__main__":
    raise SystemExit(main())
