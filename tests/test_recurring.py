"""The recurring-work pattern: a job that schedules its own next run.

The handler does its work, then starts the next run of its own type in the
same transaction with ``run_in=PERIOD`` and
``dedup=Dedup("tick", exclude=[its own chain])``; the application bootstraps
the schedule at start-up with ``dedup=Dedup("tick")``. Pinned here: each
period runs exactly once, there is always exactly one open tick chain (the
schedule neither doubles nor stops), the bootstrap is idempotent (also while a
tick is running), and a failed tick retries without losing the schedule.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, TypedDict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job

from .app import Effect
from .conftest import Db
from .test_worker import FakeClock


class TickIn(TypedDict):
    run: int


types = q.JobTypes()
tick = types.entry("tick", input=TickIn)

PERIOD = dt.timedelta(minutes=15)
SECOND = dt.timedelta(seconds=1)


def bootstrap(client: q.Queuert) -> q.Chain[TickIn, Any]:
    """What the application calls at every start: idempotent."""
    with Session(client.engine) as s, s.begin():
        return client.start_chain(s, tick, {"run": 0}, dedup=q.Dedup("tick"))


def tick_worker(
    client: q.Queuert,
    *,
    exclude_self: bool = True,
    during: list[Any] | None = None,
    after_next_start: list[Any] | None = None,
    **options: Any,
) -> q.Worker:
    worker = client.worker(**options)

    @worker.handler(tick)
    def run_tick(attempt: q.Attempt[TickIn, None]) -> q.Outcome:
        run = attempt.input["run"]
        # The periodic work itself, in the same transaction as the next run.
        attempt.session.add(Effect(job_id=str(attempt.job.id), label=f"tick:{run}"))
        for hook in during or ():
            hook(attempt)
        exclude = [attempt.job.chain_id] if exclude_self else []
        client.start_chain(
            attempt.session,
            tick,
            {"run": run + 1},
            run_in=PERIOD,
            dedup=q.Dedup("tick", exclude=exclude),
        )
        for hook in after_next_start or ():
            hook(attempt)
        return attempt.complete(None)

    return worker


def open_ticks(db: Db) -> list[Job]:
    with Session(db.engine, expire_on_commit=False) as s:
        return list(
            s.scalars(select(Job).where(Job.chain_type_name == "tick", Job.status != "completed"))
        )


def tick_labels(db: Db) -> list[str]:
    with Session(db.engine) as s:
        return list(
            s.scalars(select(Effect.label).where(Effect.label.like("tick:%")).order_by(Effect.id))
        )


def test_bootstrap_is_idempotent(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    results = [bootstrap(client) for _ in range(3)]
    assert [r.deduplicated for r in results] == [False, True, True]
    assert len({r.id for r in results}) == 1
    assert [j.chain_id for j in open_ticks(db)] == [results[0].id]


def test_each_period_runs_once_and_the_schedule_never_stops(db: Db) -> None:
    clock = FakeClock()
    t0 = clock.now
    client = q.Queuert(db.engine, types, clock=clock)
    worker = tick_worker(client)
    bootstrap(client)

    periods = 5
    for run in range(periods):
        assert worker.drain() == 1, f"period {run}"
        assert tick_labels(db) == [f"tick:{i}" for i in range(run + 1)]
        (next_tick,) = open_ticks(db)
        assert next_tick.input == {"run": run + 1}
        assert next_tick.scheduled_at == t0 + PERIOD * (run + 1)
        assert next_tick.deduplication_key == "tick"
        # A restart of the application meanwhile changes nothing.
        again = bootstrap(client)
        assert (again.id, again.deduplicated) == (next_tick.chain_id, True)
        # Nothing runs early ...
        clock.advance(PERIOD - SECOND)
        assert worker.drain() == 0
        # ... and the next run is due on time.
        clock.advance(SECOND)

    assert len(open_ticks(db)) == 1
    with Session(db.engine) as s:
        chains = s.scalars(select(Job.chain_id).where(Job.chain_type_name == "tick")).all()
    assert len(chains) == len(set(chains)) == periods + 1  # one chain per run


def test_without_exclude_the_tick_finds_itself_and_the_schedule_stops(db: Db) -> None:
    """Why ``exclude`` is part of the pattern: the running tick is itself open."""
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    worker = tick_worker(client, exclude_self=False)
    bootstrap(client)

    assert worker.drain() == 1
    assert open_ticks(db) == []
    clock.advance(PERIOD)
    assert worker.drain() == 0


def test_a_failed_tick_retries_without_doubling_or_losing_the_schedule(db: Db) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    failures = {1}  # run 1 fails once

    def flaky(attempt: q.Attempt[TickIn, None]) -> None:
        if attempt.input["run"] in failures:
            failures.discard(attempt.input["run"])
            raise ConnectionError("report service down")

    worker = tick_worker(
        client, during=[flaky], backoff=q.Backoff(initial=dt.timedelta(minutes=1), jitter=0)
    )
    bootstrap(client)
    assert worker.drain() == 1  # run 0
    clock.advance(PERIOD)
    assert worker.drain() == 1  # run 1 fails: its work and its next run roll back
    (retrying,) = open_ticks(db)
    assert retrying.input == {"run": 1}
    assert retrying.last_attempt_error is not None
    assert "report service down" in retrying.last_attempt_error
    assert tick_labels(db) == ["tick:0"]
    assert bootstrap(client).id == retrying.chain_id

    clock.advance(dt.timedelta(minutes=1))
    assert worker.drain() == 1  # run 1 succeeds on retry
    (next_tick,) = open_ticks(db)
    assert next_tick.input == {"run": 2}
    assert tick_labels(db) == ["tick:0", "tick:1"]


@pytest.mark.parametrize("moment", ["before-next-start", "after-next-start"])
def test_bootstrap_while_a_tick_runs_leaves_one_open_chain(db: Db, moment: str) -> None:
    clock = FakeClock()
    client = q.Queuert(db.engine, types, clock=clock)
    first = bootstrap(client)
    results: list[q.Chain[TickIn, Any]] = []
    errors: list[BaseException] = []
    in_handler = threading.Event()

    def concurrent_bootstrap() -> None:
        in_handler.wait(10)
        try:
            results.append(bootstrap(client))
        except BaseException as exc:
            errors.append(exc)

    def signal(attempt: q.Attempt[TickIn, None]) -> None:
        in_handler.set()
        # Give the bootstrap time to run into this open transaction.
        threading.Event().wait(0.2)

    if moment == "before-next-start":
        worker = tick_worker(client, during=[signal])
    else:
        # Once the next run is started (and, on PostgreSQL, its key locked).
        worker = tick_worker(client, after_next_start=[signal])

    thread = threading.Thread(target=concurrent_bootstrap)
    thread.start()
    try:
        assert worker.drain() == 1
    finally:
        in_handler.set()
        thread.join(30)
    assert errors == []
    (result,) = results
    assert result.deduplicated is True
    (next_tick,) = open_ticks(db)
    assert next_tick.chain_id != first.id
    assert next_tick.input == {"run": 1}
    # It found the running tick (still open when it looked) or its successor.
    if moment == "before-next-start" and not client.capabilities.single_writer:
        # PostgreSQL: the bootstrap took the key's lock first and saw the
        # running tick, committed as pending, as open.
        assert result.id == first.id
    else:
        # It waited for the tick's transaction (the key's lock, or SQLite's
        # write lock), then saw its successor.
        assert result.id == next_tick.chain_id
