"""Throughput figures: start chains and process them with one worker.

    python -m tests.bench_throughput                         # temporary SQLite file
    python -m tests.bench_throughput --db postgresql+psycopg://postgres@127.0.0.1/test

Creates its own tables (prefix ``bench_``), prints a table, drops them.
Figures, not assertions: performance targets live here, never in unit tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import create_models


class NoopIn(TypedDict):
    i: int


def run(url: str, jobs: int, concurrency: int) -> dict[str, float]:
    models = create_models(table_prefix="bench_")
    engine = create_engine(url, pool_size=concurrency + 5)
    q.prepare_engine(engine)
    models.metadata.drop_all(engine)
    models.metadata.create_all(engine)
    types = q.JobTypes()
    noop = types.entry("noop", input=NoopIn, output=int)
    client = q.Queuert(engine, types, models=models)
    figures: dict[str, float] = {}
    try:
        started = time.perf_counter()
        for i in range(jobs):
            with Session(engine) as s, s.begin():
                client.start_chain(s, noop, {"i": i})
        figures["start single (chains/s)"] = jobs / (time.perf_counter() - started)

        started = time.perf_counter()
        for offset in range(0, jobs, 100):
            with Session(engine) as s, s.begin():
                client.start_chains(
                    s, [noop({"i": i}) for i in range(offset, min(offset + 100, jobs))]
                )
        figures["start batched x100 (chains/s)"] = jobs / (time.perf_counter() - started)

        worker = client.worker(
            concurrency=concurrency,
            poll_interval=dt.timedelta(milliseconds=50),
            handle_signals="never",
        )

        @worker.handler(noop)
        def handle(attempt: q.Attempt[NoopIn, int]) -> q.Outcome:
            return attempt.complete(attempt.input["i"])

        total = 2 * jobs
        started = time.perf_counter()
        worker.start()
        while worker.completed < total:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        worker.stop()
        figures[f"process atomic, {concurrency} threads (jobs/s)"] = total / elapsed
    finally:
        models.metadata.drop_all(engine)
        engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", help="database URL (repeatable)")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    urls = args.db or [f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"]
    for url in urls:
        kind = url.split(":", 1)[0]
        print(f"\n{kind}  ({args.jobs} chains per start phase, {2 * args.jobs} jobs processed)")
        for name, value in run(url, args.jobs, args.concurrency).items():
            print(f"  {name:<40} {value:>10,.0f}")


if __name__ == "__main__":
    main()
