"""The ceiling of a transaction per job with a SQLAlchemy ``Session`` per job (PostgreSQL).

    python -m tests.bench_session_ceiling [--db URL] [--chains 3000] [--concurrency 10]

An atomic attempt needs a ``Session``: the handler writes through it and its
writes commit with the completion. This measures what that costs with no
worker at all: ``--concurrency`` threads, each taking one job per
transaction through a new ``Session`` and running the acquire and complete
statements of ``queuert-sa bench``'s pgbench reference, prepared, on the raw
psycopg cursor of the session's connection; nothing else (no flow, no
handler, no snapshot, no hooks). Beside it, the thread worker draining the
same jobs with a no-op handler and pgbench's figure for the same SQL.

It prints jobs/s and CPU per job of each, so the worker's share of the
``Session`` ceiling reads next to the ceiling's share of the reference.

The same for one start per transaction, from one thread: a ``Session`` whose
only statement is the pgbench reference's one-row INSERT, beside
``start_chain`` in a ``Session`` of its own.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa import bench

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _statements(table: str) -> tuple[str, str]:
    acquire = (
        f"UPDATE {table} SET status = 'running', attempt = attempt + 1, "
        "last_attempt_at = now(), leased_by = 'ceiling', leased_until = now() + interval '5 min' "
        f"WHERE id = (SELECT id FROM {table} WHERE type_name = 'noop' AND status = 'pending' "
        "AND scheduled_at <= now() ORDER BY priority DESC, scheduled_at, id LIMIT 1 "
        "FOR NO KEY UPDATE SKIP LOCKED) RETURNING id"
    )
    complete = (
        f"UPDATE {table} SET status = 'completed', output = '1', completed_at = now(), "
        "completed_by = 'ceiling', leased_by = NULL, leased_until = NULL WHERE id = %s"
    )
    return acquire, complete


def _session_loop(engine: Any, acquire: str, complete: str, concurrency: int) -> tuple[int, float]:
    done = [0]
    lock = threading.Lock()

    def run() -> None:
        while True:
            with Session(engine) as session, session.begin():
                dbapi: Any = session.connection().connection.dbapi_connection
                cursor = dbapi.cursor()
                cursor.execute(acquire, prepare=True)
                row = cursor.fetchone()
                if row is None:
                    return
                cursor.execute(complete, (row[0],), prepare=True)
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0], time.perf_counter() - started


def _start_ceiling(engine: Any, table: str, count: int) -> tuple[float, float]:
    """One server-generated job row per ``Session`` transaction: (seconds, CPU seconds)."""
    insert = (
        f"INSERT INTO {table} ({bench._COLUMNS}) SELECT {bench._PG_ROW} "
        f"FROM (SELECT {bench._PG_ORDERED_ID} AS id) g"
    )
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(count):
        with Session(engine) as session, session.begin():
            dbapi: Any = session.connection().connection.dbapi_connection
            dbapi.cursor().execute(insert, prepare=True)
    return time.perf_counter() - started, time.process_time() - cpu


def _line(what: str, count: int, seconds: float, cpu: float, unit: str) -> str:
    return f"{what:18}{count / seconds:8,.0f} {unit}  {cpu / count * 1e6:5.0f} us CPU each"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--chains", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    with bench._bench_database(args.db) as (engine, models, shown):
        client, noop = bench._client(engine, models)
        acquire, complete = _statements(bench._table_name(models))
        print(f"database: {shown}, {args.chains} jobs, {args.concurrency} threads")

        bench._clear(engine, models)
        bench._fill(client, noop, args.chains)
        cpu = time.process_time()
        count, seconds = _session_loop(engine, acquire, complete, args.concurrency)
        cpu = time.process_time() - cpu
        print(_line("session ceiling", count, seconds, cpu, "jobs/s"))

        bench._clear(engine, models)
        bench._fill(client, noop, args.chains)
        cpu = time.process_time()
        seconds = bench._process_sync(client, noop, args.chains, args.concurrency, "atomic", 1)
        cpu = time.process_time() - cpu
        print(_line("worker, atomic", args.chains, seconds, cpu, "jobs/s"))

        bench._clear(engine, models)
        bench._fill(client, noop, args.chains)
        reference = bench._process_reference(client, models, args.chains, args.concurrency)
        if reference.figure is None:
            print(f"reference: {reference.note}")
        else:
            print(f"pgbench reference {reference.figure.rate:8,.0f} jobs/s")

        starts = max(args.chains // 3, 1)
        bench._clear(engine, models)
        seconds, cpu = _start_ceiling(engine, bench._table_name(models), starts)
        print(_line("start ceiling", starts, seconds, cpu, "chains/s"))
        bench._clear(engine, models)
        cpu = time.process_time()
        seconds = bench._start_single(client, noop, starts)
        cpu = time.process_time() - cpu
        print(_line("start_chain", starts, seconds, cpu, "chains/s"))
        for start_reference in bench._pg_start_references(engine, models, starts):
            if start_reference.kind == "start-single" and start_reference.figure is not None:
                print(f"pgbench start     {start_reference.figure.rate:8,.0f} chains/s")


if __name__ == "__main__":
    main()
