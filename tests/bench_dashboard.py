"""How fast the dashboard answers with a big table: every API call, and the plans of its queries.

    python -m tests.bench_dashboard [--db URL] [--chains 100000] [--rounds 5]

Fills a fresh database (SQLite file, or a PostgreSQL database of its own
named ``queuert_dashboard_bench``) with ``--chains`` chains of three types
(a tenth of them waiting on a blocker chain, half of the rest completed over
the last hour, some failed), then times each API call the pages make through
an in-process ASGI client: the median and the slowest of ``--rounds`` calls.
On PostgreSQL it also prints each listing's plan and flags a sequential scan
of the job table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, event, make_url, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.dashboard import Dashboard
from queuert_sa.models import Job

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BENCH_DATABASE = "queuert_dashboard_bench"

types = q.JobTypes()
fetch = types.entry("fetch", input=dict, output=dict)
report = types.entry("report", input=dict, output=dict, blockers=[fetch])
mail = types.entry("send-mail", input=dict, output=dict)


def fresh_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(tempfile.mkdtemp()) / "dashboard-bench.db"
        engine = create_engine(f"sqlite:///{path}")
    else:
        admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
        admin.dispose()
        engine = create_engine(parsed.set(database=BENCH_DATABASE))
    q.prepare_engine(engine)
    q.metadata.create_all(engine)
    return engine


def fill(engine: Engine, chains: int) -> None:
    client = q.Queuert(engine, types)
    now = dt.datetime.now(dt.UTC)
    batch = 1000
    for start in range(0, chains, batch):
        size = min(batch, chains - start)
        with Session(engine) as s, s.begin():
            blockers = client.start_chains(s, [fetch({"n": start + i}) for i in range(size // 10)])
            starts: list[q.ChainStart[Any, Any]] = [
                report({"n": i}, blockers=[b]) for i, b in enumerate(blockers)
            ]
            starts += [
                mail({"to": f"user{start + i}@example.com"})
                for i in range(size - 2 * len(blockers))
            ]
            client.start_chains(s, starts)
    with engine.begin() as conn:
        # Half of the mail completed, spread over the last hour; one in fifty failed.
        ids = [row[0] for row in conn.execute(select(Job.id).where(Job.type_name == "send-mail"))]
        done = ids[: len(ids) // 2]
        for offset in range(0, len(done), 5000):
            part = done[offset : offset + 5000]
            conn.execute(
                update(Job.__table__)
                .where(Job.__table__.c.id.in_(part))
                .values(
                    status="completed",
                    completed_at=now - dt.timedelta(minutes=offset % 60),
                    output={"sent": True},
                )
            )
        failed = ids[len(ids) // 2 : len(ids) // 2 + len(ids) // 50]
        conn.execute(
            update(Job.__table__)
            .where(Job.__table__.c.id.in_(failed))
            .values(status="failed", completed_at=now, last_attempt_error="SMTP 451")
        )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))


async def time_calls(engine: Engine, rounds: int) -> list[tuple[str, float, float]]:
    client = q.Queuert(engine, types)
    transport = httpx.ASGITransport(app=Dashboard(client))
    results: list[tuple[str, float, float]] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        first = (await http.get("/api/chains", params={"limit": "25"})).json()
        cursor = first["next_cursor"]
        a_report = (await http.get("/api/chains", params={"type": "report", "limit": "1"})).json()
        report_id = a_report["items"][0]["id"]
        blocker_id = (await http.get(f"/api/chains/{report_id}")).json()["job_blockers"][report_id][
            0
        ]["id"]
        calls = {
            "GET /api/stats (overview)": ("/api/stats", {}),
            "GET /api/chains (roots, first page)": ("/api/chains", {"limit": "25"}),
            "GET /api/chains (second page)": ("/api/chains", {"limit": "25", "cursor": cursor}),
            "GET /api/chains?type=report": ("/api/chains", {"type": "report", "limit": "25"}),
            "GET /api/chains?type=report&status=blocked": (
                "/api/chains",
                {"type": "report", "status": "blocked", "limit": "25"},
            ),
            "GET /api/chains?roots=false": ("/api/chains", {"roots": "false", "limit": "25"}),
            "GET /api/jobs": ("/api/jobs", {"limit": "25"}),
            "GET /api/jobs?status=failed": ("/api/jobs", {"status": "failed", "limit": "25"}),
            "GET /api/jobs?type=send-mail": ("/api/jobs", {"type": "send-mail", "limit": "25"}),
            "GET /api/chains/{id} (a blocked chain)": (f"/api/chains/{report_id}", {}),
            "GET /api/chains/{id} (a blocker)": (f"/api/chains/{blocker_id}", {}),
            "GET /api/jobs/{id}": (f"/api/jobs/{report_id}", {}),
            "GET /chains (the page)": ("/chains", {}),
            "GET / (the overview page)": ("/", {}),
        }
        for name, (path, params) in calls.items():
            took: list[float] = []
            for _ in range(rounds):
                started = time.perf_counter()
                response = await http.get(path, params=params)
                took.append(time.perf_counter() - started)
                assert response.status_code == 200, (name, response.text)
            results.append((name, statistics.median(took), max(took)))
    return results


def plans(engine: Engine) -> list[tuple[str, bool]]:
    """Each listing's statement on PostgreSQL, and whether its plan scans the job table."""
    client = q.Queuert(engine, types)
    captured: list[tuple[str, Any]] = []

    def record(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with Session(engine) as s:
            client.list_chains(limit=25, roots_only=True, session=s)
            client.list_chains(limit=25, types=["report"], statuses=["blocked"], session=s)
            client.list_jobs(limit=25, statuses=["failed"], session=s)
            client.list_jobs(limit=25, types=["send-mail"], session=s)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    found: list[tuple[str, bool]] = []
    with engine.connect() as conn:
        for statement, params in captured:
            rows = conn.exec_driver_sql("EXPLAIN " + statement, params)
            plan = "\n".join(row[0] for row in rows)
            found.append((f"{statement}\n{plan}", "Seq Scan on queuert_job " in plan))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", default=DEFAULT_DB, help="sqlite:// or a PostgreSQL server's URL")
    parser.add_argument("--chains", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print the PostgreSQL plans")
    args = parser.parse_args()
    engine = fresh_engine(args.db)
    started = time.perf_counter()
    fill(engine, args.chains)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM queuert_job")).scalar_one()
    print(
        f"{engine.dialect.name}: {args.chains:,} chains, {jobs:,} jobs, filled in {time.perf_counter() - started:.1f} s"
    )
    print(f"{'call':<46} {'median ms':>10} {'slowest ms':>11}")
    for name, median, slowest in asyncio.run(time_calls(engine, args.rounds)):
        print(f"{name:<46} {median * 1000:>10.1f} {slowest * 1000:>11.1f}")
    if engine.dialect.name == "postgresql":
        scans = plans(engine)
        bad = sum(1 for _, seq in scans if seq)
        print(f"listing statements: {len(scans)}, with a sequential scan of the job table: {bad}")
        if args.plans or bad:
            for plan, seq in scans:
                print(("SEQ SCAN\n" if seq else "") + plan + "\n")
    engine.dispose()


if __name__ == "__main__":
    main()
