"""Recurring schedules (``worker.recurring``): one chain per tick, daylight saving time with
an injected clock, missed ticks caught up once or skipped, a changed cron, concurrent
workers on real connections, a failing pass, and the async worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any, TypedDict
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .conftest import Db
from .faults import refusing_inserts
from .test_worker import FakeClock

BERLIN = ZoneInfo("Europe/Berlin")


class ReportIn(TypedDict):
    kind: str


types = q.JobTypes()
report = types.entry("report", input=ReportIn, output=dict)
step = types.define("report-step", input=ReportIn, output=dict)


def at(clock: FakeClock, local: dt.datetime) -> None:
    clock.now = local.astimezone(dt.UTC)


def worker_for(client: q.Queuert, ran: list[dt.datetime] | None = None) -> q.Worker:
    worker = client.worker(poll_interval=dt.timedelta(seconds=1), handle_signals="never")

    @worker.handler(report)
    def handle(attempt: q.Attempt[ReportIn, dict[str, Any]]) -> q.Outcome:
        if ran is not None:
            ran.append(attempt.job.scheduled_at)
        return attempt.complete({"kind": attempt.input["kind"]})

    return worker


def tick_chains(db: Db) -> list[tuple[dt.datetime, str, str | None]]:
    """Every tick chain: (scheduled_at in Berlin, status, cancel reason), by time."""
    with Session(db.engine) as s:
        rows = s.execute(
            select(Job.scheduled_at, Job.status, Job.cancel_reason)
            .where(Job.chain_index == 0, Job.deduplication_key.like("schedule:%"))
            .order_by(Job.scheduled_at)
        ).all()
    return [(when.astimezone(BERLIN), str(status), reason) for when, status, reason in rows]


def test_a_02_30_schedule_on_the_spring_forward_day_runs_once_at_the_jump(db: Db) -> None:
    clock = FakeClock()
    at(clock, dt.datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN))
    client = q.Queuert(db.engine, types, clock=clock)
    ran: list[dt.datetime] = []
    worker = worker_for(client, ran)
    worker.recurring("nightly", report, cron="30 2 * * *", tz=BERLIN, input={"kind": "daily"})
    assert worker.drain() == 0  # the pass starts the coming tick; nothing is due yet
    # 02:30 does not exist on 29 March 2026 in Berlin: the tick is at the jump, 03:00 CEST.
    assert tick_chains(db) == [(dt.datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN), "pending", None)]
    at(clock, dt.datetime(2026, 3, 29, 3, 0, 5, tzinfo=BERLIN))
    assert worker.drain() == 1
    assert worker.drain() == 0  # once
    assert [when.astimezone(BERLIN).hour for when in ran] == [3]
    assert tick_chains(db) == [
        (dt.datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN), "completed", None),
        (dt.datetime(2026, 3, 30, 2, 30, tzinfo=BERLIN), "pending", None),
    ]


def test_a_02_30_schedule_on_the_fall_back_day_runs_once(db: Db) -> None:
    clock = FakeClock()
    at(clock, dt.datetime(2026, 10, 25, 0, 0, tzinfo=BERLIN))
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    worker.recurring("nightly", report, cron="30 2 * * *", tz=BERLIN, input={"kind": "daily"})
    done = 0
    # Walk the clock through the night in 10-minute steps (02:00-03:00 happens twice).
    for minutes in range(0, 6 * 60, 10):
        clock.now = dt.datetime(2026, 10, 24, 22, 0, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
        done += worker.drain()
    assert done == 1
    first, second = tick_chains(db)
    assert first == (dt.datetime(2026, 10, 25, 2, 30, fold=0, tzinfo=BERLIN), "completed", None)
    assert first[0].utcoffset() == dt.timedelta(hours=2)  # the first 02:30 (CEST)
    assert second[0] == dt.datetime(2026, 10, 26, 2, 30, tzinfo=BERLIN)
    assert second[0].utcoffset() == dt.timedelta(hours=1)


def test_an_every_30_minutes_cron_runs_in_both_repeated_hours(db: Db) -> None:
    clock = FakeClock()
    clock.now = dt.datetime(2026, 10, 24, 23, 50, tzinfo=dt.UTC)  # 01:50 CEST
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    worker.recurring("half-hourly", report, cron="*/30 * * * *", tz=BERLIN, input={"kind": "x"})
    for minutes in range(0, 150, 5):
        clock.now = dt.datetime(2026, 10, 24, 23, 50, tzinfo=dt.UTC) + dt.timedelta(minutes=minutes)
        worker.drain()
    offsets = [
        (when.strftime("%H:%M"), when.utcoffset())
        for when, status, _ in tick_chains(db)
        if status == "completed"
    ]
    hour, two = dt.timedelta(hours=1), dt.timedelta(hours=2)
    assert offsets == [
        ("02:00", two),
        ("02:30", two),
        ("02:00", hour),
        ("02:30", hour),
        ("03:00", hour),
    ]  # until 03:15 CET


def test_a_tick_missed_while_no_worker_ran_is_caught_up_once(db: Db) -> None:
    clock = FakeClock()
    at(clock, dt.datetime(2026, 6, 1, 9, 59, tzinfo=BERLIN))
    client = q.Queuert(db.engine, types, clock=clock)
    ran: list[dt.datetime] = []
    worker = worker_for(client, ran)
    worker.recurring("hourly", report, cron="0 * * * *", tz=BERLIN, input={"kind": "h"})
    worker.drain()
    # Every worker is down from 09:59 to 15:20: the 10:00 ... 15:00 ticks pass unseen.
    at(clock, dt.datetime(2026, 6, 1, 15, 20, tzinfo=BERLIN))
    assert worker.drain() == 1
    assert [when.astimezone(BERLIN).hour for when in ran] == [10]  # one run for the outage
    assert worker.drain() == 0
    assert [(when.hour, status) for when, status, _ in tick_chains(db)] == [
        (10, "completed"),
        (16, "pending"),
    ]


def test_missed_ticks_are_cancelled_with_skip(db: Db) -> None:
    clock = FakeClock()
    at(clock, dt.datetime(2026, 6, 1, 2, 0, tzinfo=BERLIN))
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    worker.recurring(
        "nightly", report, cron="30 2 * * *", tz=BERLIN, input={"kind": "d"}, missed="skip"
    )
    worker.drain()
    at(clock, dt.datetime(2026, 6, 1, 9, 0, tzinfo=BERLIN))  # seven hours late
    assert worker.drain() == 0
    (missed, _, reason), (coming, status, _) = tick_chains(db)
    assert missed == dt.datetime(2026, 6, 1, 2, 30, tzinfo=BERLIN)
    assert reason == "missed tick of schedule 'nightly'"
    assert (coming, status) == (dt.datetime(2026, 6, 2, 2, 30, tzinfo=BERLIN), "pending")
    # A tick late by less than grace= is not missed: it runs.
    at(clock, dt.datetime(2026, 6, 2, 2, 33, tzinfo=BERLIN))
    assert worker.drain() == 1


def test_a_changed_cron_cancels_the_tick_it_no_longer_has(db: Db) -> None:
    clock = FakeClock()
    at(clock, dt.datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN))
    client = q.Queuert(db.engine, types, clock=clock)
    before = worker_for(client)
    before.recurring("nightly", report, cron="0 3 * * *", tz=BERLIN, input={"kind": "d"})
    before.drain()
    after = worker_for(client)  # the next deploy: the report moves to 04:00
    after.recurring("nightly", report, cron="0 4 * * *", tz=BERLIN, input={"kind": "d"})
    after.drain()
    (old, old_status, reason), (new, new_status, _) = tick_chains(db)
    assert (old.hour, old_status) == (3, "cancelled")
    assert reason == "schedule 'nightly' changed: tick no longer due"
    assert (new.hour, new_status) == (4, "pending")


def test_the_input_may_be_a_function_of_the_tick(db: Db) -> None:
    clock = FakeClock()
    clock.now = dt.datetime(2026, 6, 1, 11, 59, 59, tzinfo=dt.UTC)
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    schedule = worker.recurring(
        "stamped", report, every=dt.timedelta(hours=1), input=lambda t: {"kind": t.isoformat()}
    )
    worker.drain()
    chain = client.list_chains().items[0]
    assert chain.input == {"kind": "2026-06-01T12:00:00+00:00"}
    with Session(db.engine) as s:
        key = s.scalar(select(Job.deduplication_key).where(Job.id == chain.id))
    assert key == schedule.key(dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC))
    assert key == "schedule:stamped:2026-06-01T12:00:00+00:00"


def test_concurrent_passes_of_many_workers_start_each_tick_once(db: Db) -> None:
    """Eight workers keep the same schedule at the same moment, each on its own connection."""
    clock = FakeClock()
    clock.now = dt.datetime(2026, 6, 1, 12, 0, 0, 500000, tzinfo=dt.UTC)
    client = q.Queuert(db.engine, types, clock=clock)
    workers = [worker_for(client) for _ in range(8)]
    for worker in workers:
        worker.recurring("fast", report, every=dt.timedelta(seconds=1), input={"kind": "s"})
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def keep(worker: q.Worker) -> None:
        try:
            barrier.wait(10)
            worker.drain()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=keep, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    # Two poll intervals ahead: the ticks 12:00:01 and 12:00:02, once each.
    with Session(db.engine) as s:
        keys = s.scalars(
            select(Job.deduplication_key).where(Job.deduplication_key.like("schedule:%"))
        ).all()
    assert sorted(keys) == [
        "schedule:fast:2026-06-01T12:00:01+00:00",
        "schedule:fast:2026-06-01T12:00:02+00:00",
    ]


def test_a_failing_pass_starts_nothing_and_the_next_one_catches_up(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    clock.now = dt.datetime(2026, 6, 1, 11, 59, 50, tzinfo=dt.UTC)
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    worker.recurring("noon", report, cron="0 12 * * *", input={"kind": "n"})
    with refusing_inserts(db, "NEW.deduplication_key IS NOT NULL"):
        assert worker.drain() == 0  # the jobs go on; the pass is logged and retried
    assert "the pass over its 1 schedule(s) failed" in caplog.text
    assert tick_chains(db) == []
    clock.now = dt.datetime(2026, 6, 1, 12, 0, 30, tzinfo=dt.UTC)
    assert worker.drain() == 0  # the 12:00 tick had no chain: it is gone, tomorrow's is started
    assert [status for _, status, _ in tick_chains(db)] == ["pending"]


def test_the_async_worker_keeps_schedules_too(db: Db) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from .test_async import async_url

    clock = FakeClock()
    clock.now = dt.datetime(2026, 6, 1, 11, 59, 59, tzinfo=dt.UTC)

    async def scenario() -> None:
        engine = create_async_engine(async_url(db))
        client = q.AsyncQueuert(engine, types, clock=clock)
        worker = client.worker(poll_interval=1)

        @worker.handler(report)
        async def handle(attempt: q.AsyncAttempt[ReportIn, dict[str, Any]]) -> q.Outcome:
            return attempt.complete({})

        worker.recurring("noon", report, cron="0 12 * * *", input={"kind": "n"})
        assert await worker.drain() == 0
        clock.advance(dt.timedelta(seconds=2))
        assert await worker.drain() == 1
        await engine.dispose()

    asyncio.run(scenario())
    assert [status for _, status, _ in tick_chains(db)] == ["completed", "pending"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "0 3 * *"}, "not a cron expression"),
        ({"cron": "61 * * * *"}, "not a cron expression"),
        ({}, "give cron= (e.g. '0 3 * * *') or every= (a timedelta), not neither"),
        ({"cron": "* * * * *", "every": 60}, "not both"),
        ({"every": dt.timedelta(milliseconds=10)}, "at least one second"),
        ({"every": 60, "tz": BERLIN}, "tz= applies to cron= only"),
        ({"cron": "* * * * *", "missed": "later"}, "missed= is 'once'"),
    ],
)
def test_bad_schedules_are_refused_at_declaration(
    db: Db, options: dict[str, Any], message: str
) -> None:
    worker = worker_for(q.Queuert(db.engine, types))
    with pytest.raises(q.WorkerConfigError) as caught:
        worker.recurring("bad", report, input={"kind": "x"}, **options)
    assert message in str(caught.value)


def test_bad_names_inputs_and_types_are_refused_at_declaration(db: Db) -> None:
    worker = worker_for(q.Queuert(db.engine, types))
    with pytest.raises(q.WorkerConfigError, match="at most 100 characters"):
        worker.recurring("x" * 101, report, cron="* * * * *", input={"kind": "x"})
    with pytest.raises(q.NotAnEntryTypeError):
        worker.recurring("steps", step, cron="* * * * *", input={"kind": "x"})
    with pytest.raises(q.JobInputError):
        worker.recurring("bad-input", report, cron="* * * * *", input={"kind": object()})  # type: ignore[dict-item]
    worker.recurring("twice", report, cron="* * * * *", input={"kind": "x"})
    with pytest.raises(q.WorkerConfigError, match="declared twice"):
        worker.recurring("twice", report, cron="0 * * * *", input={"kind": "x"})
    assert [s.name for s in worker.schedules] == ["twice"]
    assert worker.schedules[0].description == 'cron "* * * * *" in UTC'


def test_sqlite_and_postgresql_see_the_same_pending_ticks(db: Db) -> None:
    """The tick lookup escapes LIKE wildcards: a schedule named with _ and % matches itself only."""
    clock = FakeClock()
    clock.now = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    client = q.Queuert(db.engine, types, clock=clock)
    worker = worker_for(client)
    worker.recurring("a_b%", report, every=3600, input={"kind": "1"})
    worker.recurring("aXbY", report, every=7200, input={"kind": "2"})
    worker.drain()
    later = worker_for(client)
    later.recurring("a_b%", report, every=3600, input={"kind": "1"})
    later.recurring("aXbY", report, every=7200, input={"kind": "2"})
    later.drain()  # neither cancels the other's ticks as "changed"
    with Session(db.engine) as s:
        statuses = s.execute(text("SELECT status FROM queuert_job")).scalars().all()
    assert set(statuses) == {"pending"}
