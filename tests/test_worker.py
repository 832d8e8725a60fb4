"""Consumer side, in-process: atomic completion, failure rollback, retries, the handler contract.

Every scenario runs on both workers (``kind``: the thread ``Worker`` and the
``AsyncWorker``) and both engines, through the ``kit`` of tests/workers.py;
handlers are written once. Thread-only assertions say so where they are.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect, Greeting, User, UserIn, WorkIn, greet, signup, work
from .conftest import Db
from .faults import refusing_inserts, uuid_literal
from .workers import Kit


class FakeClock:
    """An injected clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


def effects(db: Db, label: str | None = None) -> int:
    with Session(db.engine) as s:
        stmt = select(func.count()).select_from(Effect)
        if label:
            stmt = stmt.where(Effect.label == label)
        return s.execute(stmt).scalar_one()


def jobs_of_chain(db: Db, chain_id: object) -> list[Job]:
    with Session(db.engine, expire_on_commit=False) as s:
        return list(
            s.scalars(select(Job).where(Job.chain_id == chain_id).order_by(Job.chain_index))
        )


def start(
    client: q.Queuert, db: Db, job_type: q.JobType[WorkIn, int], n: int = 1
) -> q.Chain[WorkIn, int]:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, job_type, {"n": n, "sleep": 0})


def new_user_chain(client: q.Queuert, db: Db) -> q.Chain[UserIn, None]:
    with Session(db.engine) as s, s.begin():
        user = User(name="ada")
        s.add(user)
        s.flush()
        return client.start_chain(s, signup, {"user_id": user.id})


def test_handler_writes_completion_and_continuation_commit_together(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = new_user_chain(client, db)
    seen_from_outside: list[tuple[int, str, int]] = []
    worker = kit.worker()

    @worker.handler(signup)
    def do_signup(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="signup"))
        outcome = attempt.continue_with(greet, {"user_id": attempt.input["user_id"]})
        # Another connection sees none of it while the attempt is open.
        with Session(db.engine) as other:
            status = other.get_one(Job, attempt.job.id).status
            jobs = other.execute(select(func.count()).select_from(Job)).scalar_one()
            seen_from_outside.append((effects(db), status, jobs))
        return outcome

    @worker.handler(greet)
    def do_greet(attempt: q.Attempt[UserIn, Greeting]) -> q.Outcome:
        user = attempt.session.get_one(User, attempt.input["user_id"])
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="greet"))
        return attempt.complete({"greeting": f"hello {user.name}"})

    assert worker.drain(max_jobs=1) == 1
    assert seen_from_outside == [(0, "pending", 1)]
    first, second = jobs_of_chain(db, chain.id)
    assert effects(db, "signup") == 1
    assert (first.status, first.output, first.completed_by) == ("completed", None, worker.worker_id)
    assert (second.status, second.chain_index, second.type_name) == ("pending", 1, "greet")
    assert client.get_chain(chain.id).status == "pending"

    assert worker.drain() == 1
    done = client.get_chain(chain.id, signup)
    assert done.status == "completed"
    assert done.output == {"greeting": "hello ada"}
    assert done.current_index == 1
    assert effects(db) == 2


def test_handler_exception_rolls_back_its_writes_and_reschedules(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start(client, db, work)
    worker = kit.worker()

    @worker.handler(work)
    def failing(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        attempt.session.flush()
        attempt.complete(1)
        raise ValueError("payment gateway said no")

    before = dt.datetime.now(dt.UTC)
    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert effects(db) == 0
    assert job.status == "pending"
    assert job.attempt == 1
    assert job.output is None
    assert job.completed_at is None
    # Default backoff: 10 s ± 10 % after the first attempt.
    assert before + dt.timedelta(seconds=8.9) < job.scheduled_at < before + dt.timedelta(seconds=12)
    assert job.last_attempt_error is not None
    assert "ValueError: payment gateway said no" in job.last_attempt_error
    assert (worker.completed, worker.failed) == (0, 1)
    assert worker.drain() == 0  # not due yet


def test_retry_after_backoff_sees_previous_error_then_succeeds(kit: Kit) -> None:
    clock = FakeClock()
    kit = kit.using(clock=clock)
    db, client = kit.db, kit.client
    chain = start(client, db, work, n=21)
    worker = kit.worker(backoff=q.Backoff(initial=dt.timedelta(seconds=30), jitter=0))
    seen: list[tuple[int, str | None]] = []

    @worker.handler(work)
    def flaky(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        seen.append((attempt.job.attempt, attempt.job.last_attempt_error))
        if attempt.job.attempt < 3:
            raise ConnectionError(f"try {attempt.job.attempt}")
        return attempt.complete(attempt.input["n"] * 2)

    for expected_delay in (30, 60):
        assert worker.drain() == 1
        job = client.get_job(chain.id)
        assert job.scheduled_at == clock.now + dt.timedelta(seconds=expected_delay)
        clock.advance(dt.timedelta(seconds=expected_delay - 1))
        assert worker.drain() == 0
        clock.advance(dt.timedelta(seconds=1))
    assert worker.drain() == 1

    assert [a for a, _ in seen] == [1, 2, 3]
    assert seen[0][1] is None
    assert seen[2][1] is not None
    assert "ConnectionError: try 2" in seen[2][1]
    done = client.get_job(chain.id)
    assert (done.status, done.output, done.attempt, done.last_attempt_error) == (
        "completed",
        42,
        3,
        None,
    )


def test_reschedule_picks_the_retry_time(kit: Kit) -> None:
    clock = FakeClock()
    kit = kit.using(clock=clock)
    db, client = kit.db, kit.client
    chain = start(client, db, work)
    worker = kit.worker()

    @worker.handler(work)
    def later(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise q.Reschedule(run_in=dt.timedelta(minutes=7), reason="rate limited")

    worker.drain()
    job = client.get_job(chain.id)
    assert job.scheduled_at == clock.now + dt.timedelta(minutes=7)
    assert job.last_attempt_error == "Reschedule: rate limited"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda a: None, "must return attempt.complete"),
        (lambda a: "done", "must return attempt.complete"),
        (lambda a: (a.complete(1), a.complete(2))[1], "already completed"),
        (lambda a: a.continue_with(signup, {"user_id": 1}), "cannot continue with 'signup'"),
        (lambda a: a.complete(float("nan")), "JobOutputError"),
        (lambda a: (a.session.commit(), a.complete(1))[1], "the worker owns that transaction"),
    ],
    ids=["none", "string", "twice", "undeclared-continuation", "non-json-output", "commit"],
)
def test_handler_contract_violations_are_recorded_and_retried(
    kit: Kit, body: Callable[[q.Attempt[WorkIn, int]], object], message: str
) -> None:
    db, client = kit.db, kit.client
    chain = start(client, db, work)
    worker = kit.worker()
    worker.handler(work)(body)

    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert job.status == "pending"
    assert job.last_attempt_error is not None
    assert message in job.last_attempt_error
    assert len(jobs_of_chain(db, chain.id)) == 1  # no continuation left behind


def test_database_error_inside_handler_is_isolated_by_the_savepoint(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start(client, db, work)
    worker = kit.worker()

    @worker.handler(work)
    def duplicate_key(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(User(id=1, name="a"))
        attempt.session.flush()
        attempt.session.add(User(id=1, name="b"))
        attempt.session.flush()  # IntegrityError: aborts only the SAVEPOINT
        return attempt.complete(0)

    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert job.status == "pending"
    assert job.last_attempt_error is not None
    assert IntegrityError.__name__ in job.last_attempt_error
    with Session(db.engine) as s:
        assert s.execute(select(func.count()).select_from(User)).scalar_one() == 0


def test_outcome_that_fails_to_write_without_a_savepoint_keeps_nothing(kit: Kit) -> None:
    """An outcome that fails to write is recorded as such, and nothing of the attempt kept.

    A handler that never reads attempt.session runs without a SAVEPOINT (thread
    worker); if writing its outcome fails, the whole transaction is rolled back
    and the attempt is recorded afresh: no continuation, no completion,
    attempt 1, and an error that says the outcome was not written. The asyncio
    worker (its SAVEPOINT is always open) rolls the SAVEPOINT back instead and
    says the same, so a user reading ``last_attempt_error`` can tell that the
    handler succeeded and the queue's own write failed.
    """
    db, client = kit.db, kit.client
    taken = new_user_chain(client, db)
    chain = new_user_chain(client, db)
    worker = kit.worker()

    @worker.handler(signup)
    def clash(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": 1})

    # The database refuses the continuation's INSERT for this chain only.
    with refusing_inserts(
        db, f"NEW.chain_id = {uuid_literal(db, chain.id)} AND NEW.chain_index > 0"
    ):
        assert worker.drain() == 2
    job = client.get_job(chain.id)
    assert (job.status, job.attempt, job.completed_at) == ("pending", 1, None)
    assert job.last_attempt_error is not None
    assert "writing the attempt's outcome failed" in job.last_attempt_error
    assert job.last_attempt_error.startswith(
        "writing the attempt's outcome failed; nothing was kept"
    ), job.last_attempt_error[:200]
    assert IntegrityError.__name__ in job.last_attempt_error
    assert len(jobs_of_chain(db, chain.id)) == 1
    assert (worker.completed, worker.failed) == (1, 1)
    # The other chain moved on normally.
    assert [j.status for j in jobs_of_chain(db, taken.id)] == ["completed", "pending"]


def test_handler_that_reads_the_session_late_still_gets_a_savepoint(kit: Kit) -> None:
    db, client = kit.db, kit.client
    chain = start(client, db, work)
    worker = kit.worker()

    @worker.handler(work)
    def late(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        outcome = attempt.complete(attempt.input["n"])
        session = attempt.session  # first use after the outcome: still isolated
        session.add(Effect(job_id=str(attempt.job.id), label="late"))
        session.flush()
        raise RuntimeError("after writing")
        return outcome

    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert (job.status, job.attempt, job.output) == ("pending", 1, None)
    assert effects(db) == 0


def test_sql_listeners_see_the_workers_own_statements(kit: Kit) -> None:
    # The worker runs its fixed statements on the driver's cursor only when
    # nothing listens to SQLAlchemy's cursor events (logging, tracing).
    # (The asyncio worker always goes through SQLAlchemy; a listener on its
    # async engine's sync_engine must see the same statements.)
    db, client = kit.db, kit.client
    seen: list[str] = []

    def listener(conn: object, cursor: object, statement: str, *rest: object) -> None:
        seen.append(statement)

    chain = start(client, db, work, n=4)
    engine = kit.worker_engine
    event.listen(engine, "before_cursor_execute", listener)
    try:
        worker = kit.worker()
        worker.handler(work)(lambda a: a.complete(a.input["n"]))
        assert worker.drain() == 1
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert client.get_chain(chain.id, work).output == 4
    updates = [s for s in seen if s.lstrip().upper().startswith("UPDATE")]
    assert any("leased_by" in s and "attempt" in s for s in updates)  # the acquire
    assert any("completed_by" in s for s in updates)  # the completion


@pytest.mark.parametrize("mode", ["atomic", "staged"])
def test_type_names_with_quotes_and_percent_signs_are_processed(kit: Kit, mode: str) -> None:
    # The worker's statements carry the type names as SQL literals.
    types = q.JobTypes()
    odd = types.entry("it's 100%s %(param_2)s", input=WorkIn, output=int)
    plain = types.entry("b", input=WorkIn, output=int)
    kit = kit.using(job_types=types)
    db, client = kit.db, kit.client
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, odd, {"n": 3, "sleep": 0})
    worker = kit.worker()
    worker.handler(plain)(lambda a: a.complete(0))

    @worker.handler(odd, mode=mode)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        if mode == "staged":
            with attempt.prepare():
                pass
            with attempt.transaction():
                return attempt.complete(attempt.input["n"])
        return attempt.complete(attempt.input["n"])

    assert worker.drain() == 1
    done = client.get_chain(chain.id, odd)
    assert (done.status, done.output) == ("completed", 3)


@pytest.mark.parametrize("threshold", ["default", "off"])
def test_prepared_statements_follow_the_drivers_setting(pg_kit: Kit, threshold: str) -> None:
    """Prepared statements are the driver's choice, and the worker keeps them.

    Behind PgBouncer (transaction pooling) applications turn psycopg's
    server-side prepared statements off; the worker must not prepare its own.
    With the driver's default the worker's statements stay prepared on its
    connection after a drain, on both workers (an idle look ending in ROLLBACK
    would make psycopg DEALLOCATE ALL). (8 jobs: psycopg itself prepares a
    statement from its 5th execution on a connection; the thread worker
    prepares its own at once.)
    """
    connect_args = {"prepare_threshold": None} if threshold == "off" else {}
    engine = pg_kit.new_engine(pool_size=1, max_overflow=0, connect_args=connect_args)
    kit = pg_kit.using(engine=engine)
    client = kit.client
    with Session(kit.db.engine) as s, s.begin():
        client.start_chains(s, [work({"n": n, "sleep": 0}) for n in range(8)])
    worker = kit.worker()
    worker.handler(work)(lambda a: a.complete(a.input["n"]))
    assert worker.drain() == 8
    # The pool's one connection, used by the worker.
    prepared = kit.scalar_on_worker_connection(
        "SELECT count(*) FROM pg_prepared_statements WHERE starts_with(statement, 'UPDATE')"
    )
    assert (prepared > 0) == (threshold == "default"), prepared


def test_idle_worker_wakes_on_commit_not_on_poll(kit: Kit) -> None:
    db, client = kit.db, kit.client
    worker = kit.worker(concurrency=3, poll_interval=dt.timedelta(seconds=60))
    done = threading.Event()

    @worker.handler(work)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        outcome = attempt.complete(attempt.input["n"] + 1)
        return outcome

    worker.start()
    try:
        time.sleep(0.2)  # let every slot go idle on its 60 s poll
        chain_id = uuid.uuid4()
        sub = client.notify.listen_chain_completed(chain_id, lambda _id: done.set())
        with Session(db.engine) as s, s.begin():
            client.start_chain(s, work, {"n": 41, "sleep": 0}, id=chain_id)
        # The 60 s poll would fail this; the post-commit wake-up passes it.
        assert done.wait(10)
        sub.close()
    finally:
        assert worker.stop()
    assert client.get_chain(chain_id).output == 42
    assert effects(db) == 1


def test_stop_waits_for_in_flight_attempt(kit: Kit) -> None:
    db, client = kit.db, kit.client
    worker = kit.worker(concurrency=2, poll_interval=dt.timedelta(milliseconds=50))
    entered = threading.Event()

    @worker.handler(work, on_thread=True)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        entered.set()
        time.sleep(0.5)
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        return attempt.complete(7)

    chain = start(client, db, work)
    worker.start()
    assert entered.wait(10)
    assert worker.stop() is True
    assert client.get_chain(chain.id).output == 7
    assert effects(db) == 1


def test_many_jobs_many_slots_each_processed_once(kit: Kit) -> None:
    db, client = kit.db, kit.client
    with Session(db.engine) as s, s.begin():
        client.start_chains(s, [q.ChainStart(work, {"n": i, "sleep": 0}) for i in range(200)])
    worker = kit.worker(concurrency=4, poll_interval=dt.timedelta(milliseconds=100))

    @worker.handler(work)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        return attempt.complete(attempt.input["n"])

    worker.start()
    deadline = time.monotonic() + 60
    try:
        while effects(db) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert worker.stop()
    with Session(db.engine) as s:
        distinct = s.execute(select(func.count(func.distinct(Effect.job_id)))).scalar_one()
        open_jobs = s.execute(
            select(func.count()).select_from(Job).where(Job.status != "completed")
        ).scalar_one()
    assert (effects(db), distinct, open_jobs) == (200, 200, 0)


def test_worker_configuration_errors(kit: Kit) -> None:
    worker = kit.worker()
    with pytest.raises(q.WorkerConfigError, match="no handlers"):
        worker.start()

    @worker.handler(work)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(1)

    with pytest.raises(q.DuplicateHandlerError):
        worker.handler(work)(handle)
    if kit.kind == "thread":
        # Thread-specific: the thread worker runs plain functions only. (The
        # asyncio worker's counterpart, a plain def without thread_engine=, is
        # in tests/test_parity.py.)
        with pytest.raises(q.WorkerConfigError, match="async def"):

            @worker.handler(signup)
            async def not_here(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
                raise AssertionError

    with pytest.raises(q.WorkerConfigError, match="concurrency"):
        kit.worker(concurrency=0)
    other = q.JobTypes()
    stranger = other.entry("stranger", input=dict)
    with pytest.raises(q.UnknownJobTypeError, match="stranger"):
        worker.handler(stranger)
