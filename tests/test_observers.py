"""The observer seam: which events a user's observer receives, when, and that none breaks work.

Runs on both workers and both engines with the shipped in-memory twin
(``q.RecordingObserver``). The same scenario runs against the OpenTelemetry
observer in ``test_otel.py`` (the conformance half that needs the SDK).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.observers import EVENT_NAMES, BacklogCount, JobInfo

from .app import Effect, Greeting, UserIn, WorkIn, greet, signup, work
from .app import job_types as app_types
from .conftest import Db
from .test_worker import new_user_chain
from .workers import Kit

AT_ONCE = q.Backoff(initial=dt.timedelta(0), jitter=0)


def observe(kit: Kit, observer: q.Observer) -> None:
    """Tell ``observer`` of the kit's producer's and worker's events."""
    kit.client.add_observer(observer)
    if kit.worker_client is not kit.client:
        kit.worker_client.add_observer(observer)


def two_step_handlers(worker: Any) -> None:
    @worker.handler(signup)
    def do_signup(attempt: q.Attempt[UserIn, None]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="signup"))
        return attempt.continue_with(greet, {"user_id": attempt.input["user_id"]})

    @worker.handler(greet)
    def do_greet(attempt: q.Attempt[UserIn, Greeting]) -> q.Outcome:
        return attempt.complete({"greeting": "hello"})


def test_a_two_step_chain_reports_every_step_in_order(kit: Kit) -> None:
    recorder = q.RecordingObserver()
    observe(kit, recorder)
    chain = new_user_chain(kit.client, kit.db)
    assert recorder.names() == ["chain_created", "job_created"]
    (created,) = recorder.of("job_created")
    assert created["job"] == JobInfo(chain.id, "signup", chain.id, "signup", 0)
    assert created["blocked"] is False
    worker = kit.worker()
    two_step_handlers(worker)
    assert worker.drain() == 2
    names = recorder.names()
    assert names == [
        "chain_created",
        "job_created",
        "job_attempt_started",
        "job_created",  # the continuation, after the attempt's COMMIT
        "job_completed",
        "job_attempt_completed",
        "job_attempt_started",
        "job_completed",
        "chain_completed",
        "job_attempt_completed",
    ]
    first, second = recorder.of("job_attempt_completed")
    assert first["continued_with"] == "greet"
    assert second["continued_with"] is None
    assert first["job"].attempt == 1
    assert first["worker_id"] == worker.worker_id
    assert all(e["duration"] >= 0 for e in recorder.of("job_attempt_completed"))
    continued, done = recorder.of("job_completed")
    assert (continued["continued"], done["continued"]) == (True, False)
    assert done["job"].type_name == "greet"
    assert done["job"].chain_id == chain.id
    (ended,) = recorder.of("chain_completed")
    assert ended["chain_id"] == chain.id
    assert ended["type_name"] == "signup"
    assert ended["duration"] >= done["duration"] >= 0


def test_a_rolled_back_start_reports_nothing(kit: Kit) -> None:
    recorder = q.RecordingObserver()
    observe(kit, recorder)
    with Session(kit.db.engine) as s:
        kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
        s.rollback()
    with Session(kit.db.engine) as s, s.begin():
        outer = kit.client.start_chain(s, work, {"n": 2, "sleep": 0})
        nested = s.begin_nested()
        kit.client.start_chain(s, work, {"n": 3, "sleep": 0})
        nested.rollback()
    created = recorder.of("job_created")
    assert [e["job"].id for e in created] == [outer.id]


def test_failed_attempts_report_their_error_and_the_job_failing(kit: Kit) -> None:
    recorder = q.RecordingObserver()
    observe(kit, recorder)
    with Session(kit.db.engine) as s, s.begin():
        chain = kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
    worker = kit.worker(backoff=AT_ONCE)

    @worker.handler(work, max_attempts=2)
    def fails(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        raise RuntimeError(f"boom {attempt.job.attempt}")

    assert [worker.drain() for _ in range(3)] == [1, 1, 0]
    first, second = recorder.of("job_attempt_failed")
    assert isinstance(first["error"], RuntimeError)
    assert str(first["error"]) == "boom 1"
    assert first["retry_at"] is not None
    assert second["retry_at"] is None
    assert first["duration"] >= 0
    (failed,) = recorder.of("job_failed")
    assert failed["job"].id == chain.id
    assert "boom 2" in failed["error"]
    assert recorder.of("job_completed") == []
    assert recorder.of("chain_completed") == []


class Fetch(TypedDict):
    url: str


blocking_types = q.JobTypes()
fetch = blocking_types.entry("fetch", input=Fetch, output=int)
merge = blocking_types.entry("merge", input=Fetch, output=int, blockers=[fetch])


@pytest.fixture
def blocking_kit(kind: str, db: Db) -> Iterator[Kit]:
    kit = Kit(kind, db, q.InMemoryNotify(), job_types=blocking_types)
    try:
        yield kit
    finally:
        kit.close()


def test_blockers_trigger_cancel_and_delete_are_reported(blocking_kit: Kit) -> None:
    kit = blocking_kit
    recorder = q.RecordingObserver()
    observe(kit, recorder)
    with Session(kit.db.engine) as s, s.begin():
        blocker = kit.client.start_chain(s, fetch, {"url": "a"})
        waiting = kit.client.start_chain(s, merge, {"url": "m"}, blockers=[blocker])
    (blocked,) = recorder.of("job_blocked")
    assert blocked["job"].id == waiting.id
    assert blocked["blocker_chain_ids"] == (blocker.id,)
    with Session(kit.db.engine) as s, s.begin():
        later = kit.client.start_chain(s, fetch, {"url": "b"}, run_in=dt.timedelta(hours=1))
    with Session(kit.db.engine) as s, s.begin():
        kit.client.trigger_job(s, later.id)
    assert [e["job"].id for e in recorder.of("job_triggered")] == [later.id]
    worker = kit.worker()

    @worker.handler(fetch)
    def done(attempt: q.Attempt[Fetch, int]) -> q.Outcome:
        return attempt.complete(1)

    worker.drain(max_jobs=1)
    assert [e["job"].id for e in recorder.of("job_unblocked")] == [waiting.id]
    with Session(kit.db.engine) as s, s.begin():
        kit.client.cancel_chain(s, waiting.id, reason="not needed")
    (cancelled,) = recorder.of("chain_cancelled")
    assert (cancelled["chain_id"], cancelled["reason"]) == (waiting.id, "not needed")
    assert cancelled["type_name"] == "merge"
    with Session(kit.db.engine) as s, s.begin():
        kit.client.delete_chains(s, [waiting.id])
    assert [e["chain_id"] for e in recorder.of("chain_deleted")] == [waiting.id]


def wait_for(condition: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_worker_lifecycle_and_backlog_are_reported(kit: Kit) -> None:
    recorder = q.RecordingObserver()
    observe(kit, recorder)
    with Session(kit.db.engine) as s, s.begin():
        kit.client.start_chains(s, [work({"n": i, "sleep": 0}) for i in range(3)])
        kit.client.start_chain(s, work, {"n": 9, "sleep": 0}, run_in=dt.timedelta(hours=1))
    worker = kit.worker(backlog_interval=0.01, poll_interval=0.05)

    @worker.handler(work)
    def slow(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        return attempt.complete(attempt.input["n"])

    worker.start()
    try:
        wait_for(lambda: recorder.of("backlog") and len(recorder.of("job_completed")) == 3)
    finally:
        assert worker.stop() is True
    names = recorder.names()
    assert names[0] == "chain_created"
    assert "worker_started" in names
    assert names.index("worker_stopping") < names.index("worker_stopped")
    assert names.count("worker_stopped") == 1
    (started,) = recorder.of("worker_started")
    assert started["type_names"] == ("work",)
    assert started["worker_id"] == worker.worker_id
    first: list[BacklogCount] = list(recorder.of("backlog")[0]["counts"])
    by_state = {c.state: c for c in first if c.type_name == "work"}
    assert by_state["scheduled"].count == 1
    # The first count runs before the first acquisition: three were due.
    assert by_state["ready"].count == 3
    assert by_state["ready"].oldest_age is not None
    assert by_state["ready"].oldest_age >= 0


def test_an_observer_that_raises_never_breaks_processing(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(q.BaseObserver):
        def job_created(self, **fields: Any) -> None:
            raise RuntimeError("observer bug")

        def job_attempt_started(self, **fields: Any) -> None:
            raise RuntimeError("observer bug")

    recorder = q.RecordingObserver()
    observe(kit, Broken())
    observe(kit, recorder)
    with caplog.at_level(logging.ERROR, logger="queuert_sa.observers"):
        for n in range(2):
            with Session(kit.db.engine) as s, s.begin():
                kit.client.start_chain(s, work, {"n": n, "sleep": 0})
        worker = kit.worker()

        @worker.handler(work)
        def done(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
            return attempt.complete(attempt.input["n"])

        assert worker.drain() == 2
    assert [kit.client.get_chain(c["chain_id"]).status for c in recorder.of("chain_completed")] == [
        "completed",
        "completed",
    ]
    # Logged once per event, not once per call.
    assert caplog.text.count("failed on job_created") == 1
    assert caplog.text.count("failed on job_attempt_started") == 1
    assert len(recorder.of("job_created")) == 2  # the others still hear of everything


def test_an_object_missing_events_is_refused_with_what_to_do(db: Any) -> None:
    class Partial:
        def job_created(self, **fields: Any) -> None: ...

    with pytest.raises(
        TypeError, match=r"lacks worker_started, .*Subclass queuert_sa.BaseObserver"
    ):
        q.Queuert(db.engine, q.JobTypes(), observers=[Partial()])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]


def test_every_event_has_a_no_op_and_a_recorder() -> None:
    """The conformance of the twins: every Observer event exists on both and accepts its fields."""
    protocol = {n for n in vars(q.Observer) if not n.startswith("_")}
    assert set(EVENT_NAMES) == protocol - {"start_creation_span", "start_attempt_span"}
    recorder = q.RecordingObserver()
    for name in EVENT_NAMES:
        getattr(recorder, name)(example=name)
    assert recorder.names() == list(EVENT_NAMES)


def test_notify_and_database_errors_are_reported(tmp_path: Path) -> None:
    """A notify backend that is down, and a database that is: each failure is an event."""
    from queuert_sa.notify.redis import RedisNotify

    engine = create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    recorder = q.RecordingObserver()
    notify = RedisNotify("redis://127.0.0.1:1/0")
    try:
        client = q.Queuert(engine, app_types, notify=notify, observers=[recorder])
        q.metadata.create_all(engine)
        with Session(engine) as s, s.begin():
            client.start_chain(s, work, {"n": 1, "sleep": 0})
        wait_for(lambda: recorder.of("notify_error"))
        (error,) = recorder.of("notify_error")[:1]
        assert error["operation"] == "publish"
        assert isinstance(error["error"], Exception)
    finally:
        notify.close()
        engine.dispose()
    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    client = q.Queuert(down, app_types, observers=[recorder])
    worker = client.worker(handle_signals="never", poll_interval=0.05)
    worker.handler(work)(lambda attempt: attempt.complete(0))
    worker.start()
    try:
        wait_for(lambda: recorder.of("database_error"))
    finally:
        worker.stop()
        down.dispose()
    (failed,) = recorder.of("database_error")[:1]
    assert isinstance(failed["error"], q.DatabaseUnavailableError)
    assert failed["operation"]
    assert recorder.of("worker_error")[0]["worker_id"] == worker.worker_id
