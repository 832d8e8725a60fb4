"""What an idle fleet costs the database: transactions and statements per second.

    python -m tests.bench_idle_fleet [--db URL] [--processes 8] [--concurrency 4]
                                     [--poll 1.0] [--seconds 20]

Starts ``--processes`` thread workers (each its own process, ``--concurrency``
slots, ``poll_interval`` ``--poll`` seconds, an atomic and a staged handler)
on a fresh PostgreSQL database with nothing to do, waits for them to settle,
then reads how much ``pg_stat_database.xact_commit + xact_rollback`` and
``tup_returned + tup_fetched`` grow over ``--seconds`` (the database's own
counters, so everything the workers send is counted). Prints transactions
per second for the fleet, and per worker per poll interval.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

import queuert_sa as q

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

WORKER = """
import datetime as dt, sys
import queuert_sa as q
from sqlalchemy import create_engine
from tests.app import job_types, work, staged_work
engine = create_engine(sys.argv[1])
worker = q.Queuert(engine, job_types).worker(
    concurrency=int(sys.argv[2]), poll_interval=float(sys.argv[3]), handle_signals="auto"
)
worker.handler(work)(lambda a: a.complete(0))
worker.handler(staged_work, mode="staged")(lambda a: a.complete(0))
worker.run()
"""


def counters(admin_url: str, name: str) -> tuple[int, int]:
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = conn.execute(
                text(
                    "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched "
                    "FROM pg_stat_database WHERE datname = :name"
                ),
                {"name": name},
            ).one()
            return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_DB, help="a PostgreSQL server (admin URL)")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    admin_url = args.db
    name = f"queuert_idle_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    q.metadata.create_all(engine)
    engine.dispose()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(args.concurrency), str(args.poll)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(args.processes)
    ]
    try:
        time.sleep(max(3.0, 3 * args.poll))  # started, connected, settled into polling
        xacts, rows = counters(admin_url, name)
        time.sleep(args.seconds)
        xacts_after, rows_after = counters(admin_url, name)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    per_s = (xacts_after - xacts) / args.seconds
    print(
        f"{args.processes} idle workers x {args.concurrency} slots, poll {args.poll:g} s: "
        f"{per_s:.1f} transactions/s "
        f"({per_s * args.poll / args.processes:.1f} per worker per poll interval), "
        f"{(rows_after - rows) / args.seconds:.0f} rows read/s"
    )


if __name__ == "__main__":
    main()
