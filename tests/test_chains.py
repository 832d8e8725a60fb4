"""Chain patterns (linear, branched, loop, go-to), scheduled and idempotent continuations.

Every pattern runs on SQLite and on PostgreSQL with its own ``JobTypes``; the
job rows of each chain are checked through ``queuert_sa.models.Job``.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TypedDict

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import DEFAULT_MODELS, Job, JobStatus
from queuert_sa.state import NewJob
from queuert_sa.state import operations as ops

from .conftest import Db
from .test_worker import FakeClock

ROOT = Path(__file__).resolve().parent.parent


class TrailIn(TypedDict):
    trail: list[str]


class AmountIn(TypedDict):
    amount: int


class Decision(TypedDict):
    branch: str
    amount: int


class CountIn(TypedDict):
    left: int
    done: int


class RoundIn(TypedDict):
    round: int
    rounds: int


def chain_rows(db: Db, chain_id: uuid.UUID) -> list[Job]:
    with Session(db.engine, expire_on_commit=False) as s:
        return list(
            s.scalars(select(Job).where(Job.chain_id == chain_id).order_by(Job.chain_index))
        )


def assert_completed_chain(
    db: Db, chain_id: uuid.UUID, type_names: list[str], output: object
) -> list[Job]:
    """The chain's rows: these types at indexes 0..n-1, all completed, only the last with output."""
    rows = chain_rows(db, chain_id)
    assert [r.type_name for r in rows] == type_names
    assert [r.chain_index for r in rows] == list(range(len(type_names)))
    assert [r.status for r in rows] == [JobStatus.COMPLETED] * len(rows)
    assert [r.output for r in rows] == [None] * (len(rows) - 1) + [output]
    assert [r.chain_type_name for r in rows] == [type_names[0]] * len(rows)
    assert [r.chain_id for r in rows] == [chain_id] * len(rows)
    assert rows[0].id == chain_id
    assert len({r.id for r in rows}) == len(rows)
    return rows


def assert_chain_read(
    client: q.Queuert, chain_id: uuid.UUID, type_names: list[str], output: object
) -> None:
    """What ``get_chain`` reports: the latest job's status and the last job's output."""
    chain = client.get_chain(chain_id)
    assert chain.status == JobStatus.COMPLETED
    assert chain.output == output
    assert chain.type_name == type_names[0]
    assert (chain.current_index, chain.current_type_name) == (len(type_names) - 1, type_names[-1])


# --- the four patterns ----------------------------------------------------------


def test_linear_chain_runs_a_b_c(db: Db) -> None:
    job_types = q.JobTypes()
    a = job_types.entry("a", input=TrailIn, continues_with=["b"])
    b = job_types.define("b", input=TrailIn, continues_with=["c"])
    c = job_types.define("c", input=TrailIn, output=list[str])
    client = q.Queuert(db.engine, job_types)
    worker = client.worker()

    @worker.handler(a)
    def step_a(attempt: q.Attempt[TrailIn, None]) -> q.Outcome:
        return attempt.continue_with(b, {"trail": [*attempt.input["trail"], "a"]})

    @worker.handler(b)
    def step_b(attempt: q.Attempt[TrailIn, None]) -> q.Outcome:
        return attempt.continue_with(c, {"trail": [*attempt.input["trail"], "b"]})

    @worker.handler(c)
    def step_c(attempt: q.Attempt[TrailIn, Any]) -> q.Outcome:
        return attempt.complete([*attempt.input["trail"], "c"])

    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, a, {"trail": ["start"]})

    assert worker.drain() == 3
    rows = assert_completed_chain(db, chain.id, ["a", "b", "c"], ["start", "a", "b", "c"])
    assert [r.input for r in rows] == [
        {"trail": ["start"]},
        {"trail": ["start", "a"]},
        {"trail": ["start", "a", "b"]},
    ]
    assert_chain_read(client, chain.id, ["a", "b", "c"], ["start", "a", "b", "c"])


def test_branched_chain_takes_the_branch_its_input_selects(db: Db) -> None:
    job_types = q.JobTypes()
    route = job_types.entry("route", input=AmountIn, continues_with=["b1", "b2"])
    b1 = job_types.define("b1", input=AmountIn, output=Decision)
    b2 = job_types.define("b2", input=AmountIn, output=Decision)
    client = q.Queuert(db.engine, job_types)
    worker = client.worker()

    @worker.handler(route)
    def choose(attempt: q.Attempt[AmountIn, None]) -> q.Outcome:
        target = b1 if attempt.input["amount"] < 100 else b2
        return attempt.continue_with(target, {"amount": attempt.input["amount"]})

    @worker.handler(b1)
    def small(attempt: q.Attempt[AmountIn, Decision]) -> q.Outcome:
        return attempt.complete({"branch": "b1", "amount": attempt.input["amount"]})

    @worker.handler(b2)
    def large(attempt: q.Attempt[AmountIn, Decision]) -> q.Outcome:
        return attempt.complete({"branch": "b2", "amount": attempt.input["amount"]})

    with Session(db.engine) as s, s.begin():
        low, high = client.start_chains(s, [route({"amount": 5}), route({"amount": 500})])

    assert worker.drain() == 4
    assert_completed_chain(db, low.id, ["route", "b1"], {"branch": "b1", "amount": 5})
    assert_completed_chain(db, high.id, ["route", "b2"], {"branch": "b2", "amount": 500})
    assert_chain_read(client, low.id, ["route", "b1"], {"branch": "b1", "amount": 5})
    assert_chain_read(client, high.id, ["route", "b2"], {"branch": "b2", "amount": 500})


@pytest.mark.parametrize("loops", [0, 1, 5])
def test_loop_chain_continues_with_itself_then_completes(db: Db, loops: int) -> None:
    job_types = q.JobTypes()
    loop = job_types.entry("loop", input=CountIn, output=int, continues_with=["loop"])
    client = q.Queuert(db.engine, job_types)
    worker = client.worker()

    @worker.handler(loop)
    def count_down(attempt: q.Attempt[CountIn, int]) -> q.Outcome:
        left, done = attempt.input["left"], attempt.input["done"]
        if left == 0:
            return attempt.complete(done)
        return attempt.continue_with(loop, {"left": left - 1, "done": done + 1})

    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, loop, {"left": loops, "done": 0})

    assert worker.drain() == loops + 1
    rows = assert_completed_chain(db, chain.id, ["loop"] * (loops + 1), loops)
    assert [r.input for r in rows] == [{"left": loops - i, "done": i} for i in range(loops + 1)]
    assert_chain_read(client, chain.id, ["loop"] * (loops + 1), loops)


def test_go_to_chain_jumps_back_a_b_a_b(db: Db) -> None:
    job_types = q.JobTypes()
    a = job_types.entry("a", input=RoundIn, continues_with=["b"])
    b = job_types.define("b", input=RoundIn, output=int, continues_with=["a"])
    client = q.Queuert(db.engine, job_types)
    worker = client.worker()

    @worker.handler(a)
    def step_a(attempt: q.Attempt[RoundIn, None]) -> q.Outcome:
        return attempt.continue_with(b, attempt.input)

    @worker.handler(b)
    def step_b(attempt: q.Attempt[RoundIn, int]) -> q.Outcome:
        finished = attempt.input["round"] + 1
        if finished < attempt.input["rounds"]:
            return attempt.continue_with(a, {"round": finished, "rounds": attempt.input["rounds"]})
        return attempt.complete(finished)

    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, a, {"round": 0, "rounds": 2})

    assert worker.drain() == 4
    rows = assert_completed_chain(db, chain.id, ["a", "b", "a", "b"], 2)
    assert [r.input["round"] for r in rows] == [0, 0, 1, 1]
    assert_chain_read(client, chain.id, ["a", "b", "a", "b"], 2)


# --- continuation options --------------------------------------------------------


def scheduled_pair(db: Db, clock: FakeClock, **options: Any) -> tuple[q.Queuert, q.Worker]:
    """``first`` continues with ``second`` using ``options``; ``second`` completes with 1."""
    job_types = q.JobTypes()
    first = job_types.entry("first", input=dict[str, Any], continues_with=["second"])
    second = job_types.define("second", input=dict[str, Any], output=int)
    client = q.Queuert(db.engine, job_types, clock=clock)
    worker = client.worker()

    @worker.handler(first)
    def go_on(attempt: q.Attempt[Any, None]) -> q.Outcome:
        return attempt.continue_with(second, {}, **options)

    @worker.handler(second)
    def finish(attempt: q.Attempt[Any, int]) -> q.Outcome:
        return attempt.complete(1)

    return client, worker


def start_first(db: Db, client: q.Queuert) -> uuid.UUID:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, client.job_types.get("first"), {}).id


def test_continue_with_run_in_schedules_the_next_job_later(db: Db) -> None:
    clock = FakeClock()
    client, worker = scheduled_pair(db, clock, run_in=dt.timedelta(minutes=5))
    chain_id = start_first(db, client)

    assert worker.drain() == 1  # only "first": "second" is not due
    first, second = chain_rows(db, chain_id)
    assert first.status == JobStatus.COMPLETED
    assert (second.status, second.chain_index) == (JobStatus.PENDING, 1)
    assert second.scheduled_at == clock.now + dt.timedelta(minutes=5)
    chain = client.get_chain(chain_id)
    assert (chain.status, chain.output, chain.current_index) == (JobStatus.PENDING, None, 1)

    clock.advance(dt.timedelta(minutes=5) - dt.timedelta(seconds=1))
    assert worker.drain() == 0
    clock.advance(dt.timedelta(seconds=1))
    assert worker.drain() == 1
    assert_completed_chain(db, chain_id, ["first", "second"], 1)


@pytest.mark.parametrize(
    ("offset", "due_in"),
    [
        (dt.timedelta(minutes=10), dt.timedelta(minutes=10)),
        (-dt.timedelta(hours=1), dt.timedelta(0)),  # a past run_at is clamped to now
    ],
    ids=["future", "past-clamped"],
)
def test_continue_with_run_at(db: Db, offset: dt.timedelta, due_in: dt.timedelta) -> None:
    clock = FakeClock()
    started = clock.now
    client, worker = scheduled_pair(db, clock, run_at=started + offset)
    chain_id = start_first(db, client)

    processed = worker.drain()
    second = chain_rows(db, chain_id)[1]
    assert second.scheduled_at == started + due_in
    if due_in:
        assert (processed, second.status) == (1, JobStatus.PENDING)
        clock.advance(due_in)
        assert worker.drain() == 1
    else:
        assert processed == 2
    assert_completed_chain(db, chain_id, ["first", "second"], 1)


@pytest.mark.parametrize("as_text", [False, True], ids=["uuid", "str"])
def test_continue_with_id_names_the_next_job(db: Db, as_text: bool) -> None:
    wanted = uuid.uuid4()
    client, worker = scheduled_pair(db, FakeClock(), id=str(wanted) if as_text else wanted)
    chain_id = start_first(db, client)

    assert worker.drain() == 2
    rows = assert_completed_chain(db, chain_id, ["first", "second"], 1)
    assert rows[1].id == wanted
    assert client.get_job(wanted).chain_id == chain_id
    assert client.get_chain(chain_id).current_job_id == wanted


def test_continue_with_an_id_already_taken_fails_the_job_and_writes_nothing(db: Db) -> None:
    clock = FakeClock()
    job_types = q.JobTypes()
    first = job_types.entry("first", input=dict[str, Any], continues_with=["second"])
    job_types.define("second", input=dict[str, Any], output=int)
    client = q.Queuert(db.engine, job_types, clock=clock)
    with Session(db.engine) as s, s.begin():
        other, mine = client.start_chains(s, [first({}), first({})])
    worker = client.worker()

    @worker.handler(first)
    def reuse(attempt: q.Attempt[Any, None]) -> q.Outcome:
        if attempt.job.id == other.id:
            raise q.Reschedule(run_in=dt.timedelta(hours=1))  # keep it out of the way
        return attempt.continue_with(job_types.get("second"), {}, id=other.id)

    assert worker.drain() == 2
    job = client.get_job(mine.id)
    # Refused before the INSERT, and failed at once: a retry would collide again.
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    assert job.last_attempt_error is not None
    assert f"DuplicateJobIdError: Job id {other.id} is already used" in job.last_attempt_error
    assert len(chain_rows(db, mine.id)) == 1


# --- idempotency -------------------------------------------------------------------


def continuation(chain_id: uuid.UUID, label: str, now: dt.datetime) -> NewJob:
    return NewJob(
        id=uuid.uuid4(),
        type_name="next",
        chain_id=chain_id,
        chain_type_name="root",
        chain_index=1,
        input={"by": label},
        status=JobStatus.PENDING,
        created_at=now,
        scheduled_at=now,
    )


def root_chain(db: Db) -> tuple[q.Queuert, uuid.UUID]:
    job_types = q.JobTypes()
    root = job_types.entry("root", input=dict[str, Any], continues_with=["next"])
    job_types.define("next", input=dict[str, Any], output=int)
    client = q.Queuert(db.engine, job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, root, {})
    return client, chain.id


def test_concurrent_continuations_at_one_index_yield_one_job(pg: Db) -> None:
    client, chain_id = root_chain(pg)
    now = dt.datetime.now(dt.UTC)
    jobs = [continuation(chain_id, "t0", now), continuation(chain_id, "t1", now)]
    barrier = threading.Barrier(2, timeout=10)
    created: dict[int, bool] = {}
    saw_other_blocked: list[bool] = []
    errors: list[BaseException] = []

    def other_insert_waits_on_a_lock() -> bool:
        # A fresh transaction per look: pg_stat_activity is a per-transaction snapshot.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with pg.engine.connect() as conn:
                waiting = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO queuert_job %'"
                    )
                ).scalar_one()
            if waiting:
                return True
            time.sleep(0.01)
        return False

    def insert(slot: int) -> None:
        try:
            with pg.engine.connect() as conn, conn.begin():
                barrier.wait()
                created[slot] = ops.insert_continuation(
                    conn, DEFAULT_MODELS, client.capabilities, jobs[slot]
                )
                if created[slot]:
                    # Winner: hold the transaction open until the loser's INSERT
                    # is seen waiting on our uncommitted row, then commit.
                    saw_other_blocked.append(other_insert_waits_on_a_lock())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    assert sorted(created.values()) == [False, True]
    assert saw_other_blocked == [True]
    winner = next(slot for slot, won in created.items() if won)
    rows = chain_rows(pg, chain_id)
    assert [r.chain_index for r in rows] == [0, 1]
    assert (rows[1].id, rows[1].input) == (jobs[winner].id, {"by": f"t{winner}"})


def test_second_continuation_at_one_index_is_a_no_op(db: Db) -> None:
    client, chain_id = root_chain(db)
    now = dt.datetime.now(dt.UTC)
    results: list[bool] = []
    for label in ("first", "second"):
        with Session(db.engine) as s, s.begin():
            job = continuation(chain_id, label, now)
            results.append(ops.insert_continuation(s, DEFAULT_MODELS, client.capabilities, job))
    assert results == [True, False]
    rows = chain_rows(db, chain_id)
    assert [r.chain_index for r in rows] == [0, 1]
    assert rows[1].input == {"by": "first"}


def test_retried_attempt_that_continued_then_raised_leaves_one_continuation(db: Db) -> None:
    clock = FakeClock()
    job_types = q.JobTypes()
    first = job_types.entry("first", input=dict[str, Any], continues_with=["second"])
    second = job_types.define("second", input=dict[str, Any], output=int)
    client = q.Queuert(db.engine, job_types, clock=clock)
    worker = client.worker(backoff=q.Backoff(initial=dt.timedelta(seconds=30), jitter=0))

    @worker.handler(first)
    def flaky(attempt: q.Attempt[Any, None]) -> q.Outcome:
        outcome = attempt.continue_with(second, {"attempt": attempt.job.attempt})
        if attempt.job.attempt == 1:
            raise ConnectionError("lost the network after deciding to continue")
        return outcome

    @worker.handler(second)
    def finish(attempt: q.Attempt[Any, int]) -> q.Outcome:
        return attempt.complete(attempt.input["attempt"])

    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, first, {})

    assert worker.drain() == 1
    (only,) = chain_rows(db, chain.id)
    assert (only.status, only.attempt) == (JobStatus.PENDING, 1)
    assert only.scheduled_at == clock.now + dt.timedelta(seconds=30)
    assert worker.drain() == 0
    clock.advance(dt.timedelta(seconds=30))
    assert worker.drain() == 2

    rows = assert_completed_chain(db, chain.id, ["first", "second"], 2)
    assert [r.attempt for r in rows] == [2, 1]
    assert rows[1].input == {"attempt": 2}


def test_continue_with_reuses_a_job_already_at_the_next_index(db: Db) -> None:
    clock = FakeClock()
    job_types = q.JobTypes()
    first = job_types.entry("first", input=dict[str, Any], continues_with=["second"])
    second = job_types.define("second", input=dict[str, Any], output=dict[str, Any])
    client = q.Queuert(db.engine, job_types, clock=clock)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, first, {})
        # As if an earlier attempt had already written the continuation.
        existing = NewJob(
            id=uuid.uuid4(),
            type_name="second",
            chain_id=chain.id,
            chain_type_name="first",
            chain_index=1,
            input={"from": "earlier"},
            status=JobStatus.PENDING,
            created_at=clock.now,
            scheduled_at=clock.now + dt.timedelta(minutes=1),
        )
        assert ops.insert_continuation(s, DEFAULT_MODELS, client.capabilities, existing)
    worker = client.worker()
    requested = uuid.uuid4()

    @worker.handler(first)
    def go_on(attempt: q.Attempt[Any, None]) -> q.Outcome:
        return attempt.continue_with(second, {"from": "now"}, id=requested)

    @worker.handler(second)
    def finish(attempt: q.Attempt[Any, Any]) -> q.Outcome:
        return attempt.complete(attempt.input)

    assert worker.drain() == 1
    rows = chain_rows(db, chain.id)
    assert [(r.id, r.chain_index, r.status) for r in rows] == [
        (chain.id, 0, JobStatus.COMPLETED),
        (existing.id, 1, JobStatus.PENDING),
    ]
    clock.advance(dt.timedelta(minutes=1))
    assert worker.drain() == 1
    assert_completed_chain(db, chain.id, ["first", "second"], {"from": "earlier"})
    with pytest.raises(q.JobNotFoundError):
        client.get_job(requested)


# --- the example ------------------------------------------------------------------


def test_chain_patterns_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "examples/chain_patterns.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "processed 12 jobs"
    assert lines[1:] == [
        'linear: fetch -> parse -> store => completed, output {"url": "https://example.com/", '
        '"words": 4}',
        "branch: check-amount -> manual-review => completed, output "
        '{"amount": 250, "approved_by": "reviewer"}',
        "loop: poll-export -> poll-export -> poll-export => completed, output "
        '{"export_id": "exp-1", "polls": 3}',
        "go-to: write-draft -> review-draft -> write-draft -> review-draft => completed, "
        'output {"accepted_revision": 2}',
    ]


AWKWARD_STRINGS = ['say "hi"', "back\\slash", "{a,b}", "NULL", "", "日本語 ✓", "tab\tnew\nline"]


def test_a_batch_of_starts_keeps_every_value_exactly(db: Db) -> None:
    """Inputs, keys and times written by one batched INSERT come back as they were given."""
    job_types = q.JobTypes()
    echo = job_types.entry("echo", input=dict[str, Any], output=int)
    client = q.Queuert(db.engine, job_types)
    later = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    inputs = [{"s": value, "n": None, "nested": [value, {"k": value}]} for value in AWKWARD_STRINGS]
    with Session(db.engine) as s, s.begin():
        chains = client.start_chains(
            s,
            [
                echo(given, dedup=q.Dedup(f"k-{given['s']}"), run_at=later, priority=i)
                for i, given in enumerate(inputs)
            ],
        )
    for i, (chain, given) in enumerate(zip(chains, inputs, strict=True)):
        (row,) = chain_rows(db, chain.id)
        assert row.input == given
        assert row.deduplication_key == f"k-{given['s']}"
        assert row.scheduled_at == later
        assert row.priority == i
