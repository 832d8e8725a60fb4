"""Deduplication: a keyed start returns the matching chain instead of creating one.

Pins SEMANTICS.md "Deduplication": the key is namespaced by chain type; scope
"open" matches a chain whose latest job is not completed, "any" matches any
chain (optionally within ``window``, measured on the chain's start);
``exclude`` skips chain ids; a duplicate writes nothing; concurrent
transactions with the same key yield exactly one chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

import queuert_sa as q
import queuert_sa.state.dedup as ops_dedup
from queuert_sa.models import Job

from .app import Greeting, UserIn, WorkIn, greet, job_types, signup, staged_work, work
from .conftest import Db
from .test_worker import FakeClock


def job_count(db: Db) -> int:
    with Session(db.engine) as s:
        return s.execute(select(func.count()).select_from(Job)).scalar_one()


def start(
    client: q.Queuert,
    db: Db,
    dedup: q.Dedup | None,
    n: int = 1,
    job_type: q.JobType[WorkIn, int] = work,
) -> q.Chain[WorkIn, Any]:
    with Session(db.engine) as s, s.begin():
        return client.start_chain(s, job_type, {"n": n, "sleep": 0}, dedup=dedup)


def complete(client: q.Queuert, db: Db, chain_id: uuid.UUID, output: int = 0) -> None:
    with Session(db.engine) as s, s.begin():
        client.complete_chain(s, chain_id, work, lambda c: c.complete(output))


def test_open_scope_matches_until_the_chain_completes(db: Db, client: q.Queuert) -> None:
    first = start(client, db, q.Dedup("report:7"), n=1)
    again = start(client, db, q.Dedup("report:7"), n=2)

    assert first.deduplicated is False
    assert (again.id, again.deduplicated, again.status) == (first.id, True, "pending")
    assert job_count(db) == 1

    complete(client, db, first.id, output=5)
    after = start(client, db, q.Dedup("report:7"), n=3)
    assert after.deduplicated is False
    assert after.id != first.id
    assert job_count(db) == 2
    # The new chain is the open one now.
    assert start(client, db, q.Dedup("report:7"), n=4).id == after.id
    assert job_count(db) == 2


def test_a_running_chain_counts_as_open(db: Db, client: q.Queuert) -> None:
    chain = start(client, db, q.Dedup("k"))
    worker = client.worker()
    seen: list[q.Chain[WorkIn, Any]] = []

    @worker.handler(work)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        if attempt.job.chain_id == chain.id:
            # The handler's own transaction sees its job running.
            seen.append(
                client.start_chain(attempt.session, work, {"n": 9, "sleep": 0}, dedup=q.Dedup("k"))
            )
        return attempt.complete(1)

    assert worker.drain() == 1
    assert [(c.id, c.deduplicated, c.status) for c in seen] == [(chain.id, True, "running")]
    assert job_count(db) == 1


def test_any_scope_matches_completed_chains_newest_first(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, job_types, clock=clock)
    first = start(client, db, q.Dedup("import", scope="any"), n=1)
    complete(client, db, first.id, output=11)

    dup = start(client, db, q.Dedup("import", scope="any"), n=2)
    assert (dup.id, dup.deduplicated, dup.status, dup.output) == (first.id, True, "completed", 11)
    assert job_count(db) == 1

    # Scope "open" ignores the completed chain and starts a second one ...
    clock.advance(dt.timedelta(seconds=1))
    second = start(client, db, q.Dedup("import"), n=3)
    assert second.deduplicated is False
    # ... and scope "any" then returns the most recently started one.
    latest = start(client, db, q.Dedup("import", scope="any"), n=4)
    assert (latest.id, latest.deduplicated) == (second.id, True)
    assert job_count(db) == 2


@pytest.mark.parametrize("scope", ["any", "open"])
def test_window_only_matches_chains_started_within_it(db: Db, scope: str) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, job_types, clock=clock)
    window = dt.timedelta(hours=1)
    first = start(client, db, q.Dedup("digest", scope=scope, window=window))  # type: ignore[arg-type]

    clock.advance(dt.timedelta(minutes=59))
    inside = start(client, db, q.Dedup("digest", scope=scope, window=window))  # type: ignore[arg-type]
    assert (inside.id, inside.deduplicated) == (first.id, True)

    clock.advance(dt.timedelta(minutes=2))  # the first chain started 61 minutes ago
    outside = start(client, db, q.Dedup("digest", scope=scope, window=window))  # type: ignore[arg-type]
    assert outside.deduplicated is False
    assert outside.id != first.id
    assert job_count(db) == 2
    # Without a window the old chain still matches (it is still open / exists).
    unbounded = start(client, db, q.Dedup("digest", scope=scope))  # type: ignore[arg-type]
    assert unbounded.deduplicated is True


def test_window_is_measured_on_the_chain_start_not_its_latest_step(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, job_types, clock=clock)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, signup, {"user_id": 1}, dedup=q.Dedup("u1"))
    clock.advance(dt.timedelta(minutes=50))
    with Session(db.engine) as s, s.begin():
        client.complete_chain(s, chain.id, signup, lambda c: c.continue_with(greet, {"user_id": 1}))
    clock.advance(dt.timedelta(minutes=20))  # continuation 20 min old, chain 70 min old

    with Session(db.engine) as s, s.begin():
        fresh = client.start_chain(
            s, signup, {"user_id": 1}, dedup=q.Dedup("u1", window=dt.timedelta(hours=1))
        )
    assert fresh.deduplicated is False
    assert fresh.id != chain.id


def test_exclude_skips_the_given_chains(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, job_types, clock=clock)
    a = start(client, db, q.Dedup("k"))
    clock.advance(dt.timedelta(seconds=1))

    b = start(client, db, q.Dedup("k", exclude=[a.id]))
    assert b.deduplicated is False
    assert b.id != a.id
    # B is open and not excluded: it matches.
    assert start(client, db, q.Dedup("k", exclude=[a.id])).id == b.id
    clock.advance(dt.timedelta(seconds=1))
    # Ids may be given as strings.
    c = start(client, db, q.Dedup("k", exclude=[str(a.id), str(b.id)]))
    assert c.deduplicated is False
    assert job_count(db) == 3

    # "any" + exclude: the newest chain that is not excluded.
    found = start(client, db, q.Dedup("k", scope="any", exclude=[c.id]))
    assert (found.id, found.deduplicated) == (b.id, True)
    assert job_count(db) == 3


def test_key_is_namespaced_by_chain_type(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        w = client.start_chain(s, work, {"n": 1, "sleep": 0}, dedup=q.Dedup("shared"))
        sw = client.start_chain(s, staged_work, {"n": 1, "sleep": 0}, dedup=q.Dedup("shared"))
        su = client.start_chain(s, signup, {"user_id": 1}, dedup=q.Dedup("shared"))
    assert len({w.id, sw.id, su.id}) == 3
    assert [w.deduplicated, sw.deduplicated, su.deduplicated] == [False, False, False]

    with Session(db.engine) as s, s.begin():
        w2 = client.start_chain(s, work, {"n": 2, "sleep": 0}, dedup=q.Dedup("shared"))
        su2 = client.start_chain(s, signup, {"user_id": 2}, dedup=q.Dedup("shared"))
    assert (w2.id, w2.deduplicated, w2.type_name) == (w.id, True, "work")
    assert (su2.id, su2.deduplicated, su2.type_name) == (su.id, True, "signup")
    assert job_count(db) == 3


def test_batch_duplicates_collapse_to_the_first_start(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        results = client.start_chains(
            s,
            [
                work({"n": 0, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 1, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 2, "sleep": 0}, dedup=q.Dedup("b")),
                work({"n": 3, "sleep": 0}),
                staged_work({"n": 4, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 5, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 6, "sleep": 0}, dedup=q.Dedup("b")),
            ],
        )

    assert len(results) == 7
    a, a_dup, b, plain, other_type, a_dup2, b_dup = results
    assert [r.deduplicated for r in results] == [False, True, False, False, False, True, True]
    assert a_dup.id == a_dup2.id == a.id
    assert b_dup.id == b.id
    assert other_type.id != a.id
    # A collapsed start returns the chain that was created: its input, not its own.
    assert a_dup.input == a_dup2.input == {"n": 0, "sleep": 0}
    assert b_dup.input == {"n": 2, "sleep": 0}
    assert job_count(db) == 4
    with Session(db.engine) as s:
        stored = set(s.scalars(select(Job.id)))
    assert stored == {a.id, b.id, plain.id, other_type.id}


def test_batch_whose_first_start_duplicates_an_existing_chain(db: Db, client: q.Queuert) -> None:
    existing = start(client, db, q.Dedup("a"), n=100)
    with Session(db.engine) as s, s.begin():
        results = client.start_chains(
            s,
            [
                work({"n": 0, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 1, "sleep": 0}, dedup=q.Dedup("a")),
                work({"n": 2, "sleep": 0}, dedup=q.Dedup("c")),
            ],
        )
    first, second, fresh = results
    assert (first.id, first.deduplicated) == (existing.id, True)
    assert (second.id, second.deduplicated) == (existing.id, True)
    assert first.input == second.input == {"n": 100, "sleep": 0}
    assert fresh.deduplicated is False
    assert job_count(db) == 2


def test_a_duplicate_writes_nothing_and_sends_no_wakeup(
    db: Db, client: q.Queuert, notify: q.InMemoryNotify
) -> None:
    original = start(client, db, q.Dedup("k"))
    woken: list[str] = []
    notify.listen_job_scheduled(["work"], lambda name, count: woken.append(name))
    sent_before = dict(notify.sent)
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with Session(db.engine) as s, s.begin():
            dup = client.start_chain(s, work, {"n": 2, "sleep": 0}, dedup=q.Dedup("k"))
            dups = client.start_chains(
                s,
                [
                    work({"n": 3, "sleep": 0}, dedup=q.Dedup("k")),
                    work({"n": 4, "sleep": 0}, dedup=q.Dedup("k")),
                ],
            )
    finally:
        event.remove(db.engine, "before_cursor_execute", record)

    assert dup.id == original.id
    assert [d.id for d in dups] == [original.id, original.id]
    assert job_count(db) == 1
    assert not [st for st in statements if st.lstrip().upper().startswith("INSERT")]
    assert notify.sent == sent_before
    assert woken == []
    job = client.get_job(original.id, work)
    assert job.input == {"n": 1, "sleep": 0}
    assert job.deduplication_key == "k"


def test_multi_step_chain_is_still_open_after_its_first_job_continued(
    db: Db, client: q.Queuert
) -> None:
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, signup, {"user_id": 1}, dedup=q.Dedup("user:1"))
    worker = client.worker()

    @worker.handler(signup)
    def do_signup(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": attempt.input["user_id"]})

    @worker.handler(greet)
    def do_greet(attempt: q.Attempt[UserIn, Greeting]) -> q.Outcome:
        return attempt.complete({"greeting": "hi"})

    assert worker.drain(max_jobs=1) == 1  # signup done, greet pending
    root = client.get_job(chain.id)
    assert root.status == "completed"  # the chain's first job is completed ...

    with Session(db.engine) as s, s.begin():
        dup = client.start_chain(s, signup, {"user_id": 1}, dedup=q.Dedup("user:1"))
    # ... yet the chain is open: its latest job (greet) is pending.
    assert (dup.id, dup.deduplicated, dup.status) == (chain.id, True, "pending")
    assert (dup.current_index, dup.current_type_name) == (1, "greet")
    assert client.get_job(dup.current_job_id).deduplication_key == "user:1"
    assert job_count(db) == 2

    assert worker.drain() == 1  # greet completes the chain
    with Session(db.engine) as s, s.begin():
        fresh = client.start_chain(s, signup, {"user_id": 1}, dedup=q.Dedup("user:1"))
    assert fresh.deduplicated is False
    assert fresh.id != chain.id
    assert job_count(db) == 3


def test_rolled_back_start_does_not_block_a_later_one(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s:
        gone = client.start_chain(s, work, {"n": 1, "sleep": 0}, dedup=q.Dedup("k"))
        s.rollback()
    with Session(db.engine) as s, s.begin():
        sp = s.begin_nested()
        in_savepoint = client.start_chain(s, work, {"n": 2, "sleep": 0}, dedup=q.Dedup("k"))
        sp.rollback()
        kept = client.start_chain(s, work, {"n": 3, "sleep": 0}, dedup=q.Dedup("k"))
        # The same transaction sees its own uncommitted chain.
        same_tx = client.start_chain(s, work, {"n": 4, "sleep": 0}, dedup=q.Dedup("k"))

    assert kept.deduplicated is False
    assert len({gone.id, in_savepoint.id, kept.id}) == 3
    assert (same_tx.id, same_tx.deduplicated) == (kept.id, True)
    assert job_count(db) == 1
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(gone.id)


def test_duplicate_returns_the_stored_chain(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        original = client.start_chain(
            s, work, {"n": 1, "sleep": 0}, run_in=dt.timedelta(hours=1), dedup=q.Dedup("k")
        )
    with Session(db.engine) as s, s.begin():
        dup = client.start_chain(s, work, {"n": 999, "sleep": 0.5}, dedup=q.Dedup("k"))

    stored = client.get_chain(original.id, work)
    assert dup == dataclasses.replace(stored, deduplicated=True)
    assert dup.id == dup.current_job_id == original.id
    assert dup.status == "pending"
    assert dup.input == {"n": 1, "sleep": 0}
    assert dup.created_at == stored.created_at
    assert original.deduplicated is False
    # The duplicate's schedule options were ignored too.
    assert client.get_job(original.id).scheduled_at > dt.datetime.now(dt.UTC) + dt.timedelta(
        minutes=59
    )


def test_long_and_non_ascii_keys_up_to_the_limit_match(db: Db, client: q.Queuert) -> None:
    key = "é" * 254 + "k"
    first = start(client, db, q.Dedup(key))
    assert start(client, db, q.Dedup(key)).id == first.id
    # A key that differs only in its last character is another key.
    assert start(client, db, q.Dedup(key[:-1] + "j")).deduplicated is False
    assert client.get_job(first.id).deduplication_key == key


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: q.Dedup(""), "non-empty"),
        (lambda: q.Dedup("x" * 256), "limit is 255"),
        (lambda: q.Dedup("k", scope="all"), "scope"),  # type: ignore[arg-type]
        (lambda: q.Dedup("k", window=dt.timedelta(0)), "positive"),
        (lambda: q.Dedup("k", window=dt.timedelta(seconds=-1)), "positive"),
        (lambda: q.Dedup("k", window=60), "positive"),  # type: ignore[arg-type]
        (lambda: q.Dedup("k", exclude=uuid.uuid4()), "list"),  # type: ignore[arg-type]
        (lambda: q.Dedup("k", exclude=str(uuid.uuid4())), "list"),
    ],
    ids=[
        "empty-key",
        "long-key",
        "bad-scope",
        "zero-window",
        "negative-window",
        "int-window",
        "single-uuid-exclude",
        "single-str-exclude",
    ],
)
def test_invalid_dedup_options_are_refused(make: Callable[[], q.Dedup], message: str) -> None:
    with pytest.raises(q.DeduplicationError, match=message):
        make()


def test_valid_dedup_options_are_normalised() -> None:
    chain_id = uuid.uuid4()
    dedup = q.Dedup("x" * 255, scope="any", window=dt.timedelta(days=1), exclude=[str(chain_id)])
    assert dedup.exclude == (chain_id,)
    assert dedup.scope == "any"
    assert q.Dedup("k").scope == "open"
    with pytest.raises(q.InvalidJobIdError):
        q.Dedup("k", exclude=["not-a-uuid"])


def test_dedup_that_is_not_a_dedup_is_refused_before_any_sql(db: Db, client: q.Queuert) -> None:
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        with Session(db.engine) as s, pytest.raises(q.DeduplicationError, match="Dedup"):
            client.start_chain(s, work, {"n": 1, "sleep": 0}, dedup="k")  # type: ignore[arg-type]
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert statements == []
    assert job_count(db) == 0


def test_continue_with_dedup_is_refused(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, signup, {"user_id": 1})
    with Session(db.engine) as s, s.begin(), pytest.raises(q.DeduplicationError, match="chain"):
        client.complete_chain(
            s,
            chain.id,
            signup,
            lambda c: c.continue_with(greet, {"user_id": 1}, dedup=q.Dedup("x")),
        )

    worker = client.worker()

    @worker.handler(signup)
    def do_signup(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        return attempt.continue_with(greet, {"user_id": 1}, dedup=q.Dedup("x"))

    assert worker.drain() == 1
    job = client.get_job(chain.id)
    assert job.status == "pending"
    assert job.last_attempt_error is not None
    assert "DeduplicationError" in job.last_attempt_error
    assert job_count(db) == 1  # no continuation


def test_concurrent_transactions_with_the_same_key_create_one_chain(
    db: Db, client: q.Queuert
) -> None:
    threads = 20
    barrier = threading.Barrier(threads)
    results: list[q.Chain[WorkIn, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        try:
            with Session(db.engine) as s, s.begin():
                barrier.wait(10)
                chain = client.start_chain(s, work, {"n": n, "sleep": 0}, dedup=q.Dedup("race"))
                # The application goes on working in its transaction: widen the window.
                time.sleep(0.01)
            with lock:
                results.append(chain)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    pool = [threading.Thread(target=racer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert errors == []
    assert len(results) == threads
    winners = [c for c in results if not c.deduplicated]
    assert len(winners) == 1
    winner = winners[0]
    losers = [c for c in results if c.deduplicated]
    assert len(losers) == threads - 1
    assert {c.id for c in losers} == {winner.id}
    assert {repr(c.input) for c in losers} == {repr(winner.input)}
    assert job_count(db) == 1


def test_concurrent_batches_with_overlapping_keys_create_one_chain_per_key(
    db: Db, client: q.Queuert
) -> None:
    """Batches lock their keys in one fixed order: no deadlock, whatever order they list them."""
    threads, keys = 8, [f"key-{i}" for i in range(5)]
    barrier = threading.Barrier(threads)
    results: list[list[q.Chain[WorkIn, Any]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer(n: int) -> None:
        order = keys[n % len(keys) :] + keys[: n % len(keys)]
        if n % 2:
            order.reverse()
        try:
            with Session(db.engine) as s, s.begin():
                barrier.wait(10)
                chains = client.start_chains(
                    s, [work({"n": n, "sleep": 0}, dedup=q.Dedup(k)) for k in order]
                )
                time.sleep(0.01)
            with lock:
                results.append(chains)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    pool = [threading.Thread(target=racer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert errors == []
    assert len(results) == threads
    created = [c for chains in results for c in chains if not c.deduplicated]
    assert len(created) == len(keys)
    assert {c.id for chains in results for c in chains} == {c.id for c in created}
    assert job_count(db) == len(keys)
    with Session(db.engine) as s:
        stored_keys = sorted(s.scalars(select(Job.deduplication_key)))
    assert stored_keys == keys


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_postgres_dedup_needs_read_committed(pg: Db, isolation: str) -> None:
    client = q.Queuert(pg.engine, job_types)
    engine = pg.engine.execution_options(isolation_level=isolation)
    with Session(engine) as s:
        # Starting without a key works at any isolation level.
        plain = client.start_chain(s, work, {"n": 1, "sleep": 0})
        with pytest.raises(q.DeduplicationError, match="READ COMMITTED"):
            client.start_chain(s, work, {"n": 2, "sleep": 0}, dedup=q.Dedup("k"))
        s.rollback()
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(plain.id)
    assert job_count(pg) == 0


def test_matched_chain_deleted_between_lookup_and_read_starts_a_new_chain(
    pg: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the advisory lock serialises starts, not deletions. A chain that
    delete_chains (or cleanup) removes after the duplicate lookup found it is looked
    up again, not assumed to exist: the start creates a new chain."""
    client = q.Queuert(pg.engine, job_types)
    doomed = start(client, pg, q.Dedup("k"))
    find_duplicate = ops_dedup.find_duplicate
    deletions: list[uuid.UUID] = []

    def deleted_meanwhile(*args: Any, **kwargs: Any) -> Any:
        found = find_duplicate(*args, **kwargs)
        if not deletions:  # another transaction deletes the match and commits now
            with Session(pg.engine) as other, other.begin():
                deletions.extend(c.id for c in client.delete_chains(other, [doomed.id]))
        return found

    monkeypatch.setattr(ops_dedup, "find_duplicate", deleted_meanwhile)
    fresh = start(client, pg, q.Dedup("k"), n=2)

    assert deletions == [doomed.id]
    assert fresh.deduplicated is False
    assert fresh.id != doomed.id
    assert fresh.input == {"n": 2, "sleep": 0}
    assert job_count(pg) == 1
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(doomed.id)
    assert client.get_chain(fresh.id).status == "pending"
