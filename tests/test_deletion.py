"""delete_chains: all-or-nothing deletion of chains, in the caller's transaction.

Pinned here, on SQLite and PostgreSQL: a deleted chain loses every job and
every blocker row touching it; a chain that a job outside the set declares as
a blocker is never deleted (BlockerReferenceError lists the references, even
for completed dependents, and nothing at all is deleted); cascade=True follows
blockers transitively and is refused the same way; unknown ids are skipped;
rollback undoes the deletion; workers never run a deleted job, and a staged
attempt that lost its job to a deletion writes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any, TypedDict

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job, JobBlocker

from .app import Effect
from .conftest import Db
from .test_worker import FakeClock


class SourceIn(TypedDict):
    source: str


types = q.JobTypes()
fetch = types.entry("fetch", input=SourceIn, output=int)
report = types.entry("report", input=SourceIn, output=int, blockers=q.many(fetch))
digest = types.entry("digest", input=SourceIn, output=int, blockers=q.many(report))
steps = types.entry("steps", input=SourceIn, continues_with=["steps-2"])
steps_2 = types.define("steps-2", input=SourceIn, output=int)
charge = types.entry("charge", input=SourceIn, output=int)


def new_client(db: Db) -> q.Queuert:
    return q.Queuert(db.engine, types, clock=FakeClock())


def start(
    client: q.Queuert,
    db: Db,
    job_type: q.JobType[SourceIn, Any],
    source: str,
    blockers: list[Any] | None = None,
) -> q.Chain[SourceIn, Any]:
    with Session(db.engine) as s, s.begin():
        if blockers:
            return client.start_chain(s, job_type, {"source": source}, blockers=blockers)
        return client.start_chain(s, job_type, {"source": source})


def delete(client: q.Queuert, db: Db, ids: list[Any], **kw: Any) -> list[uuid.UUID]:
    with Session(db.engine) as s, s.begin():
        return [c.id for c in client.delete_chains(s, ids, **kw)]


def chain_ids(db: Db) -> set[uuid.UUID]:
    with Session(db.engine) as s:
        return set(s.scalars(select(Job.chain_id).distinct()))


def job_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def blocker_rows(db: Db) -> set[tuple[uuid.UUID, uuid.UUID]]:
    with Session(db.engine) as s:
        rows = s.execute(select(JobBlocker.job_id, JobBlocker.blocked_by_chain_id)).all()
    return {(r[0], r[1]) for r in rows}


def effects(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Effect)).scalar_one()


def run_all(client: q.Queuert) -> int:
    worker = client.worker()
    worker.handler(fetch)(lambda a: a.complete(len(a.input["source"])))
    worker.handler(report)(lambda a: a.complete(sum(c.output for c in a.blockers)))
    worker.handler(digest)(lambda a: a.complete(sum(c.output for c in a.blockers)))
    worker.handler(steps)(lambda a: a.continue_with(steps_2, {"source": a.input["source"]}))
    return worker.drain()


# --- deleting ---------------------------------------------------------------------


def test_delete_removes_every_job_and_blocker_row_and_returns_the_chains(db: Db) -> None:
    client = new_client(db)
    f1, f2 = start(client, db, fetch, "a"), start(client, db, fetch, "bb")
    dependent = start(client, db, report, "r", blockers=[f1, f2])
    other = start(client, db, report, "other", blockers=[f1])
    multi = start(client, db, steps, "s")
    worker = client.worker()
    worker.handler(steps)(lambda a: a.continue_with(steps_2, {"source": "s2"}))
    assert worker.drain() == 1
    step2_id = client.get_chain(multi.id).current_job_id
    assert job_count(db) == 6

    with Session(db.engine) as s, s.begin():
        deleted = client.delete_chains(s, [dependent.id, multi.id])
        with pytest.raises(q.ChainNotFoundError):  # gone inside the transaction already
            client.get_chain(dependent.id, session=s)
    # The chains as they were: listed order, identity, input and latest state.
    assert [c.id for c in deleted] == [dependent.id, multi.id]
    assert [(c.type_name, c.input, c.status) for c in deleted] == [
        ("report", {"source": "r"}, "blocked"),
        ("steps", {"source": "s"}, "pending"),
    ]
    assert [(c.current_index, c.current_type_name) for c in deleted] == [
        (0, "report"),
        (1, "steps-2"),
    ]
    assert deleted[1].current_job_id == step2_id

    for chain_id in (dependent.id, multi.id):
        with pytest.raises(q.ChainNotFoundError):
            client.get_chain(chain_id)
    for job_id in (multi.id, step2_id):
        with pytest.raises(q.JobNotFoundError):
            client.get_job(job_id)
    assert chain_ids(db) == {f1.id, f2.id, other.id}
    assert job_count(db) == 3
    assert blocker_rows(db) == {(other.id, f1.id)}  # the deleted report's rows are gone
    assert [j.id for j in client.list_blocked_jobs(f1.id)] == [other.id]
    assert client.list_blocked_jobs(f2.id).items == []
    assert client.list_chain_jobs(multi.id).items == []
    # The blockers themselves are untouched and still run.
    assert run_all(client) == 3
    assert client.get_chain(other.id).output == 1


def test_refused_when_an_outside_job_declares_a_blocker_and_nothing_is_deleted(db: Db) -> None:
    client = new_client(db)
    f1, f2 = start(client, db, fetch, "a"), start(client, db, fetch, "bb")
    dependent = start(client, db, report, "r", blockers=[f1, f2])
    loose = start(client, db, fetch, "loose")
    before = job_count(db)

    with Session(db.engine) as s, s.begin():
        with pytest.raises(q.BlockerReferenceError, match=r"Nothing was deleted") as refused:
            client.delete_chains(s, [loose.id, f1.id, f2.id])
        # The caller's transaction is intact: other work in it still commits.
        kept = client.start_chain(s, fetch, {"source": "after the refusal"})
        s.add(Effect(job_id=str(kept.id), label="same transaction"))
    error = refused.value
    assert set(error.references) == {
        q.BlockerReference(job_id=dependent.id, chain_id=dependent.id, blocked_by_chain_id=f1.id),
        q.BlockerReference(job_id=dependent.id, chain_id=dependent.id, blocked_by_chain_id=f2.id),
    }
    assert error.referenced_chain_ids == sorted([f1.id, f2.id])
    assert str(dependent.id) in str(error)
    # All or nothing: the unreferenced chain in the same call was not deleted either.
    assert chain_ids(db) == {f1.id, f2.id, dependent.id, loose.id, kept.id}
    assert job_count(db) == before + 1
    assert effects(db) == 1
    assert len(blocker_rows(db)) == 2

    # Blocker rows are kept after the dependent completed: still refused.
    assert run_all(client) == 5
    assert client.get_chain(dependent.id).status == "completed"
    with pytest.raises(q.BlockerReferenceError) as refused_again:
        delete(client, db, [f1.id])
    assert refused_again.value.references == (
        q.BlockerReference(job_id=dependent.id, chain_id=dependent.id, blocked_by_chain_id=f1.id),
    )
    assert f1.id in chain_ids(db)


def test_a_continuation_waiting_on_a_blocker_is_a_reference_too(db: Db) -> None:
    local = q.JobTypes()
    src = local.entry("src", input=SourceIn, output=int)
    plan = local.entry("plan", input=SourceIn, continues_with=["merge"])
    merge = local.define("merge", input=SourceIn, output=int, blockers=[src])
    client = q.Queuert(db.engine, local)
    with Session(db.engine) as s, s.begin():
        blocker = client.start_chain(s, src, {"source": "x"})
        planned = client.start_chain(s, plan, {"source": "p"})
    worker = client.worker()
    worker.handler(plan)(lambda a: a.continue_with(merge, {"source": "m"}, blockers=[blocker.id]))
    assert worker.drain() == 1
    step = client.get_chain(planned.id).current_job_id
    with pytest.raises(q.BlockerReferenceError) as refused:
        delete(client, db, [blocker.id])
    assert refused.value.references == (
        q.BlockerReference(job_id=step, chain_id=planned.id, blocked_by_chain_id=blocker.id),
    )
    assert delete(client, db, [planned.id, blocker.id]) == [planned.id, blocker.id]
    assert job_count(db) == 0


def test_deleting_the_dependent_together_with_its_blockers_works(db: Db) -> None:
    client = new_client(db)
    f1, f2 = start(client, db, fetch, "a"), start(client, db, fetch, "bb")
    dependent = start(client, db, report, "r", blockers=[f1, f2])
    assert delete(client, db, [dependent.id, f1.id]) == [dependent.id, f1.id]
    assert chain_ids(db) == {f2.id}
    assert blocker_rows(db) == set()
    assert delete(client, db, [f2.id]) == [f2.id]  # no longer referenced
    assert job_count(db) == 0


def test_cascade_deletes_the_blocker_chains_transitively(db: Db) -> None:
    client = new_client(db)
    f1, f2, f3 = (start(client, db, fetch, s) for s in ("a", "bb", "ccc"))
    r1 = start(client, db, report, "r1", blockers=[f1, f2])
    r2 = start(client, db, report, "r2", blockers=[f3])
    top = start(client, db, digest, "d", blockers=[r1, r2])
    unrelated = start(client, db, fetch, "u")

    # Without cascade only the listed chain goes; its blockers stay.
    snapshot = chain_ids(db)
    with Session(db.engine) as s, s.begin():
        assert [c.id for c in client.delete_chains(s, [top.id])] == [top.id]
        s.rollback()
    assert chain_ids(db) == snapshot

    deleted = delete(client, db, [top.id], cascade=True)
    assert deleted[0] == top.id  # the listed chains first, then the cascaded ones
    assert sorted(deleted[1:]) == sorted([r1.id, r2.id, f1.id, f2.id, f3.id])
    assert len(deleted) == 6
    assert chain_ids(db) == {unrelated.id}
    assert blocker_rows(db) == set()


def test_cascade_is_refused_when_a_blocker_is_shared_with_an_outside_dependent(db: Db) -> None:
    client = new_client(db)
    shared, own = start(client, db, fetch, "shared"), start(client, db, fetch, "own")
    inside = start(client, db, report, "inside", blockers=[shared, own])
    outside = start(client, db, report, "outside", blockers=[shared])
    top = start(client, db, digest, "d", blockers=[inside])
    snapshot, rows = chain_ids(db), blocker_rows(db)

    with pytest.raises(q.BlockerReferenceError) as refused:
        delete(client, db, [top.id], cascade=True)
    assert refused.value.references == (
        q.BlockerReference(job_id=outside.id, chain_id=outside.id, blocked_by_chain_id=shared.id),
    )
    assert refused.value.referenced_chain_ids == [shared.id]
    assert (chain_ids(db), blocker_rows(db)) == (snapshot, rows)

    # With the outside dependent in the set, the whole graph goes.
    deleted = delete(client, db, [top.id, outside.id], cascade=True)
    assert deleted[:2] == [top.id, outside.id]
    assert set(deleted) == snapshot
    assert job_count(db) == 0


def test_unknown_ids_are_skipped(db: Db) -> None:
    client = new_client(db)
    chain = start(client, db, steps, "s")
    worker = client.worker()
    worker.handler(steps)(lambda a: a.continue_with(steps_2, {"source": "s2"}))
    worker.drain()
    step2_id = client.get_chain(chain.id).current_job_id
    other = start(client, db, fetch, "x")

    assert delete(client, db, [uuid.uuid4()]) == []
    assert delete(client, db, []) == []
    # A continuation's job id is not a chain id: nothing to delete.
    assert delete(client, db, [step2_id]) == []
    assert job_count(db) == 3
    assert delete(client, db, [uuid.uuid4(), str(other.id), other.id]) == [other.id]
    assert chain_ids(db) == {chain.id}


@pytest.mark.parametrize("single", ["uuid", "str"])
def test_a_single_id_is_a_type_error(db: Db, single: str) -> None:
    client = new_client(db)
    chain = start(client, db, fetch, "x")
    value: Any = chain.id if single == "uuid" else str(chain.id)
    with Session(db.engine) as s, s.begin(), pytest.raises(TypeError, match=r"wrap a single id"):
        client.delete_chains(s, value)
    assert chain_ids(db) == {chain.id}


def test_a_rolled_back_deletion_deletes_nothing(db: Db) -> None:
    client = new_client(db)
    f1 = start(client, db, fetch, "a")
    dependent = start(client, db, report, "r", blockers=[f1])
    snapshot, rows = chain_ids(db), blocker_rows(db)

    with Session(db.engine) as s:
        with s.begin():
            assert len(client.delete_chains(s, [dependent.id, f1.id])) == 2
            s.rollback()
        assert (chain_ids(db), blocker_rows(db)) == (snapshot, rows)

        def failing_unit_of_work() -> None:
            with s.begin():
                client.delete_chains(s, [dependent.id, f1.id])
                raise RuntimeError("the caller's work failed")

        with pytest.raises(RuntimeError, match=r"caller's work failed"):
            failing_unit_of_work()
        assert (chain_ids(db), blocker_rows(db)) == (snapshot, rows)

        with s.begin():  # a rolled-back SAVEPOINT undoes it; the outer work commits
            with s.begin_nested() as savepoint:
                client.delete_chains(s, [dependent.id])
                savepoint.rollback()
            s.add(Effect(job_id=str(dependent.id), label="outer"))
    assert (chain_ids(db), blocker_rows(db)) == (snapshot, rows)
    assert effects(db) == 1
    assert client.get_chain(dependent.id).status == "blocked"


@pytest.mark.parametrize("first", ["attach", "delete"])
def test_a_dependent_attached_concurrently_never_dangles(db: Db, first: str) -> None:
    """Attaching a dependent and deleting its blocker, in two transactions at once: the
    second waits for the first, then is refused (the deletion by BlockerReferenceError,
    the attach by InvalidBlockersError); nothing references a deleted chain."""
    client = new_client(db)
    blocker = start(client, db, fetch, "b")
    writer = q.immediate_engine(db.engine)  # SQLite: wait for the write lock up front
    outcome: list[object] = []

    def attach() -> None:
        try:
            with Session(writer) as s, s.begin():
                outcome.append(client.start_chain(s, report, {"source": "r"}, blockers=[blocker]))
        except q.QueuertError as exc:
            outcome.append(exc)

    def remove() -> None:
        try:
            with Session(writer) as s, s.begin():
                outcome.append(client.delete_chains(s, [blocker.id]))
        except q.QueuertError as exc:
            outcome.append(exc)

    second = threading.Thread(target=remove if first == "attach" else attach)
    with Session(writer) as s, s.begin():
        if first == "attach":
            held = client.start_chain(s, report, {"source": "held"}, blockers=[blocker])
        else:
            held = client.delete_chains(s, [blocker.id])
        second.start()
        second.join(0.5)
        assert second.is_alive(), "the second transaction should wait for the first"
    second.join(20)
    assert len(outcome) == 1
    if first == "attach":
        assert isinstance(outcome[0], q.BlockerReferenceError)
        assert isinstance(held, q.Chain)
        dependent = held.id
        assert outcome[0].references == (
            q.BlockerReference(
                job_id=dependent, chain_id=dependent, blocked_by_chain_id=blocker.id
            ),
        )
        assert chain_ids(db) == {blocker.id, dependent}
        assert blocker_rows(db) == {(dependent, blocker.id)}
    else:
        assert isinstance(outcome[0], q.InvalidBlockersError)
        assert "does not exist" in str(outcome[0])
        assert chain_ids(db) == set()
        assert blocker_rows(db) == set()


# --- workers and waiters ----------------------------------------------------------


def test_a_deleted_pending_job_is_never_run(db: Db) -> None:
    client = new_client(db)
    doomed = start(client, db, fetch, "doomed")
    kept = start(client, db, fetch, "kept")
    continued = start(client, db, steps, "s")
    first = client.worker()
    first.handler(steps)(lambda a: a.continue_with(steps_2, {"source": "s2"}))
    assert first.drain() == 1  # steps-2 is now pending
    assert delete(client, db, [doomed.id, continued.id]) == [doomed.id, continued.id]

    ran: list[uuid.UUID] = []
    worker = client.worker()

    @worker.handler(fetch)
    def record(attempt: q.Attempt[SourceIn, int]) -> q.Outcome:
        ran.append(attempt.job.id)
        return attempt.complete(1)

    worker.handler(steps_2)(lambda a: ran.append(a.job.id) or a.complete(2))
    assert worker.drain() == 1
    assert ran == [kept.id]


def test_staged_attempt_that_lost_its_job_to_delete_chains_writes_nothing(db: Db) -> None:
    client = new_client(db)
    chain = start(client, db, charge, "card")
    worker = client.worker()
    in_external_step, deleted = threading.Event(), threading.Event()
    reasons: list[object] = []
    caught: list[BaseException] = []
    drained: list[int] = []

    @worker.handler(charge, mode="staged", lease=dt.timedelta(seconds=1))
    def charge_card(attempt: q.Attempt[SourceIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        in_external_step.set()
        assert deleted.wait(10)
        reasons.append(attempt.signal.wait(5) and attempt.signal.reason)
        try:
            with attempt.transaction() as s:
                s.add(Effect(job_id=str(attempt.job.id), label="late"))
                return attempt.complete(1)
        except q.QueuertError as exc:
            caught.append(exc)
            raise

    runner = threading.Thread(target=lambda: drained.append(worker.drain()))
    runner.start()
    try:
        assert in_external_step.wait(10)
        with Session(db.engine) as s, s.begin():
            gone = client.delete_chains(s, [chain.id])
        assert [(c.id, c.status) for c in gone] == [(chain.id, "running")]
    finally:
        deleted.set()
        runner.join(20)
    assert drained == [1]
    assert len(caught) == 1
    assert isinstance(caught[0], q.JobNotFoundError)
    assert caught[0].job_id == chain.id
    assert reasons == ["not_found"]
    assert effects(db) == 0
    assert job_count(db) == 0  # nothing re-inserted or rescheduled


def test_delete_waits_for_an_atomic_attempt_holding_the_job(db: Db) -> None:
    client = new_client(db)
    chain = start(client, db, fetch, "held")
    worker = client.worker()
    in_handler, release = threading.Event(), threading.Event()

    @worker.handler(fetch)
    def slow(attempt: q.Attempt[SourceIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="done"))
        in_handler.set()
        assert release.wait(10)
        return attempt.complete(7)

    gone: list[q.Chain[Any, Any]] = []

    def delete_meanwhile() -> None:
        with Session(db.engine) as s, s.begin():
            gone.extend(client.delete_chains(s, [chain.id]))

    runner = threading.Thread(target=worker.drain)
    runner.start()
    try:
        assert in_handler.wait(10)
        deleter = threading.Thread(target=delete_meanwhile)
        deleter.start()
        deleter.join(0.5)
        assert deleter.is_alive(), "delete_chains should wait for the attempt's lock"
        release.set()
        deleter.join(20)
    finally:
        release.set()
        runner.join(20)
    # The attempt committed first (its business row stays); then the chain was deleted.
    assert [(c.id, c.status, c.output) for c in gone] == [(chain.id, "completed", 7)]
    assert effects(db) == 1
    assert job_count(db) == 0


def test_await_chain_on_a_deleted_chain_raises_chain_not_found(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = new_client(db)
    before = start(client, db, fetch, "before")
    delete(client, db, [before.id])
    with pytest.raises(q.ChainNotFoundError) as missing:
        client.await_chain(before.id, timeout=dt.timedelta(seconds=5))
    assert missing.value.chain_id == before.id

    # Deleted while a caller waits: the waiter's next read raises.
    during = start(client, db, fetch, "during")
    first_read = threading.Event()
    read_chain = client.get_chain

    def observed(*args: Any, **kwargs: Any) -> Any:
        chain = read_chain(*args, **kwargs)
        first_read.set()
        return chain

    monkeypatch.setattr(client, "get_chain", observed)
    outcome: list[BaseException | q.Chain[Any, Any]] = []

    def wait() -> None:
        try:
            outcome.append(
                client.await_chain(
                    during.id,
                    timeout=dt.timedelta(seconds=20),
                    poll_interval=dt.timedelta(milliseconds=50),
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert first_read.wait(10)
    delete(client, db, [during.id])
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], q.ChainNotFoundError)


def test_delete_while_an_atomic_attempt_continues_the_chain(
    pg: Db, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: deleting a chain whose atomic attempt is about to continue_with waits
    for the attempt, follows the chain to its continuation and deletes it all; the
    continuation's attempt (another slot of the worker) never deadlocks with the
    deletion. Repeated: the deadlock depended on which transaction came first."""
    client = q.Queuert(pg.engine, types)
    worker = client.worker(concurrency=2, poll_interval=dt.timedelta(milliseconds=50))
    started = threading.Event()

    @worker.handler(steps)
    def first_step(attempt: q.Attempt[SourceIn, None]) -> q.Outcome:
        started.set()
        time.sleep(0.5)
        return attempt.continue_with(steps_2, {"source": attempt.input["source"]})

    worker.handler(steps_2)(lambda a: a.complete(len(a.input["source"])))
    caplog.set_level(logging.DEBUG, logger="queuert_sa")
    worker.start()
    try:
        for round_ in range(3):
            started.clear()
            chain = start(client, pg, steps, f"round {round_}")
            assert started.wait(10)
            with Session(pg.engine) as s, s.begin():
                gone = client.delete_chains(s, [chain.id])
            assert [c.id for c in gone] == [chain.id]
            assert gone[0].current_type_name == "steps-2"  # it waited for the attempt
            assert client.list_chain_jobs(chain.id).items == []
            assert job_count(pg) == 0
    finally:
        assert worker.stop()
    assert worker.failed == 0
    conflicts = [r for r in caplog.records if "TransactionConflictError" in r.getMessage()]
    assert conflicts == []
    assert "deadlock" not in caplog.text


def test_more_than_ten_thousand_ids_are_refused_before_any_sql(db: Db) -> None:
    client = new_client(db)
    chain = start(client, db, fetch, "kept")
    too_many = [uuid.uuid4() for _ in range(10_000)] + [chain.id]
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with (
            Session(db.engine) as s,
            s.begin(),
            pytest.raises(ValueError, match=r"at most 10000 ids"),
        ):
            client.delete_chains(s, too_many)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert statements == []
    assert chain_ids(db) == {chain.id}
    # The limit counts distinct ids: repeats are not refused.
    assert delete(client, db, [chain.id] * 10_001) == [chain.id]
    assert job_count(db) == 0
