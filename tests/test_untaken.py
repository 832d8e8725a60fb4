"""Ready jobs that no worker takes: the worker names their type in a WARNING, once a minute.

Both workers on both engines; the fake clock makes jobs "waiting for 10 min"
without waiting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa._worker._untaken import age

from . import app
from .conftest import Db
from .test_cli import child_env, operator, run
from .test_worker import FakeClock
from .workers import Kit

UNTAKEN = "ready job(s) of type"


def _start_both(kit: Kit) -> None:
    """One ``work`` job and one ``signup`` job, due now."""
    with Session(kit.db.engine) as s, s.begin():
        kit.client.start_chain(s, app.work, {"n": 1, "sleep": 0})
        kit.client.start_chain(s, app.signup, {"user_id": 1})
        kit.client.start_chain(s, app.signup, {"user_id": 2})


def _untaken_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if UNTAKEN in r.getMessage()]


def _work_only(kit: Kit, **options: Any) -> Any:
    worker = kit.worker(**options)

    @worker.handler(app.work)
    def work(attempt: Any) -> q.Outcome:
        return attempt.complete(attempt.input["n"])

    return worker


def test_jobs_of_a_type_no_worker_handles_are_named_with_count_and_age(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    kit = kit.using(clock=clock)
    _start_both(kit)
    clock.advance(dt.timedelta(minutes=10))
    caplog.set_level(logging.WARNING, logger="queuert_sa")
    worker = _work_only(kit)
    assert worker.drain() == 1
    (record,) = _untaken_lines(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"worker {worker.worker_id}: 2 ready job(s) of type 'signup' not taken for 5 min "
        "(the oldest due 10 min ago); this worker has no handler for 'signup': register "
        "one (worker.handler) or start a worker that has one"
    )
    assert record.__dict__["type_name"] == "signup"
    assert record.__dict__["worker_id"] == worker.worker_id
    # once a minute: a second drain right after says nothing again
    caplog.clear()
    worker.drain()
    assert _untaken_lines(caplog) == []


def test_no_line_for_handled_types_or_jobs_not_yet_waiting(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    kit = kit.using(clock=clock)
    _start_both(kit)
    caplog.set_level(logging.WARNING, logger="queuert_sa")
    clock.advance(dt.timedelta(minutes=4))  # due 4 min ago: within WAITING_AFTER
    assert _work_only(kit).drain() == 1
    clock.advance(dt.timedelta(hours=1))
    both = _work_only(kit)

    @both.handler(app.signup)
    def signup(attempt: Any) -> q.Outcome:
        return attempt.continue_with(app.greet, attempt.input)

    @both.handler(app.greet)
    def greet(attempt: Any) -> q.Outcome:
        return attempt.complete({"greeting": "hi"})

    assert both.drain() == 4
    assert _untaken_lines(caplog) == []


def test_a_running_worker_says_so_a_poll_interval_after_it_starts(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    kit = kit.using(clock=clock)
    _start_both(kit)
    clock.advance(dt.timedelta(minutes=30))
    caplog.set_level(logging.WARNING, logger="queuert_sa")
    worker = _work_only(kit, poll_interval=dt.timedelta(milliseconds=50))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        pause = threading.Event()
        while not _untaken_lines(caplog) and time.monotonic() < deadline:
            pause.wait(0.05)
    finally:
        assert worker.stop()
    lines = [r.getMessage() for r in _untaken_lines(caplog)]
    assert len(lines) == 1, lines
    assert "2 ready job(s) of type 'signup'" in lines[0]
    assert "(the oldest due 30 min ago)" in lines[0]


def test_ages_read_in_the_unit_that_fits() -> None:
    assert [age(s) for s in (42, 12 * 60, 3.5 * 3600, 2.1 * 86400)] == [
        "42 s",
        "12 min",
        "3.5 h",
        "2.1 d",
    ]


def test_chains_list_names_the_untaken_types_under_the_table_and_keeps_its_json(db: Db) -> None:
    ten_min_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    old = q.Queuert(db.engine, app.job_types, clock=lambda: ten_min_ago)
    with Session(db.engine) as s, s.begin():
        old.start_chain(s, app.signup, {"user_id": 1})
        old.start_chain(s, app.signup, {"user_id": 2})
    with Session(db.engine) as s, s.begin():  # due now: not waiting yet
        q.Queuert(db.engine, app.job_types).start_chain(s, app.work, {"n": 1, "sleep": 0})
    result = operator("chains", "list", db=db)
    assert result.exit_code == 0, result.output
    assert "untaken" not in result.stdout  # the table stays as it was
    assert result.stderr.splitlines() == [
        "warning: untaken for over 5 min: 2 ready job(s) of type 'signup' (the oldest due 10 min ago): "
        "no running worker handles it, or its workers are down or behind"
    ]
    as_json = operator("chains", "list", "--json", db=db)
    assert set(json.loads(as_json.stdout)) == {"chains", "next_cursor"}
    assert "untaken" not in as_json.output


def test_a_burst_worker_logs_the_untaken_type_as_json_and_exits_0(db: Db) -> None:
    """``queuert-sa worker --burst --types work --log-format json`` with ``signup`` jobs
    waiting: the types left out are named, in a JSON line with its fields."""
    old = q.Queuert(
        db.engine, app.job_types, clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    )
    with Session(db.engine) as s, s.begin():
        old.start_chain(s, app.signup, {"user_id": 1})
        old.start_chain(s, app.staged_work, {"n": 2, "sleep": 0})
        old.start_chain(s, app.work, {"n": 1, "sleep": 0})
    command = [sys.executable, "-m", "queuert_sa", "worker", "tests.app:worker", "--burst"]
    result = run(
        [*command, "--types", "work", "--log-format", "json"],
        env=child_env(QUEUERT_APP_URL=db.url),
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    untaken = [e for e in entries if UNTAKEN in e["message"]]
    assert [(e["level"], e["type_name"]) for e in untaken] == [
        ("WARNING", "signup"),
        ("WARNING", "staged-work"),
    ]
    assert "(the oldest due 2.0 h ago)" in untaken[0]["message"]
    assert untaken[0]["worker_id"] == untaken[1]["worker_id"]
