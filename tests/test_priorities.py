"""Priorities: ``priority=`` on starts and continuations, and the acquisition order.

Pins SEMANTICS.md: among due jobs a worker takes the highest priority first,
then the oldest ``scheduled_at``, then the lowest id; a continuation inherits
its job's priority unless given one; a deduplicated start keeps the existing
chain's priority; unblocking keeps it; a priority that is not an int in
PostgreSQL's INTEGER range is refused before any SQL. Every scenario runs on
both workers and both engines; the plan test reads PostgreSQL's EXPLAIN.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any, TypedDict

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .conftest import Db
from .test_worker import FakeClock
from .workers import Kit


class TaskIn(TypedDict):
    n: int


class HopIn(TypedDict):
    n: int
    next_priority: int | None


types = q.JobTypes()
task = types.entry("prio-task", input=TaskIn, output=int)
hop = types.entry("prio-hop", input=HopIn, continues_with=["prio-landing"])
landing = types.define("prio-landing", input=TaskIn, output=int)
gate = types.entry("prio-gate", input=TaskIn, output=int)
gated = types.entry("prio-gated", input=TaskIn, output=int, blockers=[gate])

HIGH, LOW = 10, 0
DEADLINE_S = 60.0


def with_types(kit: Kit, clock: FakeClock | None = None) -> Kit:
    return kit.using(job_types=types, clock=clock)


def start(kit: Kit, *starts: q.ChainStart[Any, Any]) -> list[q.Chain[Any, Any]]:
    with Session(kit.db.engine) as s, s.begin():
        return kit.client.start_chains(s, list(starts))


def job_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def recording(
    kit: Kit, ran: list[int], *, job_type: q.JobType[Any, Any] = task, **options: Any
) -> Any:
    """A worker whose ``job_type`` handler records each job's input ``n`` as it starts."""
    worker = kit.worker(**options)
    lock = threading.Lock()

    @worker.handler(job_type)
    def handle(attempt: Any) -> q.Outcome:
        with lock:
            ran.append(attempt.input["n"])
        return attempt.complete(attempt.input["n"])

    return worker


# --- the order ----------------------------------------------------------------------


def test_a_high_priority_job_started_last_runs_first(kit: Kit) -> None:
    clock = FakeClock()
    kit = with_types(kit, clock)
    for n, priority in ((1, None), (2, 0), (3, -5), (4, None), (5, 7), (6, 7), (7, 3)):
        start(kit, task({"n": n}, priority=priority))
        clock.advance(dt.timedelta(seconds=1))
    ran: list[int] = []

    assert recording(kit, ran, concurrency=1).drain() == 7

    # Priority first (7, 3, 0, -5), then the oldest due; default 0.
    assert ran == [5, 6, 7, 1, 2, 4, 3]


def test_a_higher_priority_never_jumps_a_job_that_is_not_due(kit: Kit) -> None:
    clock = FakeClock()
    kit = with_types(kit, clock)
    later = start(kit, task({"n": 1}, priority=HIGH, run_in=dt.timedelta(minutes=5)))[0]
    start(kit, task({"n": 2}))
    ran: list[int] = []
    worker = recording(kit, ran)

    assert worker.drain() == 1
    assert ran == [2]
    assert kit.client.get_job(later.id).status == "pending"
    clock.advance(dt.timedelta(minutes=5))
    assert worker.drain() == 1
    assert ran == [2, 1]


def untaken_high_jobs(db: Db) -> int:
    """High-priority jobs that are pending and that no acquiring transaction holds.

    Rows an attempt holds (PostgreSQL: locked until its COMMIT) are skipped;
    SQLite has one writer, so an attempt running means no other holds any.
    """
    with Session(db.engine) as s:
        untaken = (
            select(Job.id)
            .where(Job.type_name == task.name, Job.status == "pending", Job.priority == HIGH)
            .with_for_update(skip_locked=True)
            .subquery()
        )
        return s.execute(select(func.count()).select_from(untaken)).scalar_one()


def test_under_concurrency_every_high_priority_job_is_taken_before_any_low_one(kit: Kit) -> None:
    kit = with_types(kit)
    total, concurrency = 60, 4
    # One batch: every job due at the same instant; each high one created
    # after a low one.
    start(kit, *(task({"n": n}, priority=HIGH if n % 2 else LOW) for n in range(total)))
    ran: list[int] = []
    seen_by_low: list[int] = []
    finished = threading.Event()
    worker = kit.worker(concurrency=concurrency, poll_interval=dt.timedelta(milliseconds=50))
    lock = threading.Lock()

    @worker.handler(task, on_thread=True)
    def handle(attempt: Any) -> q.Outcome:
        n = attempt.input["n"]
        with lock:
            ran.append(n)
        if attempt.job.priority == LOW:
            seen_by_low.append(untaken_high_jobs(kit.db))
        time.sleep(0.002)  # long enough for the other slots to acquire meanwhile
        with lock:
            if len(ran) == total:
                finished.set()
        return attempt.complete(n)

    worker.start()
    try:
        assert finished.wait(DEADLINE_S)
    finally:
        assert worker.stop()
    assert sorted(ran) == list(range(total))
    # No low job was taken while a high one waited untaken...
    assert seen_by_low == [0] * (total // 2)
    # ...so when the first low one started, every high one had started, but
    # for those other slots had taken and not yet begun.
    assert all(n % 2 for n in ran[: total // 2 - (concurrency - 1)]), ran


def test_a_group_takes_the_highest_priorities_first(kit: Kit) -> None:
    kit = with_types(kit)
    start(kit, *(task({"n": n}) for n in range(15)))
    start(kit, *(task({"n": 100 + n}, priority=HIGH) for n in range(15)))
    worker = kit.worker()
    ran: list[int] = []

    @worker.handler(task, batch=10)
    def handle(attempt: Any) -> q.Outcome:
        ran.append(attempt.input["n"])
        return attempt.complete(attempt.input["n"])

    assert worker.drain() == 30
    # Three groups of ten; the second holds the last five high ones, then five low.
    assert ran == [100 + n for n in range(15)] + list(range(15))


# --- what a job's priority is -----------------------------------------------------


def continuing_worker(kit: Kit) -> Any:
    worker = kit.worker()

    @worker.handler(hop)
    def handle_hop(attempt: Any) -> q.Outcome:
        given = attempt.input["next_priority"]
        options = {} if given is None else {"priority": given}
        return attempt.continue_with(landing, {"n": attempt.input["n"]}, **options)

    @worker.handler(landing)
    def handle_landing(attempt: Any) -> q.Outcome:
        return attempt.complete(attempt.job.priority)

    return worker


def test_a_continuation_inherits_its_jobs_priority_unless_given(kit: Kit) -> None:
    kit = with_types(kit)
    inherits, overrides, default = start(
        kit,
        hop({"n": 1, "next_priority": None}, priority=7),
        hop({"n": 2, "next_priority": -2}, priority=7),
        hop({"n": 3, "next_priority": None}),
    )
    assert (inherits.priority, overrides.priority, default.priority) == (7, 7, 0)

    assert continuing_worker(kit).drain() == 6

    client = kit.client
    assert [client.get_chain(c.id).output for c in (inherits, overrides, default)] == [7, -2, 0]
    jobs = client.list_chain_jobs(overrides.id).items
    assert [(j.type_name, j.priority) for j in jobs] == [("prio-hop", 7), ("prio-landing", -2)]
    assert client.get_chain(overrides.id).priority == -2


def test_a_workerless_continuation_inherits_too(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        kept = client.start_chain(s, hop, {"n": 1, "next_priority": None}, priority=4)
        given = client.start_chain(s, hop, {"n": 2, "next_priority": None}, priority=4)
    with Session(db.engine) as s, s.begin():
        chain = client.complete_chain(s, kept.id, hop, lambda c: c.continue_with(landing, {"n": 1}))
        assert chain.priority == 4
        chain = client.complete_chain(
            s, given.id, hop, lambda c: c.continue_with(landing, {"n": 2}, priority=9)
        )
        assert chain.priority == 9
    assert [j.priority for j in client.list_chain_jobs(kept.id).items] == [4, 4]
    assert [j.priority for j in client.list_chain_jobs(given.id).items] == [4, 9]


def test_priorities_in_a_start_chains_batch_are_kept_per_chain(kit: Kit) -> None:
    kit = with_types(kit)
    chains = start(
        kit,
        task({"n": 1}),
        task({"n": 2}, priority=2**31 - 1),
        q.ChainStart(task, {"n": 3}, priority=-(2**31)),
        q.ChainStart(task, {"n": 4}, priority=5),
    )
    expected = [0, 2**31 - 1, -(2**31), 5]
    assert [c.priority for c in chains] == expected
    assert [kit.client.get_job(c.id).priority for c in chains] == expected
    ran: list[int] = []

    assert recording(kit, ran).drain() == 4

    assert ran == [2, 4, 1, 3]


def test_a_deduplicated_start_keeps_the_existing_chains_priority(kit: Kit) -> None:
    kit = with_types(kit)
    (first,) = start(kit, task({"n": 1}, priority=3, dedup=q.Dedup("k")))
    again, batched, other = start(
        kit,
        task({"n": 2}, priority=9, dedup=q.Dedup("k")),
        task({"n": 3}, priority=9, dedup=q.Dedup("new")),
        task({"n": 4}, priority=1, dedup=q.Dedup("new")),
    )

    assert (again.id, again.deduplicated, again.priority) == (first.id, True, 3)
    assert (batched.deduplicated, batched.priority) == (False, 9)
    assert (other.id, other.deduplicated, other.priority) == (batched.id, True, 9)
    assert kit.client.get_job(first.id).priority == 3
    assert job_count(kit.db) == 2


def test_unblocking_keeps_the_priority(kit: Kit) -> None:
    kit = with_types(kit)
    (blocker,) = start(kit, gate({"n": 0}))
    (plain,) = start(kit, gated({"n": 2}, blockers=[blocker]))
    (waiting,) = start(kit, gated({"n": 1}, priority=6, blockers=[blocker]))
    assert kit.client.get_job(waiting.id).status == "blocked"
    worker = kit.worker()
    ran: list[int] = []

    @worker.handler(gate)
    def handle_gate(attempt: Any) -> q.Outcome:
        return attempt.complete(0)

    @worker.handler(gated)
    def handle_gated(attempt: Any) -> q.Outcome:
        ran.append(attempt.input["n"])
        return attempt.complete(attempt.input["n"])

    assert worker.drain() == 3
    # Both became due at once, when the gate completed: the priority decides.
    assert kit.client.get_job(waiting.id).priority == 6
    assert kit.client.get_job(plain.id).priority == 0
    assert ran == [1, 2]


# --- refused ----------------------------------------------------------------------

BAD_PRIORITIES = [True, False, 1.5, "5", [5], 2**31, -(2**31) - 1]


@pytest.mark.parametrize("bad", BAD_PRIORITIES, ids=repr)
def test_an_invalid_priority_is_refused_before_any_sql(db: Db, bad: Any) -> None:
    client = q.Queuert(db.engine, types)
    statements: list[str] = []
    with Session(db.engine) as s, s.begin():
        event.listen(s.connection(), "before_cursor_execute", lambda *a: statements.append(a[2]))
        with pytest.raises(q.InvalidPriorityError, match=r"prio-task.*pass") as info:
            client.start_chain(s, task, {"n": 1}, priority=bad)
        assert info.value.type_name == "prio-task"
        assert info.value.value is bad
        # One bad start in a batch: nothing of the batch is written.
        with pytest.raises(q.InvalidPriorityError):
            client.start_chains(s, [task({"n": 2}), task({"n": 3}, priority=bad)])
    assert statements == []
    assert job_count(db) == 0


def test_an_invalid_continuation_priority_is_refused(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, hop, {"n": 1, "next_priority": None})
    too_big = pytest.raises(q.InvalidPriorityError, match=r"'prio-landing'.*2147483648.*INTEGER")
    with Session(db.engine) as s, s.begin(), too_big:
        client.complete_chain(
            s, chain.id, hop, lambda c: c.continue_with(landing, {"n": 1}, priority=2**31)
        )
    assert job_count(db) == 1


def test_the_refusal_says_what_to_pass(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin(), pytest.raises(q.InvalidPriorityError) as info:
        client.start_chain(s, task, {"n": 1}, priority=True)
    assert str(info.value) == (
        "Job of type 'prio-task': priority=True is a bool; pass an int (higher runs first, "
        "default 0), e.g. priority=10."
    )


# --- the plan (PostgreSQL) --------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


@pytest.mark.parametrize("batch", [1, 10], ids=["single", "many"])
def test_acquisition_reads_the_index_in_order_without_sorting(pg: Db, batch: int) -> None:
    """The statement a worker sends, EXPLAINed: the acquisition index, no Sort node."""
    with pg.engine.begin() as conn:
        # Many due rows of mixed priorities, some due later (what the scan must pass).
        conn.execute(
            text(
                "INSERT INTO queuert_job (id, type_name, chain_id, chain_type_name, chain_index, "
                "input, status, created_at, scheduled_at, attempt, priority) "
                "SELECT g.id, 'prio-task', g.id, 'prio-task', 0, '{\"n\": 0}', 'pending', now(), "
                "now() + (CASE WHEN g.n % 10 = 0 THEN interval '1 hour' ELSE interval '0' END), "
                "0, g.n % 7 FROM (SELECT gen_random_uuid() AS id, n "
                "FROM generate_series(1, 20000) n) g"
            )
        )
        conn.execute(text("ANALYZE queuert_job"))
    client = q.Queuert(pg.engine, types)
    worker = client.worker()
    worker.handler(task, batch=batch)(lambda attempt: attempt.complete(0))
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if "SKIP LOCKED" in statement and statement.lstrip().startswith("UPDATE"):
            sent.append((statement, params))

    # A listener also moves the statement off the driver cursor, onto SQLAlchemy's path.
    event.listen(pg.engine, "before_cursor_execute", capture)
    try:
        assert worker.drain(max_jobs=batch) == batch
    finally:
        event.remove(pg.engine, "before_cursor_execute", capture)
    assert sent
    statement, params = sent[0]
    with pg.engine.connect() as conn:
        (plan,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).scalar_one()
    nodes = _plan_nodes(plan["Plan"])
    kinds = [node["Node Type"] for node in nodes]
    assert "Sort" not in kinds, kinds
    assert "Incremental Sort" not in kinds, kinds
    scans = [node for node in nodes if node.get("Index Name") == "queuert_job_acquisition_idx"]
    assert scans, kinds
    assert scans[0]["Node Type"] == "Index Scan"
