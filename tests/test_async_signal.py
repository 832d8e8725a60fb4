"""``await attempt.signal.wait()``: an async staged handler races its external call
against losing the job, on both engines, without blocking the worker's event loop.

The job is lost while the handler awaits (its chain cancelled, its lease taken
by a rival); the ``await`` returns promptly, and a ticker on the same loop
measures how late the loop ran meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import update

import queuert_sa as q
from queuert_sa.models import Job as JobRow

from .conftest import Db
from .test_async import Env, WorkIn, environment, in_event_loop, work

#: Much longer than any test here: the external call the handler gives up on.
EXTERNAL_CALL_S = 30.0


@dataclass
class Race:
    """What the racing handler saw: whether it lost the job, why, when, and the loop's lag."""

    prepared: asyncio.Event = field(default_factory=asyncio.Event)
    lost: bool | None = None
    reason: str | None = None
    noticed_at: float | None = None
    written: list[BaseException] = field(default_factory=list[BaseException])


async def ticker(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    """How late the loop wakes a 10 ms sleeper, each time, until ``stop``."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(period)
        lags.append(loop.time() - before - period)


def racing_worker(env: Env, race: Race, *, lease: dt.timedelta) -> q.AsyncWorker:
    worker = env.client.worker(poll_interval=dt.timedelta(seconds=30), handle_signals="never")

    @worker.handler(work, mode="staged", lease=lease)
    async def charge(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        async with attempt.prepare():
            pass
        race.prepared.set()
        call = asyncio.ensure_future(asyncio.sleep(EXTERNAL_CALL_S))
        lost = asyncio.ensure_future(attempt.signal.wait())
        done, _ = await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        race.noticed_at = time.monotonic()
        race.lost, race.reason = lost in done, attempt.signal.reason
        call.cancel()
        lost.cancel()
        try:
            async with attempt.transaction():
                return attempt.complete(1)
        except q.QueuertError as exc:
            race.written.append(exc)
            raise

    return worker


async def run_race(env: Env, race: Race, lose: Any, *, lease: dt.timedelta) -> tuple[float, float]:
    """Drain the worker, lose the job once the handler awaits; (seconds to notice, max lag)."""
    worker = racing_worker(env, race, lease=lease)
    drained = asyncio.ensure_future(worker.drain())
    await asyncio.wait_for(race.prepared.wait(), 20)
    stop, lags = asyncio.Event(), list[float]()
    ticking = asyncio.ensure_future(ticker(stop, lags))
    await asyncio.sleep(0.1)  # the handler is awaiting its call now
    lost_at = await lose()
    assert await asyncio.wait_for(drained, 20) == 1
    stop.set()
    await ticking
    assert race.noticed_at is not None
    return race.noticed_at - lost_at, max(lags)


@in_event_loop
async def test_a_cancelled_chain_ends_the_await_at_once_and_the_loop_runs_on(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 1)
        race = Race()

        async def cancel() -> float:
            async with env.write_session() as s, s.begin():
                await env.client.cancel_chain(s, chain.id, reason="customer left")
            return time.monotonic()

        # Renewals are 30 s apart: only the ownership-lost message can end the wait in time.
        took, lag = await run_race(env, race, cancel, lease=dt.timedelta(seconds=60))

        assert (race.lost, race.reason) == (True, "cancelled")
        assert took < 2.0
        assert lag < 0.25  # a blocking wait would stall the loop (and the cancel) for good
        assert [type(e) for e in race.written] == [q.JobCancelledError]
        assert (await env.client.get_chain(chain.id)).status == "cancelled"
        print(
            f"\n{db.kind}: cancelled -> await returned in {took * 1000:.0f} ms, loop lag max "
            f"{lag * 1000:.0f} ms"
        )


@in_event_loop
async def test_a_lease_taken_by_a_rival_ends_the_await_at_the_next_renewal(db: Db) -> None:
    async with environment(db) as env:
        chain = await env.start(work, 2)
        race = Race()

        async def take_over() -> float:
            # What a rival that reaped the job and took it leaves in the row.
            async with env.write_session() as s, s.begin():
                await s.execute(
                    update(JobRow).where(JobRow.id == chain.id).values(leased_by="rival")
                )
            return time.monotonic()

        took, lag = await run_race(env, race, take_over, lease=dt.timedelta(seconds=1))

        assert (race.lost, race.reason) == (True, "taken_by_another_worker")
        assert took < 3.0  # renewals every half lease
        assert lag < 0.25
        assert [type(e) for e in race.written] == [q.JobTakenByAnotherWorkerError]
        job = await env.client.get_job(chain.id)
        assert (job.status, job.leased_by) == ("running", "rival")


@in_event_loop
async def test_the_await_times_out_while_the_job_is_kept(db: Db) -> None:
    async with environment(db) as env:
        await env.start(work, 3)
        waited: list[tuple[bool, float]] = []
        worker = env.client.worker(handle_signals="never")

        @worker.handler(work, mode="staged", lease=dt.timedelta(seconds=1))
        async def patient(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
            async with attempt.prepare():
                pass
            started = time.monotonic()
            # Renewals run meanwhile (every 0.5 s) and keep the job.
            waited.append((await attempt.signal.wait(1.2), time.monotonic() - started))
            assert not attempt.signal
            assert not attempt.signal.is_set()
            async with attempt.transaction():
                return attempt.complete(3)

        assert await worker.drain() == 1
        ((lost, took),) = waited
        assert not lost
        assert 1.1 <= took < 5
        assert (await env.client.list_chains()).items[0].output == 3


def test_the_signal_set_from_another_thread_wakes_every_waiting_loop() -> None:
    """No database: the worker sets the signal from its own thread or loop."""
    raw = q.AttemptSignal()
    view = q.AsyncAttemptSignal(raw)
    results: list[tuple[bool, str | None]] = []

    async def waiter() -> None:
        results.append((await view.wait(), view.reason))

    loops = [
        threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(waiter(), 10)))
        for _ in range(2)
    ]
    for thread in loops:
        thread.start()
    time.sleep(0.2)
    assert not raw.wait(0)
    raw.set("cancelled")
    raw.set("not_found")  # the first reason stays
    for thread in loops:
        thread.join(10)
    assert results == [(True, "cancelled"), (True, "cancelled")]
    assert asyncio.run(view.wait(0)) is True  # already set: at once
    assert raw.wait(0)
    assert bool(view)

    fresh = q.AsyncAttemptSignal(q.AttemptSignal())
    assert asyncio.run(fresh.wait(0.01)) is False
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(fresh.wait(), 0.01))  # cancelled: no waiter left behind
    assert fresh._signal._waiters == []
