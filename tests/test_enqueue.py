"""Producer side: jobs commit or roll back with the caller's business rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import User, signup, work
from .conftest import Db


def job_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def user_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(User)).scalar_one()


def test_business_row_and_chain_commit_together(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    woken: list[str] = []
    notify.listen_job_scheduled(["signup"], lambda name, count: woken.append(name))

    with Session(db.engine) as s, s.begin():
        user = User(name="ada")
        s.add(user)
        s.flush()
        chain = client.start_chain(s, signup, {"user_id": user.id})
        # Not visible outside the transaction, and no wake-up before COMMIT.
        assert job_count(db) == 0
        assert woken == []

    assert woken == ["signup"]
    assert user_count(db) == 1
    stored = client.get_chain(chain.id, signup)
    assert stored.status == q.JobStatus.PENDING == "pending"
    assert stored.input == {"user_id": 1}
    assert stored.id == chain.id == stored.current_job_id
    job = client.get_job(chain.id)
    assert (job.chain_id, job.chain_index, job.attempt) == (chain.id, 0, 0)


def test_rollback_leaves_neither_row_nor_wakeup(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    woken: list[str] = []
    notify.listen_job_scheduled(["signup"], lambda name, count: woken.append(name))

    with Session(db.engine) as s:
        user = User(name="ada")
        s.add(user)
        s.flush()
        chain = client.start_chain(s, signup, {"user_id": user.id})
        s.rollback()

    assert job_count(db) == 0
    assert user_count(db) == 0
    assert woken == []
    assert notify.sent["job_scheduled"] == 0
    with pytest.raises(q.ChainNotFoundError) as info:
        client.get_chain(chain.id)
    assert info.value.chain_id == chain.id


def test_exception_in_transaction_block_rolls_back_jobs(db: Db, client: q.Queuert) -> None:
    with pytest.raises(RuntimeError), Session(db.engine) as s, s.begin():  # noqa: PT012 - the raise must happen inside the transaction block
        s.add(User(name="ada"))
        s.flush()
        client.start_chain(s, work, {"n": 1, "sleep": 0})
        raise RuntimeError("request failed")
    assert job_count(db) == 0
    assert user_count(db) == 0


def test_rolled_back_savepoint_drops_job_and_wakeup_keeps_outer_row(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    woken: list[str] = []
    notify.listen_job_scheduled(["signup", "work"], lambda name, count: woken.append(name))

    with Session(db.engine) as s, s.begin():
        user = User(name="ada")
        s.add(user)
        s.flush()
        kept = client.start_chain(s, work, {"n": 1, "sleep": 0})
        savepoint = s.begin_nested()
        dropped = client.start_chain(s, signup, {"user_id": user.id})
        savepoint.rollback()

    assert user_count(db) == 1
    assert job_count(db) == 1
    client.get_chain(kept.id)
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(dropped.id)
    assert woken == ["work"]


def test_released_savepoint_keeps_job_until_outer_commit(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    woken: list[str] = []
    notify.listen_job_scheduled(["work"], lambda name, count: woken.append(name))

    with Session(db.engine) as s, s.begin():
        with s.begin_nested():
            client.start_chain(s, work, {"n": 1, "sleep": 0})
        assert woken == []  # released SAVEPOINT is not a COMMIT

    assert woken == ["work"]
    assert job_count(db) == 1


def test_released_savepoint_then_outer_rollback_drops_everything(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    with Session(db.engine) as s:
        with s.begin_nested():
            client.start_chain(s, work, {"n": 1, "sleep": 0})
        s.rollback()
    assert job_count(db) == 0
    assert notify.sent["job_scheduled"] == 0


def test_start_chains_batch_is_one_statement(db: Db, client: q.Queuert) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    with Session(db.engine) as s, s.begin():
        chains = client.start_chains(
            s, [q.ChainStart(work, {"n": i, "sleep": 0}) for i in range(250)]
        )
    event.remove(db.engine, "before_cursor_execute", record)

    inserts = [st for st in statements if st.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1
    assert len({c.id for c in chains}) == 250
    assert job_count(db) == 250
    # Ids are time-ordered (UUIDv7): creation order is id order.
    assert [c.id for c in chains] == sorted(c.id for c in chains)


def test_started_chains_and_their_starts_are_the_dataclasses_their_constructors_build(
    db: Db, client: q.Queuert
) -> None:
    # Both are filled without their frozen __init__ (its cost per chain): they
    # must not differ from what the constructor builds, in any way a user sees.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    start = work({"n": 1, "sleep": 0}, run_at=later, priority=4, blockers=[])
    built = q.ChainStart(work, {"n": 1, "sleep": 0}, run_at=later, priority=4)
    assert not hasattr(q.ChainStart, "__post_init__")
    assert not hasattr(q.Chain, "__post_init__")
    assert start == built
    assert repr(start) == repr(built)
    assert hash(start.blockers) == hash(built.blockers)
    assert list(vars(start)) == [f.name for f in dataclasses.fields(q.ChainStart)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.priority = 5  # type: ignore[misc]

    with Session(db.engine) as s, s.begin():
        chains = client.start_chains(s, [start, work({"n": 2, "sleep": 0})])
    for chain in chains:
        rebuilt = dataclasses.replace(chain)  # through Chain.__init__
        assert chain == rebuilt
        assert repr(chain) == repr(rebuilt)
        assert list(vars(chain)) == [f.name for f in dataclasses.fields(q.Chain)]
        assert pickle.loads(pickle.dumps(chain)) == chain
        with pytest.raises(dataclasses.FrozenInstanceError):
            chain.status = q.JobStatus.RUNNING  # type: ignore[misc]
        assert chain == dataclasses.replace(client.get_chain(chain.id, work), input=chain.input)
    assert [c.priority for c in chains] == [4, 0]


def test_caller_supplied_id_and_schedule(db: Db, client: q.Queuert) -> None:
    chain_id = uuid.uuid4()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    with Session(db.engine) as s, s.begin():
        client.start_chain(s, work, {"n": 1, "sleep": 0}, id=str(chain_id), run_at=later)
        early = client.start_chain(s, work, {"n": 2, "sleep": 0}, run_at=past)
    scheduled = client.get_job(chain_id).scheduled_at
    assert abs((scheduled - later).total_seconds()) < 0.01
    # A past run_at is clamped to now: it never jumps ahead of jobs already due.
    assert client.get_job(early.id).scheduled_at > past + dt.timedelta(days=365 * 20)


def test_reads_can_join_the_callers_transaction(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 1, "sleep": 0})
        assert client.get_chain(chain.id, session=s).status == "pending"
        assert client.get_job(chain.id, work, session=s).input == {"n": 1, "sleep": 0}


def test_read_with_the_wrong_type_is_refused(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 1, "sleep": 0})
    with pytest.raises(q.JobTypeMismatchError) as info:
        client.get_chain(chain.id, signup)
    assert (info.value.expected, info.value.actual) == ("signup", "work")
