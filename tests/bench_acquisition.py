"""What one acquisition costs a worker of several types as the due backlog grows.

    python -m tests.bench_acquisition [--db URL] [--rows 100000] [--types 3] [--repeat 20]

Fills a fresh job table (a scratch PostgreSQL database made and dropped
beside ``--db``, or a temporary SQLite file) with ``--rows`` due pending jobs
spread over ``--types`` types, then times the acquiring statement the worker
sends (in a transaction rolled back each time, so the backlog stays): for
one type, for all the types (each type's head of the index, merged), and
the plain ``type_name IN (...)`` form, which reads and sorts every due row.
Prints the best of ``--repeat`` runs of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, make_url, text

import queuert_sa as q
from queuert_sa.state import _statements
from queuert_sa.state.capabilities import capabilities_for

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _fill(engine: Engine, models: q.models.Models, names: list[str], rows: int) -> None:
    job = models.job_table
    now = dt.datetime.now(dt.UTC)
    batch: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for n in range(rows):
            name = names[n % len(names)]
            job_id = uuid.uuid4()
            batch.append(
                {
                    "id": job_id,
                    "chain_id": job_id,
                    "chain_index": 0,
                    "chain_type_name": name,
                    "type_name": name,
                    "input": {"n": n},
                    "status": "pending",
                    "attempt": 0,
                    "priority": n % 3,
                    "scheduled_at": now - dt.timedelta(seconds=rows - n),
                    "created_at": now,
                }
            )
            if len(batch) == 10_000:
                conn.execute(job.insert(), batch)
                batch.clear()
        if batch:
            conn.execute(job.insert(), batch)
        conn.execute(text("ANALYZE"))


def _best(engine: Engine, statement: Any, names: list[str], repeat: int) -> float:
    now = dt.datetime.now(dt.UTC)
    params = {"now": now, "worker_id": "bench", "lease_until": now, "type_names": names}
    best = float("inf")
    with engine.connect() as conn:
        for _ in range(repeat):
            started = time.perf_counter()
            conn.execute(statement, params).all()
            best = min(best, time.perf_counter() - started)
            conn.rollback()
    return best * 1000


def measure(engine: Engine, rows: int, type_count: int, repeat: int) -> dict[str, float]:
    job_types = q.JobTypes()
    names = [f"bench-{i}" for i in range(type_count)]
    for name in names:
        job_types.entry(name, input=dict[str, int], output=int)
    client = q.Queuert(engine, job_types)
    models = client.models
    q.prepare_engine(engine)
    models.metadata.create_all(engine)
    _fill(engine, models, names, rows)
    skip_locked = capabilities_for(engine.dialect).skip_locked
    one = _statements.acquire(models, skip_locked, False, ())
    heads = _statements.acquire(models, skip_locked, False, (), tuple(names))
    return {
        "one type": _best(engine, one, names[:1], repeat),
        f"{type_count} types, heads merged": _best(engine, heads, names, repeat),
        f"{type_count} types, IN (...) and sort": _best(engine, one, names, repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_DB, help="PostgreSQL URL, or sqlite://")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--types", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    if args.db.startswith("sqlite"):
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
            report(measure(engine, args.rows, args.types, args.repeat), "SQLite", args.rows)
            engine.dispose()
        return
    url = make_url(args.db)
    scratch = f"queuert_bench_acquisition_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{scratch}"'))
    engine = create_engine(url.set(database=scratch))
    try:
        report(measure(engine, args.rows, args.types, args.repeat), "PostgreSQL", args.rows)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{scratch}"'))
        admin.dispose()


def report(figures: dict[str, float], engine_name: str, rows: int) -> None:
    print(f"{engine_name}, {rows:,} due jobs: best acquisition time")
    for label, ms in figures.items():
        print(f"  {label:<32} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
