"""Recurring work: a job that schedules its own next run, plus an idempotent bootstrap.

Run it:  python examples/recurring.py            (a SQLite file in a temporary directory)
         python examples/recurring.py --db URL   (e.g. postgresql+psycopg://localhost/app)

queuert_sa has no cron table. A periodic job is a chain type whose handler,
before completing, starts the next run of the same type ``run_in=PERIOD``
from now, with ``dedup=q.Dedup(KEY, exclude=[attempt.job.chain_id])``: the
running chain is still open, so it excludes itself, and any *other* open run
makes the start a no-op. At application start, ``ensure_scheduled`` starts
the first run with the same key; called on every start (or by every instance
of the app), it creates a run only when none is open.

The script calls the bootstrap three times, runs two workers for about 3.5
seconds (the period is 1 second for the demo) while a "second instance" calls
the bootstrap again, prints each run, and ends by listing the one open chain.
Run it again with the same ``--db`` and the schedule goes on where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import threading
import time
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

import queuert_sa as q

#: Time between two runs (a real one would be minutes or hours).
PERIOD = dt.timedelta(seconds=1)
#: How long the demo lets the workers run.
RUN_FOR = dt.timedelta(seconds=3.5)
#: The deduplication key shared by the bootstrap and the handler.
KEY = "refresh-rates"


class RefreshIn(TypedDict):
    run: int


class RefreshOut(TypedDict):
    run: int
    rates: int


job_types = q.JobTypes()
refresh = job_types.entry("refresh-rates", input=RefreshIn, output=RefreshOut)


def ensure_scheduled(queuert: q.Queuert, session: Session) -> q.Chain[RefreshIn, RefreshOut]:
    """The bootstrap: start the first run unless a run is open. Safe to call at every start."""
    return queuert.start_chain(session, refresh, {"run": 1}, dedup=q.Dedup(KEY))


def register_handler(worker: q.Worker, queuert: q.Queuert, origin: dt.datetime) -> None:
    """Register the periodic handler on ``worker``; times are printed relative to ``origin``."""
    print_lock = threading.Lock()

    def offset(moment: dt.datetime) -> str:
        return f"{(moment - origin).total_seconds():+.2f} s"

    @worker.handler(refresh)
    def do_refresh(attempt: q.Attempt[RefreshIn, RefreshOut]) -> q.Outcome:
        run = attempt.input["run"]
        rates = 42  # a real handler would fetch and store exchange rates here
        # Schedule the next run in this attempt's transaction: it exists if and
        # only if this run commits. Excluding our own (still open) chain, the
        # start is a no-op when another run is already open.
        following = queuert.start_chain(
            attempt.session,
            refresh,
            {"run": run + 1},
            run_in=PERIOD,
            dedup=q.Dedup(KEY, exclude=[attempt.job.chain_id]),
        )
        now = dt.datetime.now(dt.UTC)
        next_run = "already open" if following.deduplicated else "scheduled"
        with print_lock:
            print(
                f"run {run}: at {offset(now)} (due {offset(attempt.job.scheduled_at)}) "
                f"by {worker.worker_id}; next run {next_run}",
                flush=True,
            )
        return attempt.complete({"run": run, "rates": rates})


def bootstrap(engine: Engine, queuert: q.Queuert, label: str) -> q.Chain[RefreshIn, RefreshOut]:
    with Session(engine) as session, session.begin():
        chain = ensure_scheduled(queuert, session)
    if chain.deduplicated:
        print(f"{label}: run {chain.input['run']} already open ({chain.status}), nothing started")
    else:
        print(f"{label}: started run 1, chain {chain.id}")
    return chain


def run(url: str) -> int:
    engine = create_engine(url)
    try:
        queuert = q.Queuert(engine, job_types)
        q.metadata.create_all(engine)

        # Three application starts: one chain.
        origin = dt.datetime.now(dt.UTC)
        for i in (1, 2, 3):
            bootstrap(engine, queuert, f"bootstrap {i}")

        workers = [queuert.worker(worker_id=f"worker-{name}") for name in ("a", "b")]
        for worker in workers:
            register_handler(worker, queuert, origin)
        seconds = RUN_FOR.total_seconds(), PERIOD.total_seconds()
        print("two workers running for {:g} s, period {:g} s".format(*seconds))
        for worker in workers:
            worker.start()
        try:
            deadline = time.monotonic() + RUN_FOR.total_seconds()
            time.sleep(RUN_FOR.total_seconds() / 2)
            bootstrap(engine, queuert, "bootstrap from a second instance")
            time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            stopped = all([worker.stop() for worker in workers])  # stop each, then check
        print("workers stopped" if stopped else "workers did not stop in time")

        chains = queuert.list_chains(types=[refresh], limit=1000).items
        open_chains = [c for c in chains if not c.is_completed]
        done = len(chains) - len(open_chains)
        print(f"chains: {len(chains)} ({done} completed, {len(open_chains)} open)")
        now = dt.datetime.now(dt.UTC)
        for chain in open_chains:
            job = queuert.get_job(chain.current_job_id, refresh)
            due = (job.scheduled_at - now).total_seconds()
            when = f"due in {due:.2f} s" if due > 0 else "due now"
            print(f"open chain: {chain.id} run {job.input['run']}, {chain.status}, {when}")
        return 0 if stopped and len(open_chains) == 1 else 1
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A periodic job with an idempotent bootstrap.")
    parser.add_argument(
        "--db", metavar="URL", help="database URL (default: a SQLite file in a temp directory)"
    )
    args = parser.parse_args(argv)
    if args.db:
        return run(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        return run(f"sqlite:///{Path(tmp) / 'recurring.db'}")


if __name__ == "__main__":
    raise SystemExit(main())
