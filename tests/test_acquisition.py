"""A worker serving several types: the acquisition order across them, and its cost.

``type_name IN (...)`` cannot be read in acquisition order from an index led
by the type, so the several-types acquisition reads each type's head of the
index and merges them; only should every head row be held by other
acquirers does it read every due job. Pinned here: the order across types
(both workers, both engines), the plan PostgreSQL runs with a large backlog
(no Seq Scan or Sort is executed), and the fall-back past held heads.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job
from queuert_sa.state import _statements

from .conftest import Db
from .test_worker import FakeClock
from .workers import Kit


class NIn(TypedDict):
    n: int


types = q.JobTypes()
red = types.entry("acq-red", input=NIn, output=int)
green = types.entry("acq-green", input=NIn, output=int)
blue = types.entry("acq-blue", input=NIn, output=int)
EVERY = (red, green, blue)


def recording(kit: Any, ran: list[int], **options: Any) -> Any:
    worker = kit.worker(**options)
    lock = threading.Lock()
    for job_type in EVERY:

        @worker.handler(job_type)
        def handle(attempt: Any) -> q.Outcome:
            with lock:
                ran.append(attempt.input["n"])
            return attempt.complete(attempt.input["n"])

    return worker


def test_several_types_are_taken_in_one_order_across_types(kit: Kit) -> None:
    clock = FakeClock()
    kit = kit.using(job_types=types, clock=clock)
    starts = [
        (1, red, None),
        (2, green, None),
        (3, blue, 5),
        (4, red, 5),
        (5, green, -1),
        (6, blue, None),
        (7, green, 5),
        (8, red, None),
    ]
    for n, job_type, priority in starts:
        with Session(kit.db.engine) as s, s.begin():
            kit.client.start_chains(s, [job_type({"n": n}, priority=priority)])
        clock.advance(dt.timedelta(seconds=1))
    ran: list[int] = []

    assert recording(kit, ran, concurrency=1).drain() == len(starts)

    # Priority first, then the oldest due, whatever the type.
    assert ran == [3, 4, 7, 1, 2, 6, 8, 5]


# --- PostgreSQL: the plan, and rows other acquirers hold ------------------------------


def _seed(db: Db, per_type: int) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO queuert_job (id, type_name, chain_id, chain_type_name, chain_index, "
                "input, status, created_at, scheduled_at, attempt, priority) "
                "SELECT g.id, g.t, g.id, g.t, 0, jsonb_build_object('n', g.n), 'pending', now(), "
                "now() - interval '1 hour' + g.n * interval '1 ms', 0, 0 "
                "FROM (SELECT gen_random_uuid() AS id, n, "
                "(ARRAY['acq-red', 'acq-green', 'acq-blue'])[1 + n % 3] AS t "
                "FROM generate_series(0, :count - 1) n) g"
            ),
            {"count": per_type * 3},
        )
        conn.execute(text("ANALYZE queuert_job"))


@contextmanager
def _sent_acquisitions(db: Db) -> Generator[list[tuple[str, Any]]]:
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if "SKIP LOCKED" in statement and statement.lstrip().startswith("UPDATE"):
            sent.append((statement, params))

    # A listener also moves the statement off the driver cursor, onto SQLAlchemy's path.
    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


def test_a_large_backlog_of_several_types_is_not_read_whole(pg: Db) -> None:
    """30,000 due jobs over three types: the acquisition runs no Seq Scan and no Sort."""
    _seed(pg, 10_000)
    ran: list[int] = []
    worker = recording(_kit(pg), ran)
    with _sent_acquisitions(pg) as sent:
        assert worker.drain(max_jobs=1) == 1
    assert ran == [0]  # the oldest of all three types
    statement, params = sent[0]
    with pg.engine.connect() as conn:
        (plan,) = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params
        ).scalar_one()
        conn.rollback()
    executed = [node for node in _nodes(plan["Plan"]) if node.get("Actual Loops", 0) > 0]
    kinds = [node["Node Type"] for node in executed]
    assert "Seq Scan" not in kinds, kinds
    assert "Sort" not in kinds, kinds
    assert "Merge Append" in kinds, kinds
    assert plan["Execution Time"] < 50, plan["Execution Time"]


def _kit(db: Db) -> Any:
    client = q.Queuert(db.engine, types)

    class _Plain:
        def worker(self, **options: Any) -> q.Worker:
            return client.worker(**options)

    return _Plain()


@pytest.fixture
def two_heads() -> Iterator[None]:
    """Each type's head is two rows long: a rival holding two of each is past every head."""
    saved = _statements.HEADS_PER_TYPE
    _statements.HEADS_PER_TYPE = 2
    _statements.acquire.cache_clear()
    try:
        yield
    finally:
        _statements.HEADS_PER_TYPE = saved
        _statements.acquire.cache_clear()


@pytest.mark.usefixtures("two_heads")
def test_jobs_past_every_held_head_are_still_taken(pg: Db) -> None:
    """A rival holds each type's whole head: the worker reads on and takes the next due job."""
    _seed(pg, 4)  # n = 0..11: red 0, 3, 6, 9; green 1, 4, 7, 10; blue 2, 5, 8, 11
    ran: list[int] = []
    worker = recording(_kit(pg), ran)
    with Session(pg.engine) as rival, rival.begin():
        held = rival.scalars(
            select(Job.id)
            .where(Job.input["n"].as_integer() < 6)
            .with_for_update()  # n = 0..5: the first two of each type
        ).all()
        assert len(held) == 6
        assert worker.drain(max_jobs=1) == 1
        assert ran == [6]
        with Session(pg.engine) as s:
            states = {
                n: status
                for n, status in s.execute(select(Job.input["n"].as_integer(), Job.status))
            }
        assert [n for n, status in sorted(states.items()) if status == "completed"] == [6]
    # Once the rival lets go, the held jobs are taken in order.
    assert worker.drain() == 11
    assert ran == [6, 0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def test_the_acquisition_bench_runs_as_its_docstring_says() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench_acquisition", "--db", "sqlite://", "--rows=300"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "3 types, heads merged" in done.stdout, done.stdout
