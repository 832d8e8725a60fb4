"""AsyncQueuert and AsyncWorker: the sync guarantees, on AsyncSession, on both engines.

Each test is an ``async def`` run on a fresh event loop by ``@in_event_loop``
(no pytest-asyncio). The async engine is made from the test database's URL with
an asyncio driver: ``sqlite+aiosqlite`` for the SQLite file, ``postgresql+psycopg``
as is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import gc
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from sqlalchemy import (
    Engine,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    make_url,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q
from queuert_sa.models import Job as JobRow

from .conftest import Db
from .test_worker import FakeClock

TEST_DEADLINE_S = 60


class AsyncAppBase(DeclarativeBase):
    pass


class Effect(AsyncAppBase):
    """One row per committed handler write; (job_id, label) is unique, so doing a job twice fails."""

    __tablename__ = "async_effect"
    __table_args__ = (UniqueConstraint("job_id", "label"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36))
    label: Mapped[str] = mapped_column(String(50))


class WorkIn(TypedDict):
    n: int


types = q.JobTypes()
work = types.entry("async-work", input=WorkIn, output=int)
plain = types.entry("async-plain", input=WorkIn, output=int)
first = types.entry("async-first", input=WorkIn, continues_with=["async-second"])
second = types.define("async-second", input=WorkIn, output=int)
part = types.entry("async-part", input=WorkIn, output=int)
fan_in = types.entry("async-fan-in", input=WorkIn, output=list, blockers=q.many(part))


def in_event_loop(
    test: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., None]:
    """Run an ``async def`` test on its own event loop, failing it after TEST_DEADLINE_S."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_DEADLINE_S))

    return run


def async_url(db: Db) -> str:
    url = make_url(db.url)
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    return url.render_as_string(hide_password=False)


@dataclass
class Env:
    """An async engine on the test database, its client and its in-memory notifier."""

    db: Db
    engine: AsyncEngine
    notify: q.InMemoryNotify
    client: q.AsyncQueuert

    def session(self) -> AsyncSession:
        return AsyncSession(self.engine, expire_on_commit=False)

    def write_session(self) -> AsyncSession:
        """A session that takes SQLite's write lock up front (for reads before writes)."""
        return AsyncSession(self.client.immediate_engine(), expire_on_commit=False)

    async def start(
        self, job_type: q.JobType[WorkIn, Any] = work, n: int = 1, **options: Any
    ) -> q.Chain[WorkIn, Any]:
        async with self.write_session() as s, s.begin():
            return await self.client.start_chain(s, job_type, {"n": n}, **options)

    async def scalar(self, stmt: Any) -> int:
        async with self.session() as s:
            return int((await s.execute(stmt)).scalar_one())

    async def effects(self, label: str | None = None) -> int:
        stmt = select(func.count()).select_from(Effect)
        if label is not None:
            stmt = stmt.where(Effect.label == label)
        return await self.scalar(stmt)

    async def job_count(self) -> int:
        return await self.scalar(select(func.count()).select_from(JobRow))


@asynccontextmanager
async def environment(db: Db, *, clock: FakeClock | None = None) -> AsyncIterator[Env]:
    engine = create_async_engine(async_url(db))
    try:
        notify = q.InMemoryNotify()
        if clock is None:
            client = q.AsyncQueuert(engine, types, notify=notify)
        else:
            client = q.AsyncQueuert(engine, types, notify=notify, clock=clock)
        async with engine.begin() as conn:
            await conn.run_sync(q.metadata.create_all)
            await conn.run_sync(AsyncAppBase.metadata.create_all)
            await conn.execute(delete(Effect))
        yield Env(db, engine, notify, client)
    finally:
        await engine.dispose()


def effect(attempt: q.AsyncAttempt[Any, Any] | q.Attempt[Any, Any], label: str) -> Effect:
    return Effect(job_id=str(attempt.job.id), label=label)


# --- producing ------------------------------------------------------------------------


@in_event_loop
async def test_start_chain_commits_with_business_rows_and_wakes_only_after_commit(
    db: Db,
) -> None:
    async with environment(db) as env:
        woken: list[str] = []
        env.notify.listen_job_scheduled([work.name], lambda name, count: woken.append(name))
        async with env.session() as s:
            async with s.begin():
                s.add(Effect(job_id="order-1", label="business"))
                chain = await env.client.start_chain(s, work, {"n": 1})
                # Invisible to other connections, and no wake-up, before COMMIT.
                assert await env.job_count() == 0
                assert (woken, env.notify.sent["job_scheduled"]) == ([], 0)
            assert (woken, env.notify.sent["job_scheduled"]) == ([work.name], 1)
        assert await env.effects("business") == 1
        stored = await env.client.get_chain(chain.id, work)
        assert (stored.status, stored.input, stored.current_job_id) == (
            "pending",
            {"n": 1},
            chain.id,
        )
        job = await env.client.get_job(chain.id, work)
        assert (job.chain_id, job.chain_index, job.attempt) == (chain.id, 0, 0)


@in_event_loop
async def test_rollback_leaves_neither_job_nor_business_row_nor_wakeup(db: Db) -> None:
    async with environment(db) as env:
        async with env.session() as s:
            s.add(Effect(job_id="order-1", label="business"))
            chain = await env.client.start_chain(s, work, {"n": 1})
            await s.rollback()
        with pytest.raises(RuntimeError, match="request failed"):  # noqa: PT012 - raised inside the transaction block
            async with env.session() as s, s.begin():
                s.add(Effect(job_id="order-2", label="business"))
                await env.client.start_chain(s, work, {"n": 2})
                raise RuntimeError("request failed")
        assert (await env.job_count(), await env.effects()) == (0, 0)
        assert env.notify.sent["job_scheduled"] == 0
        with pytest.raises(q.ChainNotFoundError):
            await env.client.get_chain(chain.id)


@in_event_loop
async def test_rolled_back_savepoint_drops_its_job_and_its_wakeup(db: Db) -> None:
    async with environment(db) as env:
        woken: list[str] = []
        names = [work.name, first.name, part.name]
        env.notify.listen_job_scheduled(names, lambda name, count: woken.append(name))
        async with env.session() as s, s.begin():
            kept = await env.client.start_chain(s, work, {"n": 1})
            savepoint = await s.begin_nested()
            dropped = await env.client.start_chain(s, first, {"n": 2})
            await savepoint.rollback()
            async with s.begin_nested():
                released = await env.client.start_chain(s, part, {"n": 3})
            assert woken == []  # a released SAVEPOINT is not a COMMIT
        assert sorted(woken) == sorted([work.name, part.name])
        assert await env.job_count() == 2
        assert (await env.client.get_chain(kept.id)).status == "pending"
        assert (await env.client.get_chain(released.id)).status == "pending"
        with pytest.raises(q.ChainNotFoundError):
            await env.client.get_chain(dropped.id)


@in_event_loop
async def test_dedup_and_refusals(db: Db) -> None:
    async with environment(db) as env:
        original = await env.start(work, 1, dedup=q.Dedup("k"))
        again = await env.start(work, 2, dedup=q.Dedup("k"))
        assert original.deduplicated is False
        assert (again.id, again.deduplicated, again.input) == (original.id, True, {"n": 1})
        assert await env.job_count() == 1

        with Session(db.engine) as sync_session:
            with pytest.raises(q.SessionRequiredError, match="use Queuert"):
                await env.client.start_chain(sync_session, work, {"n": 3})  # type: ignore[arg-type]
            with pytest.raises(q.SessionRequiredError):
                await env.client.get_chain(original.id, session=sync_session)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="AsyncEngine"):
            q.AsyncQueuert(db.engine, types)  # type: ignore[arg-type]
        assert await env.job_count() == 1


@in_event_loop
async def test_reads_and_operations_through_the_async_client(db: Db) -> None:
    clock = FakeClock()
    async with environment(db, clock=clock) as env:
        client = env.client
        later = await env.start(work, 1, run_in=dt.timedelta(hours=1))
        other = await env.start(first, 2)
        assert [c.id for c in await client.list_chains(types=[work])] == [later.id]
        assert (await client.get_job(later.id)).scheduled_at == clock.now + dt.timedelta(hours=1)

        sent = env.notify.sent["job_scheduled"]
        async with env.write_session() as s, s.begin():
            triggered = await client.trigger_job(s, later.id)
            assert env.notify.sent["job_scheduled"] == sent  # woken after COMMIT only
        assert env.notify.sent["job_scheduled"] == sent + 1
        assert triggered.scheduled_at <= clock.now
        assert (await client.get_job(later.id, work)).scheduled_at <= clock.now

        # complete_chain: continue from application code, then complete the next step.
        async with env.write_session() as s, s.begin():
            await client.complete_chain(
                s, other.id, first, lambda c: c.continue_with(second, {"n": 3})
            )
        async with env.write_session() as s, s.begin():
            done = await client.complete_chain(s, other.id, first, lambda c: c.complete(9))
            assert done.status == "completed"  # read in the same transaction
        jobs = await client.list_chain_jobs(other.id)
        assert [(j.type_name, j.chain_index, j.status) for j in jobs] == [
            (first.name, 0, "completed"),
            (second.name, 1, "completed"),
        ]
        assert (await client.get_chain(other.id)).output == 9

        with pytest.raises(q.WaitChainTimeoutError):
            await client.await_chain(later.id, timeout=dt.timedelta(milliseconds=200))

        async with env.write_session() as s, s.begin():
            gone = await client.delete_chains(s, [later.id])
        assert [c.id for c in gone] == [later.id]
        with pytest.raises(q.ChainNotFoundError):
            await client.get_chain(later.id)

        assert await client.cleanup(older_than=dt.timedelta(hours=1)) == 0
        clock.advance(dt.timedelta(hours=2))
        assert await client.cleanup(older_than=dt.timedelta(hours=1)) == 1
        assert await env.job_count() == 0


# --- AsyncWorker, atomic -------------------------------------------------------------


@in_event_loop
async def test_atomic_handler_writes_and_completion_commit_together(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 21)
        worker = env.client.worker()
        seen: list[tuple[int, str, int]] = []

        @worker.handler(work)
        async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, "work"))
            await attempt.session.flush()
            outside = await env.client.get_job(attempt.job.id)  # another connection
            seen.append((await env.effects(), outside.status, attempt.job.attempt))
            return attempt.complete(attempt.input["n"] * 2)

        assert await worker.drain() == 1
        assert seen == [(0, "pending", 1)]
        job = await env.client.get_job(chain.id)
        assert (job.status, job.output, job.completed_by) == ("completed", 42, worker.worker_id)
        assert await env.effects("work") == 1
        assert (worker.completed, worker.failed) == (1, 0)


@in_event_loop
async def test_atomic_exception_rolls_back_writes_then_retry_completes(db: Db) -> None:
    clock = FakeClock()
    async with environment(db, clock=clock) as env:
        chain = await env.start(work, 21)
        worker = env.client.worker(backoff=q.Backoff(initial=dt.timedelta(seconds=30), jitter=0))
        seen: list[tuple[int, str | None]] = []

        @worker.handler(work)
        async def flaky(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            seen.append((attempt.job.attempt, attempt.job.last_attempt_error))
            attempt.session.add(effect(attempt, f"try-{attempt.job.attempt}"))
            await attempt.session.flush()
            if attempt.job.attempt == 1:
                raise ValueError("payment gateway said no")
            return attempt.complete(attempt.input["n"] * 2)

        assert await worker.drain() == 1
        job = await env.client.get_job(chain.id)
        assert (job.status, job.attempt, job.output) == ("pending", 1, None)
        assert job.scheduled_at == clock.now + dt.timedelta(seconds=30)
        assert job.last_attempt_error is not None
        assert "ValueError: payment gateway said no" in job.last_attempt_error
        assert await env.effects() == 0
        assert (worker.completed, worker.failed) == (0, 1)

        assert await worker.drain() == 0  # not due yet
        clock.advance(dt.timedelta(seconds=30))
        assert await worker.drain() == 1
        done = await env.client.get_job(chain.id)
        assert (done.status, done.output, done.attempt, done.last_attempt_error) == (
            "completed",
            42,
            2,
            None,
        )
        assert [a for a, _ in seen] == [1, 2]
        assert "payment gateway said no" in (seen[1][1] or "")
        assert (await env.effects(), await env.effects("try-2")) == (1, 1)


@in_event_loop
async def test_continue_with_hands_the_chain_to_the_next_type(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(first, 5)
        worker = env.client.worker()

        @worker.handler(first)
        async def step_one(attempt: q.AsyncAttempt[WorkIn, None]) -> q.Outcome:
            attempt.session.add(effect(attempt, "first"))
            return attempt.continue_with(second, {"n": attempt.input["n"] + 1})

        @worker.handler(second)
        async def step_two(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, "second"))
            return attempt.complete(attempt.input["n"] * 10)

        assert await worker.drain(max_jobs=1) == 1
        middle = await env.client.get_chain(chain.id)
        assert (middle.status, middle.current_type_name, middle.current_index) == (
            "pending",
            second.name,
            1,
        )
        assert await worker.drain() == 1
        done = await env.client.get_chain(chain.id, first)
        assert (done.status, done.output, done.current_index) == ("completed", 60, 1)
        jobs = await env.client.list_chain_jobs(chain.id)
        assert [(j.type_name, j.status, j.output) for j in jobs] == [
            (first.name, "completed", None),
            (second.name, "completed", 60),
        ]
        assert (await env.effects("first"), await env.effects("second")) == (1, 1)


@pytest.mark.parametrize("violation", ["string", "commit"])
@in_event_loop
async def test_handler_contract_violation_is_recorded_as_handler_error(
    db: Db, violation: str
) -> None:
    async with environment(db) as env:
        chain = await env.start(work)
        worker = env.client.worker()

        @worker.handler(work)
        async def wrong(attempt: q.AsyncAttempt[WorkIn, int]) -> Any:
            attempt.session.add(effect(attempt, "wrong"))
            await attempt.session.flush()
            if violation == "commit":
                await attempt.session.commit()
                return attempt.complete(1)
            attempt.complete(1)
            return "done"

        assert await worker.drain() == 1
        job = await env.client.get_job(chain.id)
        assert (job.status, job.attempt, job.output) == ("pending", 1, None)
        assert job.last_attempt_error is not None
        assert "HandlerError" in job.last_attempt_error
        expected = {
            "string": "must return attempt.complete",
            "commit": "attempt.session.commit() in the handler",
        }[violation]
        assert expected in job.last_attempt_error
        assert len(await env.client.list_chain_jobs(chain.id)) == 1
        if violation == "string":
            assert await env.effects() == 0


@in_event_loop
async def test_atomic_timeout_cancels_a_hung_handler_and_reschedules(db: Db) -> None:
    clock = FakeClock()
    async with environment(db, clock=clock) as env:
        chain = await env.start(work, 4)
        worker = env.client.worker(backoff=q.Backoff(initial=dt.timedelta(seconds=30), jitter=0))

        @worker.handler(work, timeout=dt.timedelta(seconds=0.3))
        async def hangs_once(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, f"try-{attempt.job.attempt}"))
            await attempt.session.flush()
            if attempt.job.attempt == 1:
                await asyncio.sleep(3600)
            return attempt.complete(attempt.input["n"])

        started = time.monotonic()
        assert await worker.drain() == 1
        assert time.monotonic() - started < 5
        job = await env.client.get_job(chain.id)
        assert (job.status, job.attempt) == ("pending", 1)
        assert job.last_attempt_error is not None
        assert "TimeoutError" in job.last_attempt_error
        assert await env.effects() == 0
        assert (worker.completed, worker.failed) == (0, 1)

        clock.advance(dt.timedelta(seconds=30))
        assert await worker.drain() == 1
        done = await env.client.get_job(chain.id)
        assert (done.status, done.output, done.attempt) == ("completed", 4, 2)
        assert (await env.effects(), await env.effects("try-2")) == (1, 1)


@in_event_loop
async def test_fan_in_handler_sees_blockers_in_slot_order(db: Db) -> None:
    async with environment(db) as env:
        async with env.write_session() as s, s.begin():
            a = await env.client.start_chain(s, part, {"n": 1})
            b = await env.client.start_chain(s, part, {"n": 2})
            joined = await env.client.start_chain(s, fan_in, {"n": 0}, blockers=[b, a])
        assert joined.status == "blocked"
        worker = env.client.worker()
        seen: list[list[uuid.UUID]] = []

        @worker.handler(part)
        async def fetch(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            return attempt.complete(attempt.input["n"] * 10)

        @worker.handler(fan_in)
        async def merge(attempt: q.AsyncAttempt[WorkIn, list[int]]) -> q.Outcome:
            seen.append([c.id for c in attempt.blockers])
            return attempt.complete(attempt.blocker_outputs(part))

        assert await worker.drain() == 3
        assert seen == [[b.id, a.id]]
        done = await env.client.get_chain(joined.id)
        assert (done.status, done.output) == ("completed", [20, 10])


# --- AsyncWorker, staged -------------------------------------------------------------


@in_event_loop
async def test_staged_prepare_external_step_then_transaction(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 4)
        worker = env.client.worker()
        seen: dict[str, object] = {}

        @worker.handler(work, mode="staged")
        async def charge(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.prepare() as s:
                seen["in_prepare"] = (await s.get_one(JobRow, attempt.job.id)).status
                s.add(effect(attempt, "prepared"))
            # Committed: running, leased, and the prepare writes are visible.
            outside = await env.client.get_job(attempt.job.id)
            seen["outside"] = (outside.status, outside.leased_by, await env.effects("prepared"))
            await asyncio.sleep(0.05)  # the external call, with no transaction open
            async with attempt.transaction() as s:
                s.add(effect(attempt, "charged"))
                return attempt.complete(attempt.input["n"] * 10)

        assert await worker.drain() == 1
        assert seen == {"in_prepare": "running", "outside": ("running", worker.worker_id, 1)}
        job = await env.client.get_job(chain.id)
        assert (job.status, job.output, job.leased_by, job.leased_until) == (
            "completed",
            40,
            None,
            None,
        )
        assert (await env.effects("prepared"), await env.effects("charged")) == (1, 1)
        assert (worker.completed, worker.failed) == (1, 0)


@in_event_loop
async def test_staged_chain_deleted_during_external_step_writes_nothing(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work)
        worker = env.client.worker()
        deleted: list[list[uuid.UUID]] = []
        caught: list[BaseException] = []

        @worker.handler(work, mode="staged", lease=dt.timedelta(seconds=1))
        async def charge(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.prepare():
                pass
            async with env.write_session() as s, s.begin():
                gone = await env.client.delete_chains(s, [attempt.job.chain_id])
            deleted.append([c.id for c in gone])
            try:
                async with attempt.transaction() as s:
                    s.add(effect(attempt, "late"))
                    return attempt.complete(1)
            except q.QueuertError as exc:
                caught.append(exc)
                raise

        assert await worker.drain() == 1
        assert deleted == [[chain.id]]
        assert [type(e) for e in caught] == [q.JobNotFoundError]
        assert await env.effects() == 0
        assert await env.job_count() == 0
        with pytest.raises(q.ChainNotFoundError):
            await env.client.get_chain(chain.id)
        assert worker.completed == 0


@in_event_loop
async def test_staged_attempt_of_a_stopped_worker_is_taken_after_its_lease(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 4)
        lease = dt.timedelta(seconds=0.5)
        dying = env.client.worker(worker_id="dying", poll_interval=dt.timedelta(seconds=30))
        in_external_step = asyncio.Event()

        @dying.handler(work, mode="staged", lease=lease)
        async def slow(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.prepare():
                pass
            in_external_step.set()
            await asyncio.sleep(3600)
            async with attempt.transaction() as s:
                s.add(effect(attempt, "dying"))
                return attempt.complete(-1)

        await dying.start()
        await asyncio.wait_for(in_external_step.wait(), 10)
        assert await dying.stop(timeout=dt.timedelta(milliseconds=100)) is False
        # Cut off by the grace period: left to its lease, as if the worker had died.
        left = await env.client.get_job(chain.id)
        assert (left.status, left.leased_by, left.attempt) == ("running", "dying", 1)

        rescuer = env.client.worker(worker_id="rescuer")

        @rescuer.handler(work, mode="staged", lease=lease)
        async def finish(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.transaction() as s:
                s.add(effect(attempt, "rescuer"))
                return attempt.complete(attempt.input["n"] * 2)

        deadline = time.monotonic() + 5
        while await rescuer.drain() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        job = await env.client.get_job(chain.id)
        assert (job.status, job.output, job.completed_by, job.attempt) == (
            "completed",
            8,
            "rescuer",
            2,
        )
        assert (await env.effects("dying"), await env.effects("rescuer")) == (0, 1)


@in_event_loop
async def test_expired_lease_is_reaped_and_the_late_staged_worker_writes_nothing(db: Db) -> None:
    clock = FakeClock()  # time moves past the lease without waiting for it
    async with environment(db, clock=clock) as env:
        chain = await env.start(work, 4)
        late = env.client.worker(worker_id="late", poll_interval=dt.timedelta(seconds=30))
        in_external_step, release = asyncio.Event(), asyncio.Event()
        caught: list[BaseException] = []

        @late.handler(work, mode="staged", lease=dt.timedelta(seconds=0.5))
        async def slow(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.prepare():
                pass
            in_external_step.set()
            await release.wait()
            try:
                async with attempt.transaction() as s:
                    s.add(effect(attempt, "late"))
                    return attempt.complete(-1)
            except q.QueuertError as exc:
                caught.append(exc)
                raise

        rescuer = env.client.worker(worker_id="rescuer")

        @rescuer.handler(work)
        async def finish(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, "rescuer"))
            return attempt.complete(attempt.input["n"] * 2)

        await late.start()
        try:
            await asyncio.wait_for(in_external_step.wait(), 10)
            assert await rescuer.drain() == 0  # the lease still holds
            for _ in range(20):  # the late worker's renewal may win a round
                clock.advance(dt.timedelta(seconds=1))
                if await rescuer.drain() == 1:
                    break
            release.set()
        finally:
            stopped = await late.stop(timeout=dt.timedelta(seconds=10))
        assert stopped is True
        assert [type(e) for e in caught] == [q.JobAlreadyCompletedError]
        job = await env.client.get_job(chain.id)
        assert (job.status, job.output, job.completed_by, job.attempt) == (
            "completed",
            8,
            "rescuer",
            2,
        )
        assert (await env.effects("late"), await env.effects("rescuer")) == (0, 1)
        assert (late.completed, rescuer.completed) == (0, 1)


# --- plain def handlers ---------------------------------------------------------------


@in_event_loop
async def test_plain_def_handler_runs_on_a_thread_beside_async_handlers(db: Db) -> None:
    # The plain handlers run on the application's own sync engine, passed as
    # thread_engine=.
    async with environment(db) as env:
        thread_engine = create_engine(db.url)
        try:
            await _plain_and_async_handlers(env, thread_engine)
        finally:
            thread_engine.dispose()
        # The worker is gone: nothing it opened may be left open.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
        leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaked == [], "a stopped AsyncWorker left database connections open"


async def _plain_and_async_handlers(env: Env, thread_engine: Engine) -> None:
    worker = env.client.worker(thread_engine=thread_engine)
    threads: dict[str, int] = {}

    @worker.handler(plain)
    def sync_handler(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        threads["plain"] = threading.get_ident()
        assert isinstance(attempt.session, Session)
        attempt.session.add(effect(attempt, "plain"))
        return attempt.complete(attempt.input["n"] + 100)

    @worker.handler(work)
    async def async_handler(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        threads["async"] = threading.get_ident()
        attempt.session.add(effect(attempt, "async"))
        return attempt.complete(attempt.input["n"] + 1)

    assert set(worker.type_names) == {plain.name, work.name}
    by_thread = await env.start(plain, 1)
    on_loop = await env.start(work, 2)
    assert await worker.drain() == 2
    assert (await env.client.get_chain(by_thread.id)).output == 101
    assert (await env.client.get_chain(on_loop.id)).output == 3
    assert threads["async"] == threading.get_ident()
    assert threads["plain"] != threading.get_ident()
    assert (await env.effects("plain"), await env.effects("async")) == (1, 1)

    # Started, the thread worker runs with it and stops with it.
    await worker.start()
    try:
        later = await env.start(plain, 2)
        done = await env.client.await_chain(later.id, timeout=dt.timedelta(seconds=10))
    finally:
        stopped = await worker.stop(timeout=dt.timedelta(seconds=10))
    assert (done.output, stopped) == (102, True)
    assert await env.effects("plain") == 2


# --- wake-up and stopping -------------------------------------------------------------


@in_event_loop
async def test_idle_worker_wakes_on_commit_and_stops_promptly(db: Db) -> None:
    async with environment(db) as env:
        worker = env.client.worker(concurrency=2, poll_interval=dt.timedelta(seconds=30))

        @worker.handler(work)
        async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, "work"))
            return attempt.complete(attempt.input["n"] + 1)

        await worker.start()
        try:
            await asyncio.sleep(0.3)  # every slot idle on its 30 s poll
            chain = await env.start(work, 41)
            started = time.monotonic()
            # A 30 s poll on either side would time this out.
            done = await env.client.await_chain(
                chain.id,
                work,
                timeout=dt.timedelta(seconds=2),
                poll_interval=dt.timedelta(seconds=30),
            )
            waited = time.monotonic() - started
            await asyncio.sleep(0.1)  # idle again
        finally:
            stopping = time.monotonic()
            clean = await worker.stop()
            stop_took = time.monotonic() - stopping
        assert (done.status, done.output) == ("completed", 42)
        assert waited < 2
        assert clean is True
        assert stop_took < 1, f"stop() of an idle worker took {stop_took:.1f} s"
        assert await env.effects("work") == 1


@in_event_loop
async def test_stop_waits_for_an_in_flight_attempt(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work)
        worker = env.client.worker(poll_interval=dt.timedelta(milliseconds=50))
        entered = asyncio.Event()

        @worker.handler(work)
        async def slow(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            entered.set()
            await asyncio.sleep(0.5)
            attempt.session.add(effect(attempt, "slow"))
            return attempt.complete(7)

        await worker.start()
        await asyncio.wait_for(entered.wait(), 10)
        assert await worker.stop(timeout=dt.timedelta(seconds=10)) is True
        assert (await env.client.get_chain(chain.id)).output == 7
        assert await env.effects("slow") == 1


@in_event_loop
async def test_attempt_still_running_after_the_grace_is_cancelled_and_rolled_back(
    db: Db,
) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 3)
        worker = env.client.worker(poll_interval=dt.timedelta(milliseconds=50))
        entered = asyncio.Event()

        @worker.handler(work)
        async def hung(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            attempt.session.add(effect(attempt, "hung"))
            await attempt.session.flush()
            entered.set()
            await asyncio.sleep(3600)
            return attempt.complete(-1)

        await worker.start()
        await asyncio.wait_for(entered.wait(), 10)
        stopping = time.monotonic()
        clean = await worker.stop(timeout=dt.timedelta(milliseconds=300))
        assert time.monotonic() - stopping < 3
        assert clean is False
        assert worker.completed == 0
        job = await env.client.get_job(chain.id)
        assert await env.effects() == 0
        # Rolled back, as after a crash: pending, due at once, no attempt recorded.
        now = dt.datetime.now(dt.UTC)
        assert (job.status, job.attempt, job.last_attempt_error, job.scheduled_at <= now) == (
            "pending",
            0,
            None,
            True,
        )
        successor = env.client.worker(worker_id="successor")
        successor.handler(work)(_complete_with_n)
        assert await successor.drain() == 1
        done = await env.client.get_job(chain.id)
        assert (done.status, done.output, done.completed_by) == ("completed", 3, "successor")


async def _complete_with_n(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
    return attempt.complete(attempt.input["n"])


# --- concurrency -----------------------------------------------------------------------


@in_event_loop
async def test_200_jobs_with_8_slots_each_done_exactly_once(db: Db) -> None:
    async with environment(db) as env:
        async with env.write_session() as s, s.begin():
            await env.client.start_chains(s, [q.ChainStart(work, {"n": i}) for i in range(200)])
        worker = env.client.worker(concurrency=8, poll_interval=dt.timedelta(milliseconds=100))
        running = peak = 0

        @worker.handler(work)
        async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                attempt.session.add(effect(attempt, "work"))
                await attempt.session.flush()
                await asyncio.sleep(0.005)
                return attempt.complete(attempt.input["n"])
            finally:
                running -= 1

        await worker.start()
        deadline = time.monotonic() + 40
        try:
            while await env.effects() < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            clean = await worker.stop()
        assert clean is True
        distinct = await env.scalar(select(func.count(func.distinct(Effect.job_id))))
        open_jobs = await env.scalar(
            select(func.count()).select_from(JobRow).where(JobRow.status != "completed")
        )
        assert (await env.effects(), distinct, open_jobs) == (200, 200, 0)
        assert (worker.completed, worker.failed) == (200, 0)
        if env.client.capabilities.single_writer:
            assert peak == 1  # SQLite: attempts that write run one at a time
        else:
            assert peak > 1, "the 8 slots never overlapped"


# --- one worker, several event loops; drain leaves nothing behind ---------------------


def test_one_async_worker_runs_in_two_event_loops_in_turn(db: Db) -> None:
    """A module-level worker under per-test event loops: each run starts and stops cleanly."""
    engine = create_async_engine(async_url(db))
    client = q.AsyncQueuert(engine, types)
    worker = client.worker(poll_interval=dt.timedelta(seconds=30), handle_signals="never")

    @worker.handler(work)
    async def handle(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(attempt.input["n"])

    async def one_run() -> tuple[bool, int]:
        async with engine.begin() as conn:
            await conn.run_sync(q.metadata.create_all)
        async with AsyncSession(engine) as s, s.begin():
            chain = await client.start_chain(s, work, {"n": 5})
        runner = asyncio.create_task(worker.run())
        done = await client.await_chain(chain.id, timeout=dt.timedelta(seconds=10))
        worker.request_stop()
        clean = await asyncio.wait_for(runner, 10)
        await engine.dispose()  # its pooled connections belong to this loop
        return clean, done.output

    assert asyncio.run(one_run()) == (True, 5)
    # Was: "Event ... is bound to a different event loop" in the second loop.
    assert asyncio.run(one_run()) == (True, 5)


def test_drain_with_a_staged_handler_leaves_no_thread_or_listener(db: Db) -> None:
    notify = q.InMemoryNotify()
    client = q.Queuert(db.engine, types, notify=notify)
    worker = client.worker()

    @worker.handler(work, mode="staged")
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        with attempt.transaction():
            return attempt.complete(attempt.input["n"])

    for n in range(3):
        with Session(db.engine) as s, s.begin():
            client.start_chain(s, work, {"n": n})
        assert worker.drain() == 1

    keepers = [t for t in threading.enumerate() if t.name == "queuert-lease-keeper"]
    assert keepers == []
    assert notify._ownership == set()  # pyright: ignore[reportPrivateUsage]
