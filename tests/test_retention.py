"""cleanup: batched retention of completed chains.

Pinned here, on SQLite and PostgreSQL, with an injected clock instead of
waiting: only chains whose every job completed before ``now - older_than``
go (open chains, recently completed ones and chains completed exactly at the
cutoff stay); a completed blocker stays while a kept chain (open, recent, or
of a type outside ``types=``) declares it, and goes with its dependent when
both are old; ``types=`` narrows by chain type; batches run until done
(``max_batches`` stops early), kept chains at the head of the order do not end
the run, a second run deletes nothing; and a 100,000-chain backlog is cleaned
in batches of 5,000 (times printed with ``pytest -s``).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import uuid
from typing import Any, TypedDict

import pytest
from sqlalchemy import Connection, event, func, insert, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
import queuert_sa._transitions as transitions
from queuert_sa.models import DEFAULT_MODELS, Job, JobBlocker
from queuert_sa.state import removal

from .conftest import Db
from .test_worker import FakeClock

DAY = dt.timedelta(days=1)


class SourceIn(TypedDict):
    source: str


types = q.JobTypes()
fetch = types.entry("fetch", input=SourceIn, output=int)
report = types.entry("report", input=SourceIn, output=int, blockers=q.many(fetch))
audit = types.entry("audit", input=SourceIn, output=int, blockers=q.many(fetch))
idle = types.entry("idle", input=SourceIn, output=int)  # never handled: stays open
steps = types.entry("steps", input=SourceIn, continues_with=["steps-2"])
steps_2 = types.define("steps-2", input=SourceIn, output=int)


def setup(db: Db) -> tuple[q.Queuert, FakeClock]:
    clock = FakeClock()
    return q.Queuert(db.engine, types, clock=clock), clock


def start(
    client: q.Queuert,
    db: Db,
    job_type: q.JobType[SourceIn, Any],
    source: str,
    blockers: list[Any] | None = None,
    run_in: dt.timedelta | None = None,
) -> q.Chain[SourceIn, Any]:
    with Session(db.engine) as s, s.begin():
        if blockers:
            return client.start_chain(s, job_type, {"source": source}, blockers=blockers)
        return client.start_chain(s, job_type, {"source": source}, run_in=run_in)


def run_due(client: q.Queuert) -> int:
    """Run every due job. Chains whose input starts with "open" are put off for a year,
    a "late" chain's second step is due 36 hours after its first."""
    worker = client.worker()

    def finish(attempt: q.Attempt[SourceIn, int]) -> q.Outcome:
        if attempt.input["source"].startswith("open"):
            raise q.Reschedule(run_in=365 * DAY, reason="not yet")
        return attempt.complete(len(attempt.input["source"]))

    def first_step(attempt: q.Attempt[SourceIn, None]) -> q.Outcome:
        source = attempt.input["source"]
        delay = dt.timedelta(hours=36) if source == "late" else dt.timedelta(0)
        return attempt.continue_with(steps_2, {"source": source}, run_in=delay)

    for job_type in (fetch, report, audit, steps_2):
        worker.handler(job_type)(finish)
    worker.handler(steps)(first_step)
    return worker.drain()


def chain_ids(db: Db) -> set[uuid.UUID]:
    with Session(db.engine) as s:
        return set(s.scalars(select(Job.chain_id).distinct()))


def job_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def blocker_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(JobBlocker)).scalar_one()


def test_only_chains_finished_before_the_cutoff_go(db: Db) -> None:
    client, clock = setup(db)
    old = start(client, db, fetch, "old")
    old_multi = start(client, db, steps, "multi")
    open_old = start(client, db, idle, "never run")
    rescheduled = start(client, db, fetch, "open: retried later")
    blocker_of_open = start(client, db, fetch, "blocker of an open dependent")
    open_dependent = start(client, db, report, "open dependent", blockers=[blocker_of_open])
    blocker_of_old = start(client, db, fetch, "blocker of an old dependent")
    old_dependent = start(client, db, report, "old dependent", blockers=[blocker_of_old])
    late = start(client, db, steps, "late")  # first step old, second step recent
    blocker_of_recent = start(client, db, fetch, "blocker of a recent dependent")
    late_fetch = start(client, db, fetch, "late fetch", run_in=dt.timedelta(hours=36))
    recent_dependent = start(
        client, db, report, "recent dependent", blockers=[blocker_of_recent, late_fetch]
    )
    assert run_due(client) == 10  # the idle chain never runs
    assert client.get_chain(old_multi.id).status == "completed"
    assert client.get_chain(old_dependent.id).status == "completed"
    assert client.get_chain(open_dependent.id).status == "pending"
    assert client.get_chain(late.id).status == "pending"

    clock.advance(dt.timedelta(hours=36))
    recent = start(client, db, fetch, "recent")
    assert run_due(client) == 4  # recent, late's second step, late fetch, recent dependent
    assert client.get_chain(late.id).status == "completed"
    assert client.get_chain(recent_dependent.id).status == "completed"
    clock.advance(dt.timedelta(hours=12))  # now = start + 2 days; cutoff = start + 1 day

    deleted = client.cleanup(older_than=DAY)
    assert deleted == 4
    assert chain_ids(db) == {
        open_old.id,
        rescheduled.id,
        blocker_of_open.id,
        open_dependent.id,
        late.id,
        recent.id,
        blocker_of_recent.id,  # completed long ago, but its dependent only recently
        late_fetch.id,
        recent_dependent.id,
    }
    assert job_count(db) == 10  # late has two jobs
    assert blocker_count(db) == 3  # the open dependent's and the recent dependent's
    for gone in (old, old_multi, blocker_of_old, old_dependent):
        with pytest.raises(q.ChainNotFoundError):
            client.get_chain(gone.id)
    # The kept dependent still reads its blocker's output when it finally runs.
    assert [c.id for c in client.get_job_blockers(open_dependent.id)] == [blocker_of_open.id]
    assert client.cleanup(older_than=DAY) == 0  # idempotent


def test_a_chain_completed_exactly_at_the_cutoff_is_kept(db: Db) -> None:
    client, clock = setup(db)
    chain = start(client, db, fetch, "edge")
    assert run_due(client) == 1
    completed_at = client.get_chain(chain.id).completed_at
    assert completed_at == clock.now
    clock.advance(DAY)
    assert client.cleanup(older_than=DAY) == 0  # completed at now - older_than: not before it
    clock.advance(dt.timedelta(microseconds=1))
    assert client.cleanup(older_than=DAY) == 1
    assert chain_ids(db) == set()
    # older_than=0: everything completed before now goes, open chains stay.
    open_chain = start(client, db, idle, "open")
    done = start(client, db, fetch, "done")
    run_due(client)
    clock.advance(dt.timedelta(microseconds=1))
    assert client.cleanup(older_than=dt.timedelta(0)) == 1
    assert chain_ids(db) == {open_chain.id}
    assert done.id not in chain_ids(db)


def test_an_old_blocker_goes_with_its_old_dependent_even_in_separate_batches(db: Db) -> None:
    client, clock = setup(db)
    blockers = [start(client, db, fetch, f"b{i}") for i in range(3)]
    dependent = start(client, db, report, "r", blockers=blockers)
    assert run_due(client) == 4
    clock.advance(2 * DAY)
    # batch_size=1: each blocker is examined before its dependent is.
    assert client.cleanup(older_than=DAY, batch_size=1) == 4
    assert chain_ids(db) == set()
    assert blocker_count(db) == 0
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(dependent.id)


def test_types_narrow_the_cleanup_and_blockers_of_other_types_dependents_stay(db: Db) -> None:
    client, clock = setup(db)
    lone_fetch = start(client, db, fetch, "lone")
    needed_by_report = start(client, db, fetch, "for report")
    old_report = start(client, db, report, "report", blockers=[needed_by_report])
    needed_by_audit = start(client, db, fetch, "for audit")
    old_audit = start(client, db, audit, "audit", blockers=[needed_by_audit])
    open_chain = start(client, db, idle, "open")
    assert run_due(client) == 5
    clock.advance(2 * DAY)
    everything = chain_ids(db)

    # Only fetch chains; the ones a report or audit (not cleaned: another type) needs stay.
    assert client.cleanup(older_than=DAY, types=[fetch]) == 1
    assert chain_ids(db) == everything - {lone_fetch.id}
    # Reports and their fetch blockers together; the audit's blocker still stays.
    assert client.cleanup(older_than=DAY, types=["report", fetch]) == 2
    assert chain_ids(db) == {needed_by_audit.id, old_audit.id, open_chain.id}
    assert client.cleanup(older_than=DAY, types=[fetch, report]) == 0
    # Once the audit is gone, its blocker can go too.
    assert client.cleanup(older_than=DAY, types=[audit]) == 1
    assert client.cleanup(older_than=DAY, types=[fetch]) == 1
    assert chain_ids(db) == {open_chain.id}
    assert client.cleanup(older_than=DAY, types=[idle]) == 0
    assert chain_ids(db) == {open_chain.id}
    assert old_report.id not in chain_ids(db)


def test_batches_run_until_done_and_max_batches_stops_early(db: Db) -> None:
    client, clock = setup(db)
    first = [start(client, db, fetch, f"first {i}") for i in range(7)]
    assert run_due(client) == 7
    clock.advance(2 * DAY)
    assert client.cleanup(older_than=DAY, batch_size=2) == 7
    assert chain_ids(db) == set()

    second = [start(client, db, fetch, f"second {i}") for i in range(7)]
    assert run_due(client) == 7
    clock.advance(2 * DAY)
    assert client.cleanup(older_than=DAY, batch_size=2, max_batches=1) == 2
    assert chain_ids(db) == {c.id for c in second[2:]}  # the oldest go first
    assert client.cleanup(older_than=DAY, batch_size=2, max_batches=2) == 4
    assert client.cleanup(older_than=DAY, batch_size=2) == 1
    assert client.cleanup(older_than=DAY, batch_size=2) == 0
    assert chain_ids(db) == set()
    assert first[0].id != second[0].id


def test_kept_chains_at_the_head_of_the_order_do_not_end_the_run(db: Db) -> None:
    client, clock = setup(db)
    needed = [start(client, db, fetch, f"needed {i}") for i in range(3)]
    waiting = start(client, db, report, "open report", blockers=needed)
    eligible = [start(client, db, fetch, f"eligible {i}") for i in range(3)]
    assert run_due(client) == 7  # the report is put off: open
    clock.advance(2 * DAY)
    # The first batches hold only kept chains (the open report's blockers).
    assert client.cleanup(older_than=DAY, batch_size=2) == 3
    assert chain_ids(db) == {waiting.id, *(c.id for c in needed)}
    assert eligible[0].id not in chain_ids(db)


def test_cleanup_refuses_bad_arguments(db: Db) -> None:
    client, _ = setup(db)
    with pytest.raises(ValueError, match=r"older_than must not be negative"):
        client.cleanup(older_than=-DAY)
    with pytest.raises(ValueError, match=r"at least 1"):
        client.cleanup(older_than=DAY, batch_size=0)
    with pytest.raises(ValueError, match=r"at least 1"):
        client.cleanup(older_than=DAY, max_batches=0)
    # Each batch's ids are bound parameters (PostgreSQL takes at most 65,535).
    with pytest.raises(ValueError, match=r"between 1 and 10000"):
        client.cleanup(older_than=DAY, batch_size=10_001)
    with pytest.raises(TypeError, match=r"wrap a single one"):
        client.cleanup(older_than=DAY, types=fetch)  # type: ignore[arg-type]


# --- volume ----------------------------------------------------------------------------

OLD_CHAINS = 100_000
BATCH = 5000


def volume_rows(now: dt.datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[Any]]:
    """100,000 old completed chains, and kept ones interleaved in the same time range:
    1,000 old open, 1,000 completed recently, 200 old blockers of 200 open dependents."""
    jobs: list[dict[str, Any]] = []
    blockers: list[dict[str, Any]] = []
    kept: set[uuid.UUID] = set()
    old_start = now - 30 * DAY

    def job(type_name: str, at: dt.datetime, completed: dt.datetime | None) -> uuid.UUID:
        job_id = uuid.uuid4()
        jobs.append(
            {
                "id": job_id,
                "type_name": type_name,
                "chain_id": job_id,
                "chain_type_name": type_name,
                "chain_index": 0,
                "input": {"source": "v"},
                "output": 1 if completed else None,
                "status": "completed" if completed else "pending",
                "created_at": at,
                "scheduled_at": at,
                "completed_at": completed,
                "attempt": 1 if completed else 0,
            }
        )
        return job_id

    for i in range(OLD_CHAINS):
        at = old_start + dt.timedelta(milliseconds=10 * i)
        job("fetch", at, at + dt.timedelta(seconds=1))
        if i % 100 == 50:  # 1,000 old open chains
            kept.add(job("idle", at, None))
        if i % 100 == 70:  # 1,000 chains started old, completed within the last day
            kept.add(job("fetch", at, now - dt.timedelta(hours=1)))
        if i % 500 == 10:  # 200 old completed blockers of open dependents
            blocker = job("fetch", at, at + dt.timedelta(seconds=1))
            dependent = job("report", at + dt.timedelta(seconds=2), None)
            blockers.append({"job_id": dependent, "blocked_by_chain_id": blocker, "index": 0})
            kept |= {blocker, dependent}
    return jobs, blockers, kept


@pytest.mark.slow
def test_cleanup_of_a_100k_chain_backlog_in_batches_of_5000(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    jobs, blockers, kept = volume_rows(clock.now)
    began = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(insert(Job.__table__), jobs)
        conn.execute(insert(JobBlocker.__table__), blockers)
    with db.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    inserted = time.perf_counter() - began
    assert len(kept) == 2400
    assert job_count(db) == OLD_CHAINS + 2400

    began = time.perf_counter()
    deleted = client.cleanup(older_than=DAY, batch_size=BATCH)
    elapsed = time.perf_counter() - began
    print(
        f"\n{db.kind}: inserted {len(jobs):,} rows in {inserted:.1f} s; cleanup deleted "
        f"{deleted:,} chains in {elapsed:.1f} s ({deleted / elapsed:,.0f} chains/s, "
        f"batch_size={BATCH})"
    )
    assert deleted == OLD_CHAINS
    assert chain_ids(db) == kept
    assert blocker_count(db) == 200
    assert client.cleanup(older_than=DAY, batch_size=BATCH) == 0


# --- query plans of the cleanup statements ------------------------------------------------


def explain_retention(conn: Connection, kind: str, call: Any) -> list[str]:
    """EXPLAIN each SELECT that ``call(conn)`` runs; the plans."""
    statements: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", capture)
    try:
        call(conn)
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    plans = []
    prefix = "EXPLAIN " if kind == "postgresql" else "EXPLAIN QUERY PLAN "
    for sql, params in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = conn.exec_driver_sql(prefix + sql, params).all()
            column = 0 if kind == "postgresql" else 3
            plans.append("\n".join(str(row[column]) for row in rows))
    return plans


def test_cleanup_batches_walk_the_chain_index_without_reading_the_whole_backlog(db: Db) -> None:
    """Each batch must cost the batch, not the backlog: the candidates are read in
    (created_at, id) order from the chain listing index, starting after the previous
    batch's key, and the walk stops at the batch size. A plan that collects every
    remaining candidate and sorts them, starts each batch's walk at the oldest chain,
    or scans the whole job table for the completion check makes a cleanup of N
    chains cost O(N^2 / batch_size). Run with ``pytest -s`` to read the plans."""
    clock = FakeClock()
    jobs, blockers, _ = volume_rows(clock.now)
    jobs = jobs[: len(jobs) // 5]  # 20,000 chains are enough for the planner
    wanted = {j["id"] for j in jobs}
    blockers = [b for b in blockers if b["job_id"] in wanted]
    with db.engine.begin() as conn:
        conn.execute(insert(Job.__table__), jobs)
        conn.execute(insert(JobBlocker.__table__), blockers)
    with db.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    caps = q.Queuert(db.engine, types).capabilities
    middle = jobs[len(jobs) // 2]
    cutoff = clock.now - DAY
    problems: list[str] = []
    with db.engine.connect() as conn:
        for after in (None, (middle["created_at"], middle["id"])):
            plans = explain_retention(
                conn,
                db.kind,
                lambda c, after=after: removal.retention_candidates(
                    c,
                    DEFAULT_MODELS,
                    caps,
                    cutoffs={"completed": cutoff},
                    type_names=None,
                    after=after,
                    limit=1000,
                ),
            )
            for plan in plans:
                label = "first batch" if after is None else "a later batch"
                print(f"\n--- {db.kind}: retention_candidates, {label}\n{plan}")
                if db.kind == "postgresql":
                    if re.search(r"Seq Scan on queuert_job\b", plan):
                        problems.append(f"{label}: Seq Scan on queuert_job")
                    if re.search(r"^\s*(->\s*)?Sort\b", plan, re.MULTILINE):
                        problems.append(f"{label}: sorts every remaining candidate")
                    bounded = r"Index Cond: .*(ROW\(created_at, id\) >|created_at >)"
                    if after is not None and not re.search(bounded, plan):
                        problems.append(
                            f"{label}: the index walk starts at the oldest chain; the "
                            "previous batch's key is only a Filter"
                        )
                else:
                    if re.search(r"^SCAN (queuert_job|step)$", plan, re.MULTILINE):
                        problems.append(f"{label}: full scan of queuert_job")
                    if "TEMP B-TREE FOR ORDER BY" in plan:
                        problems.append(f"{label}: sorts every remaining candidate")
        conn.rollback()
    assert not problems, f"{db.kind}: {problems}"


def test_cleanup_skips_a_chain_a_producer_is_attaching_as_a_blocker(
    pg: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a producer holds an old completed chain's latest job while it attaches
    the chain as a blocker (its blocker row's foreign key then needs the first job).
    cleanup neither deadlocks with it nor deletes the chain from under it: the chain is
    skipped, and goes with its dependent once both are old."""
    local = q.JobTypes()
    two = local.entry("two", input=SourceIn, continues_with=["two-2"])
    two_2 = local.define("two-2", input=SourceIn, output=int)
    needs = local.entry("needs", input=SourceIn, output=int, blockers=q.many(two))
    clock = FakeClock()
    client = q.Queuert(pg.engine, local, clock=clock)
    with Session(pg.engine) as s, s.begin():
        held = client.start_chain(s, two, {"source": "c"})
    with Session(pg.engine) as s, s.begin():
        client.complete_chain(s, held.id, two, lambda c: c.continue_with(two_2, {"source": "c"}))
    with Session(pg.engine) as s, s.begin():
        client.complete_chain(s, held.id, two, lambda c: c.complete(1))
    clock.advance(2 * DAY)
    assert job_count(pg) == 2

    read_blocker_chains = transitions.ops_blockers.read_blocker_chains
    producer_read = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        found = read_blocker_chains(*args, **kwargs)
        if threading.current_thread() is producer:
            producer_read.set()
            time.sleep(0.7)  # widen the window between the lock and the INSERT
        return found

    monkeypatch.setattr(transitions.ops_blockers, "read_blocker_chains", slow)
    outcome: list[object] = []

    def attach() -> None:
        try:
            with Session(pg.engine) as s, s.begin():
                outcome.append(client.start_chain(s, needs, {"source": "d"}, blockers=[held]))
        except BaseException as exc:
            outcome.append(exc)

    producer = threading.Thread(target=attach)
    producer.start()
    try:
        assert producer_read.wait(10)
        assert client.cleanup(older_than=DAY) == 0  # held by the producer: skipped
    finally:
        producer.join(20)
    assert len(outcome) == 1
    dependent = outcome[0]
    assert isinstance(dependent, q.Chain)
    assert dependent.status == "pending"  # its blocker is completed
    assert chain_ids(pg) == {held.id, dependent.id}
    assert job_count(pg) == 3
    assert blocker_count(pg) == 1

    monkeypatch.undo()
    with Session(pg.engine) as s, s.begin():
        client.complete_chain(s, dependent.id, needs, lambda c: c.complete(2))
    assert client.cleanup(older_than=DAY) == 0  # the dependent is recent
    clock.advance(2 * DAY)
    assert client.cleanup(older_than=DAY) == 2
    assert chain_ids(pg) == set()
    assert blocker_count(pg) == 0
