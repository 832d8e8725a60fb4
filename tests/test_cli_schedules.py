"""``queuert-sa schedules APP_PATH``, run as a subprocess: a worker's schedules and how they stand."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy.orm import Session

import queuert_sa as q

from . import app
from .conftest import make_db
from .test_cli import child_env, cli, run


def test_lists_a_workers_schedules_with_their_next_and_last_tick(tmp_path: Path) -> None:
    database = make_db("sqlite", tmp_path)
    worker = app.build_worker(database.url)
    worker.recurring("beat", app.work, every=60, input={"n": 1, "sleep": 0.0})
    worker.drain()  # the pass starts the coming tick
    database.engine.dispose()
    env = child_env(QUEUERT_APP_URL=database.url, QUEUERT_APP_SCHEDULE_EVERY="60")

    table = run(cli("schedules", "tests.app:worker"), env=env)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["NAME", "TYPE", "RECURS", "MISSED", "NEXT", "TICK", "LAST", "TICK"]
    assert row.split()[:5] == ["beat", "work", "every", "0:01:00", "once"]

    listed = run(cli("schedules", "tests.app:worker", "--json"), env=env)
    (schedule,) = json.loads(listed.stdout)
    assert schedule["name"] == "beat"
    assert schedule["every_seconds"] == 60
    assert schedule["started_ahead"] == 1
    assert schedule["last_tick"] is None  # nothing has run yet


def test_a_worker_without_schedules_says_how_to_declare_one(tmp_path: Path) -> None:
    database = make_db("sqlite", tmp_path)
    database.engine.dispose()
    result = run(cli("schedules", "tests.app:worker"), env=child_env(QUEUERT_APP_URL=database.url))
    assert result.returncode == 0
    assert "no schedules (declare them with worker.recurring(...))" in result.stdout


def test_a_bad_app_path_is_a_usage_error() -> None:
    result = run(cli("schedules", "tests.app:nothing"))
    assert result.returncode == 2
    assert "has no attribute 'nothing'" in result.stderr


def test_the_last_tick_shows_its_status(tmp_path: Path) -> None:
    database = make_db("sqlite", tmp_path)
    client = q.Queuert(database.engine, app.job_types)
    worker = app.build_worker(database.url)
    schedule = worker.recurring("beat", app.work, every=60, input={"n": 1, "sleep": 0.0})
    with Session(database.engine) as s, s.begin():  # a tick that ran a minute ago
        tick = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
        client.start_chain(
            s, app.work, {"n": 1, "sleep": 0.0}, dedup=q.Dedup(schedule.key(tick), scope="any")
        )
    worker.drain()
    database.engine.dispose()
    env = child_env(QUEUERT_APP_URL=database.url, QUEUERT_APP_SCHEDULE_EVERY="60")
    listed = run(cli("schedules", "tests.app:worker", "--json"), env=env)
    (found,) = json.loads(listed.stdout)
    assert found["last_status"] == "completed"
