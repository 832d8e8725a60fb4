"""Blockers (fan-in): a job waits for other chains to complete."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
import queuert_sa._transitions as transitions
from queuert_sa.models import Job

from .conftest import Db, make_db
from .test_worker import FakeClock


class SourceIn(TypedDict):
    source: str


class Rows(TypedDict):
    rows: int


class ReportIn(TypedDict):
    title: str


types = q.JobTypes()
fetch_a = types.entry("fetch-a", input=SourceIn, output=Rows)
fetch_b = types.entry("fetch-b", input=SourceIn, output=Rows)
fetch_extra = types.entry("fetch-extra", input=SourceIn, output=Rows)
report = types.entry(
    "report", input=ReportIn, output=dict, blockers=[fetch_a, fetch_b, q.many(fetch_extra)]
)
merge = types.entry("merge", input=ReportIn, output=dict, blockers=q.many(fetch_a))
plan = types.entry("plan", input=ReportIn, continues_with=["merge-step"])
merge_step = types.define("merge-step", input=ReportIn, output=dict, blockers=[fetch_a])


def worker_for(client: q.Queuert, **options: Any) -> q.Worker:
    worker = client.worker(**options)
    for fetch in (fetch_a, fetch_b, fetch_extra):
        worker.handler(fetch)(lambda a: a.complete({"rows": len(a.input["source"])}))

    def summarize(attempt: q.Attempt[ReportIn, dict]) -> q.Outcome:  # type: ignore[type-arg]
        return attempt.complete(
            {
                "title": attempt.input["title"],
                "from": [(c.type_name, c.input["source"], c.output) for c in attempt.blockers],
            }
        )

    worker.handler(report)(summarize)
    worker.handler(merge)(summarize)
    worker.handler(merge_step)(summarize)
    return worker


def start_fetch(
    client: q.Queuert, s: Session, job_type: q.JobType[SourceIn, Rows], source: str
) -> q.Chain[SourceIn, Any]:
    return client.start_chain(s, job_type, {"source": source})


def test_fixed_and_variadic_slots_fan_in_in_slot_order(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "aa")
        b = start_fetch(client, s, fetch_b, "bbb")
        x1 = start_fetch(client, s, fetch_extra, "x")
        x2 = start_fetch(client, s, fetch_extra, "xxxx")
        dependent = client.start_chain(s, report, {"title": "q3"}, blockers=[a, b, x1, x2.id])
    assert dependent.status == "blocked"
    assert [c.id for c in client.get_job_blockers(dependent.id)] == [a.id, b.id, x1.id, x2.id]

    worker = worker_for(client)
    assert worker.drain(max_jobs=3) == 3  # three of the four blockers
    assert client.get_chain(dependent.id).status == "blocked"
    assert worker.drain() == 2  # the last blocker, then the unblocked report
    done = client.get_chain(dependent.id)
    assert done.status == "completed"
    assert done.output == {
        "title": "q3",
        "from": [
            ["fetch-a", "aa", {"rows": 2}],
            ["fetch-b", "bbb", {"rows": 3}],
            ["fetch-extra", "x", {"rows": 1}],
            ["fetch-extra", "xxxx", {"rows": 4}],
        ],
    }


def test_completed_blockers_start_the_dependent_pending(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
    worker = worker_for(client)
    worker.drain()
    with Session(db.engine) as s, s.begin():
        dependent = client.start_chain(s, merge, {"title": "t"}, blockers=[a])
    assert dependent.status == "pending"
    assert worker.drain() == 1
    assert client.get_chain(dependent.id).output == {
        "title": "t",
        "from": [["fetch-a", "a", {"rows": 1}]],
    }


def test_continuation_can_wait_for_blockers(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "aaa")
        chain = client.start_chain(s, plan, {"title": "p"})
    worker = worker_for(client)
    worker.handler(plan)(lambda att: att.continue_with(merge_step, {"title": "p"}, blockers=[a.id]))
    assert worker.drain(max_jobs=1) >= 1  # plan or fetch-a first, by scheduled order
    worker.drain()
    done = client.get_chain(chain.id)
    assert done.status == "completed"
    assert done.output == {"title": "p", "from": [["fetch-a", "aaa", {"rows": 3}]]}


def test_a_failing_blocker_keeps_the_dependent_blocked(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    with Session(db.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
        dependent = client.start_chain(s, merge, {"title": "t"}, blockers=[a])
    worker = client.worker()
    worker.handler(fetch_a)(lambda att: (_ for _ in ()).throw(ConnectionError("source down")))
    worker.handler(merge)(lambda att: att.complete({}))
    for _ in range(3):
        assert worker.drain() == 1  # the blocker fails; the dependent is never due
        assert client.get_chain(dependent.id).status == "blocked"
        clock.advance(dt.timedelta(minutes=10))
    assert client.get_job(a.id).attempt == 3


def test_blocker_completing_while_the_dependent_starts(pg: Db) -> None:
    """The blocker's attempt holds its row; starting the dependent waits, then sees it done."""
    client = q.Queuert(pg.engine, types)
    with Session(pg.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
    in_handler, release = threading.Event(), threading.Event()
    worker = client.worker()

    @worker.handler(fetch_a)
    def slow(attempt: q.Attempt[SourceIn, Rows]) -> q.Outcome:
        in_handler.set()
        assert release.wait(10)
        return attempt.complete({"rows": 1})

    runner = threading.Thread(target=worker.drain, kwargs={"max_jobs": 1})
    runner.start()
    assert in_handler.wait(10)
    started: list[q.Chain[ReportIn, Any]] = []

    def start_dependent() -> None:
        with Session(pg.engine) as s, s.begin():
            started.append(client.start_chain(s, merge, {"title": "race"}, blockers=[a]))

    starter = threading.Thread(target=start_dependent)
    starter.start()
    starter.join(0.5)
    assert starter.is_alive(), "starting the dependent should wait for the blocker's row lock"
    release.set()
    runner.join(10)
    starter.join(10)
    assert started[0].status == "pending"  # it saw the blocker completed
    assert client.get_chain(started[0].id).status == "pending"


def test_dependent_started_first_is_unblocked_by_the_blocker(pg: Db) -> None:
    """The starter holds the blocker's row; the worker skips it until the starter commits."""
    client = q.Queuert(pg.engine, types)
    with Session(pg.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
    worker = worker_for(client)
    with Session(pg.engine) as s, s.begin():
        dependent = client.start_chain(s, merge, {"title": "t"}, blockers=[a])
        assert worker.drain() == 0  # the blocker's row is locked by this transaction
    assert worker.drain() == 2
    assert client.get_chain(dependent.id).status == "completed"


def test_two_blockers_completing_at_once_unblock_the_dependent(pg: Db) -> None:
    client = q.Queuert(pg.engine, types)
    with Session(pg.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
        b = start_fetch(client, s, fetch_a, "b")
        dependent = client.start_chain(s, merge, {"title": "t"}, blockers=[a, b])
    together = threading.Barrier(2, timeout=10)
    worker = client.worker(concurrency=2, poll_interval=dt.timedelta(milliseconds=100))

    @worker.handler(fetch_a)
    def fetch(attempt: q.Attempt[SourceIn, Rows]) -> q.Outcome:
        together.wait()  # both attempts are open: neither sees the other completed
        return attempt.complete({"rows": 1})

    worker.handler(merge)(lambda att: att.complete({"n": len(att.blockers)}))
    worker.handler(fetch_b)(lambda att: att.complete({"from": "b"}))
    worker.start()
    try:
        done = client.await_chain(dependent.id, timeout=dt.timedelta(seconds=20))
    finally:
        assert worker.stop()
    assert done.output == {"n": 2}


@pytest.fixture
def statements(db: Db) -> Any:
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield sent
    event.remove(db.engine, "before_cursor_execute", record)


def test_blocker_count_is_checked_before_any_sql(db: Db, statements: list[str]) -> None:
    client = q.Queuert(db.engine, types)
    some = uuid.uuid4()
    with Session(db.engine) as s:
        with pytest.raises(q.InvalidBlockersError, match="at least 2"):
            client.start_chain(s, report, {"title": "t"}, blockers=[some])
        with pytest.raises(q.InvalidBlockersError, match="no blockers"):
            client.start_chain(s, fetch_a, {"source": "x"}, blockers=[some])
        with pytest.raises(q.InvalidBlockersError, match="two blocker slots"):
            client.start_chain(s, merge, {"title": "t"}, blockers=[some, some])
    assert statements == []


def test_blockers_must_exist_and_fit_their_slot(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        b = start_fetch(client, s, fetch_b, "b")
    with Session(db.engine) as s:
        with pytest.raises(q.InvalidBlockersError, match="does not exist"):
            client.start_chain(s, merge, {"title": "t"}, blockers=[uuid.uuid4()])
        s.rollback()
        with pytest.raises(q.InvalidBlockersError, match="takes a 'fetch-a' chain"):
            client.start_chain(s, merge, {"title": "t"}, blockers=[b])


def test_blocker_types_must_be_entry_types() -> None:
    bad = q.JobTypes()
    step = bad.define("step", input=dict)
    bad.entry("waits", input=dict, blockers=[step])
    with pytest.raises(q.InvalidJobTypesError, match="not an entry type"):
        bad.validate()
    with pytest.raises(q.InvalidJobTypesError, match="must be the last"):
        bad.entry("x", input=dict, blockers=[q.many(step), step])


def test_fan_in_example_runs() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-W", "error", "examples/fan_in.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "starts blocked" in result.stdout
    assert "processed 4 jobs; merge chain completed" in result.stdout
    assert "'total': 54" in result.stdout


multi_types = q.JobTypes()
step_one = multi_types.entry("step-one", input=SourceIn, continues_with=["step-two"])
step_two = multi_types.define("step-two", input=SourceIn, output=Rows)
single = multi_types.entry("single", input=SourceIn, output=Rows)
waiter = multi_types.entry("waiter", input=ReportIn, output=dict, blockers=[single])
both = multi_types.entry("both", input=ReportIn, output=dict, blockers=[step_one, single])


def test_unblocking_looks_at_each_blocker_chains_own_last_job(db: Db) -> None:
    # Once some blocker chain has continued (index 1), a dependent of an
    # unrelated single-job chain must still unblock: the "last job" of each
    # blocker chain is its own, not the highest index among all of them.
    client = q.Queuert(db.engine, multi_types)
    with Session(db.engine) as s, s.begin():
        long = client.start_chain(s, step_one, {"source": "long"})
        short = client.start_chain(s, single, {"source": "s"})
        only_short = client.start_chain(s, waiter, {"title": "w"}, blockers=[short])
        waits_both = client.start_chain(s, both, {"title": "b"}, blockers=[long, short])
    worker = client.worker()
    worker.handler(step_one)(lambda a: a.continue_with(step_two, {"source": a.input["source"]}))
    worker.handler(step_two)(lambda a: a.complete({"rows": 2}))
    worker.handler(single)(lambda a: a.complete({"rows": 1}))
    worker.handler(waiter)(lambda a: a.complete({"n": len(a.blockers)}))

    @worker.handler(both)
    def both_done(attempt: q.Attempt[ReportIn, dict]) -> q.Outcome:  # type: ignore[type-arg]
        return attempt.complete({"outputs": [c.output for c in attempt.blockers]})

    assert worker.drain(max_jobs=1) == 1  # step-one continues: chain "long" is at index 1
    worker.drain()
    assert client.get_chain(only_short.id).output == {"n": 1}
    assert client.get_chain(waits_both.id).output == {"outputs": [{"rows": 2}, {"rows": 1}]}


stress_types = q.JobTypes()
source = stress_types.entry("source", input=dict, output=dict, continues_with=["source-2"])
source_two = stress_types.define("source-2", input=dict, output=dict)
fan_in = stress_types.entry("fan-in", input=dict, output=dict, blockers=q.many(source))


@pytest.mark.slow
def test_producers_and_workers_under_load_do_not_deadlock(pg: Db) -> None:
    """Producers attach blockers while workers complete and continue those chains."""
    client = q.Queuert(pg.engine, stress_types)
    worker = client.worker(concurrency=6, poll_interval=dt.timedelta(milliseconds=100))
    worker.handler(source)(
        lambda a: a.continue_with(source_two, {}) if a.input["continue"] else a.complete({})
    )

    @worker.handler(source_two, mode="staged")
    def second(attempt: q.Attempt[dict, dict]) -> q.Outcome:  # type: ignore[type-arg]
        with attempt.prepare():
            pass
        with attempt.transaction():
            return attempt.complete({"second": True})

    worker.handler(fan_in)(lambda a: a.complete({"n": len(a.blockers)}))
    errors: list[BaseException] = []
    dependents: list[uuid.UUID] = []
    lock = threading.Lock()

    def produce(seed: int) -> None:
        try:
            for round_ in range(15):
                with Session(pg.engine) as s, s.begin():
                    sources = [
                        client.start_chain(s, source, {"continue": (seed + round_ + i) % 2 == 0})
                        for i in range(3)
                    ]
                with Session(pg.engine) as s, s.begin():
                    chain = client.start_chain(s, fan_in, {}, blockers=sources)
                with lock:
                    dependents.append(chain.id)
        except BaseException as exc:
            errors.append(exc)

    worker.start()
    try:
        producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join(60)
        assert errors == []
        for chain_id in dependents:
            done = client.await_chain(chain_id, timeout=dt.timedelta(seconds=60))
            assert done.output == {"n": 3}
    finally:
        assert worker.stop()
    assert len(dependents) == 60
    assert worker.failed == 0


def test_sqlite_writer_committing_between_the_blocker_read_and_the_insert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite (a file database): starting a chain with blockers takes the write lock
    before it reads the blockers. Another transaction that commits a write meanwhile
    waits for it, instead of the start failing with "database is locked" (a reader
    whose snapshot is stale cannot become the writer)."""
    db = make_db("sqlite", tmp_path)
    try:
        client = q.Queuert(db.engine, types)
        with Session(db.engine) as s, s.begin():
            a = start_fetch(client, s, fetch_a, "a")
        read_blocker_chains = transitions.ops_blockers.read_blocker_chains
        a_has_read = threading.Event()

        def slow(*args: Any, **kwargs: Any) -> Any:
            found = read_blocker_chains(*args, **kwargs)
            if threading.current_thread() is starter:
                a_has_read.set()
                time.sleep(0.3)
            return found

        monkeypatch.setattr(transitions.ops_blockers, "read_blocker_chains", slow)
        committed: list[str] = []
        results: dict[str, object] = {}

        def start_dependent() -> None:
            try:
                with Session(db.engine) as s, s.begin():  # fresh: nothing read before
                    results["dependent"] = client.start_chain(
                        s, merge, {"title": "t"}, blockers=[a]
                    )
                committed.append("dependent")
            except BaseException as exc:
                results["dependent"] = exc

        def start_other() -> None:
            try:
                assert a_has_read.wait(10)
                with Session(db.engine) as s, s.begin():
                    results["other"] = start_fetch(client, s, fetch_b, "b")
                committed.append("other")
            except BaseException as exc:
                results["other"] = exc

        starter = threading.Thread(target=start_dependent)
        other = threading.Thread(target=start_other)
        starter.start()
        other.start()
        starter.join(20)
        other.join(20)

        dependent, started = results["dependent"], results["other"]
        assert isinstance(dependent, q.Chain), dependent
        assert isinstance(started, q.Chain), started
        assert committed == ["dependent", "other"]  # the other writer waited for the lock
        assert dependent.status == "blocked"
        assert client.get_chain(dependent.id).status == "blocked"
        assert client.get_chain(started.id).status == "pending"
        assert [c.id for c in client.get_job_blockers(dependent.id)] == [a.id]
    finally:
        db.engine.dispose()


def test_a_group_completing_blockers_unblocks_their_dependents(db: Db) -> None:
    """Group commit (batch=) writes the completions together; the dependents of the
    completed chains start, and a dependent still waiting on an unfinished blocker stays."""
    client = q.Queuert(db.engine, types)
    with Session(db.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
        b = start_fetch(client, s, fetch_a, "bb")
        lone = start_fetch(client, s, fetch_a, "c")
        both = client.start_chain(s, merge, {"title": "both"}, blockers=[a, b])
    worker = client.worker()
    worker.handler(fetch_a, batch=10)(lambda att: att.complete({"rows": len(att.input["source"])}))
    worker.handler(merge)(lambda att: att.complete({"from": [c.output for c in att.blockers]}))
    assert worker.drain() == 4
    assert client.get_chain(both.id).output == {"from": [{"rows": 1}, {"rows": 2}]}
    assert client.get_chain(lone.id).status == "completed"


def test_a_dependent_attaching_while_a_group_holds_its_blocker_is_unblocked(pg: Db) -> None:
    """The group read "no dependents" when it acquired the blocker; a dependent started
    meanwhile waits for the blocker's row lock, then sees the chain completed."""
    client = q.Queuert(pg.engine, types)
    with Session(pg.engine) as s, s.begin():
        a = start_fetch(client, s, fetch_a, "a")
    inside = threading.Event()
    release = threading.Event()
    worker = client.worker()

    @worker.handler(fetch_a, batch=5)
    def fetch(attempt: q.Attempt[SourceIn, Rows]) -> q.Outcome:
        inside.set()
        release.wait(10)
        return attempt.complete({"rows": 1})

    worker.handler(merge)(lambda att: att.complete({"n": len(att.blockers)}))
    worker.handler(fetch_b)(lambda att: att.complete({"from": "b"}))
    drained = threading.Thread(target=worker.drain, kwargs={"max_jobs": 1})
    drained.start()
    assert inside.wait(10)
    started: list[q.Chain[Any, Any]] = []

    def start_dependent() -> None:
        with Session(pg.engine) as s, s.begin():
            started.append(client.start_chain(s, merge, {"title": "t"}, blockers=[a]))

    starter = threading.Thread(target=start_dependent)
    starter.start()
    deadline = time.monotonic() + 10
    with pg.engine.connect() as conn:  # until the starter waits for the blocker's row lock
        while not conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE NOT granted")
        ).scalar_one():
            assert time.monotonic() < deadline, "the starter never waited for the row lock"
            conn.rollback()
            time.sleep(0.01)
    assert not started
    release.set()
    drained.join(10)
    starter.join(10)
    assert started
    assert client.get_job(started[0].id).status == "pending"
    assert worker.drain() == 1
    assert client.get_chain(started[0].id).output == {"n": 1}


def test_a_batch_may_use_its_own_chains_as_blockers(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    a_id, b_id = uuid.uuid4(), uuid.uuid4()
    with Session(db.engine) as s, s.begin():
        dependent, a, b = client.start_chains(
            s,
            [
                merge({"title": "batch"}, blockers=[a_id]),  # before its blocker
                fetch_a({"source": "a"}, id=a_id),
                fetch_a({"source": "b"}, id=b_id),
            ],
        )
    assert (a.id, b.id) == (a_id, b_id)
    assert client.get_chain(dependent.id).status == "blocked"
    assert [c.id for c in client.get_job_blockers(dependent.id)] == [a_id]
    assert worker_for(client).drain() == 3
    output = client.get_chain(dependent.id).output
    assert output == {"title": "batch", "from": [["fetch-a", "a", {"rows": 1}]]}


def test_a_batch_whose_chains_wait_for_each_other_is_refused(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    x, y = uuid.uuid4(), uuid.uuid4()
    with Session(db.engine) as s, s.begin():
        with pytest.raises(q.InvalidBlockersError, match="wait for each other") as caught:
            client.start_chains(
                s,
                [
                    merge({"title": "x"}, blockers=[y], id=x),
                    merge({"title": "y"}, blockers=[x], id=y),
                ],
            )
        assert str(x) in str(caught.value)
        assert str(y) in str(caught.value)
    with Session(db.engine) as s:
        assert s.execute(select(func.count()).select_from(Job)).scalar_one() == 0
