"""Acceptance tests of the ``queuert-sa`` command line, run as a subprocess.

Also the quickstart example, the demo and the APP_PATH loader in-process, and
the operator commands (``chains list``, ``chain show``, ``cleanup``) in-process
through click's ``CliRunner`` and once as a subprocess, on both engines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa import bench
from queuert_sa.bench import BATCHED_PHASES, PHASES
from queuert_sa.cli import (
    AppPathError,
    build_cli,
    format_duration,
    format_table,
    import_worker,
    parse_duration,
    parse_time,
)
from queuert_sa.demo import Account, run_demo
from queuert_sa.models import create_models

from . import app
from .conftest import Db

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("queuert-sa")
DEADLINE_S = 30.0


def cli(*args: str) -> list[str]:
    """The command line for ``queuert-sa args...``: the installed script, else ``-m``."""
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "queuert_sa.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    # PYTHONPATH makes ``tests.app`` importable from any working directory.
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def run(
    command: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for(
    predicate: Callable[[], bool], what: str, *, proc: subprocess.Popen[str], log: Path
) -> None:
    """Poll until ``predicate()``; fail early (with the log) if ``proc`` exits."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode} before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S:g} s waiting for {what}:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; killed if the test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- demo ------------------------------------------------------------------------


def test_demo_runs_the_chain_to_completion(tmp_path: Path) -> None:
    db_file = tmp_path / "demo.db"
    result = run(cli("demo", "--db", str(db_file)))

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"database: {db_file}" in out
    assert "[1/3] signup: account 1 (ada@example.com)" in out
    assert "[2/3] provision-account: account 1 provisioned" in out
    assert "[3/3] send-welcome-email: sent to ada@example.com" in out
    assert "status=completed" in out
    assert 'output={"sent_to": "ada@example.com", "message_id": "msg-' in out
    assert out.index("[1/3]") < out.index("[2/3]") < out.index("[3/3]") < out.index("status=")
    assert db_file.exists()


def test_demo_without_db_uses_a_temporary_directory(tmp_path: Path) -> None:
    result = run(cli("demo"), env=child_env(TMPDIR=str(tmp_path)))

    assert result.returncode == 0, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"database: {tmp_path}")
    assert Path(first.removeprefix("database: ")).exists()


def test_demo_db_in_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run(cli("demo", "--db", str(tmp_path / "missing" / "demo.db")))

    assert result.returncode == 2
    assert "Invalid value for '--db'" in result.stderr
    assert "does not exist" in result.stderr


def test_run_demo_commits_each_step_with_the_business_writes(tmp_path: Path) -> None:
    lines: list[str] = []
    chain = run_demo(str(tmp_path / "demo.db"), out=lines.append)

    assert chain.status == q.JobStatus.COMPLETED
    assert chain.type_name == "signup"
    assert chain.current_type_name == "send-welcome-email"
    assert chain.output is not None
    assert chain.output["sent_to"] == "ada@example.com"
    assert [line[:5] for line in lines if line.startswith("[")] == ["[1/3]", "[2/3]", "[3/3]"]

    engine = create_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    try:
        with Session(engine) as session:
            account = session.scalars(select(Account)).one()
            assert account.email == "ada@example.com"
            assert account.provisioned_at is not None
            assert account.welcome_message_id == chain.output["message_id"]
    finally:
        engine.dispose()


# --- worker ------------------------------------------------------------------------


def test_worker_command_runs_an_async_worker_and_stops_on_sigterm(
    db: Db, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        chain = client.start_chain(session, app.work, {"n": 4, "sleep": 0})

    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            cli("worker", "tests.app:build_async_worker", "--log-level", "info"),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL=db.url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)

    wait_for(
        lambda: client.get_chain(chain.id).is_completed,
        "the chain to complete",
        proc=proc,
        log=log,
    )
    assert client.get_chain(chain.id).output == 8
    with Session(db.engine) as session:
        assert app.count_effects(session, "work") == 1

    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {DEADLINE_S:g} s after SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    assert returncode == 0, output
    assert "async worker" in output
    assert "started" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("app_path", ["tests.app:worker", "tests.app:build_async_worker"])
def test_worker_burst_runs_what_is_due_and_exits_0(db: Db, app_path: str) -> None:
    """``--burst`` (here through ``python -m queuert_sa``): every due job, and the jobs those
    make due, then exit 0; a job scheduled for later is left for later."""
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        due = [client.start_chain(session, app.work, {"n": n, "sleep": 0}) for n in range(5)]
        later = client.start_chain(session, app.work, {"n": 9, "sleep": 0}, run_in=3600)
    result = run(
        [sys.executable, "-m", "queuert_sa", "worker", app_path, "--burst", "--concurrency", "3"],
        env=child_env(QUEUERT_APP_URL=db.url),
    )
    assert result.returncode == 0, result.stderr
    assert "burst done, 5 job(s) ran" in result.stderr
    assert "concurrency=3" in result.stderr
    assert [client.get_chain(c.id).output for c in due] == [0, 2, 4, 6, 8]
    assert client.get_chain(later.id).status == "pending"
    with Session(db.engine) as session:
        assert app.count_effects(session, "work") == 5


def test_worker_types_runs_only_those_handlers(db: Db) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        work = client.start_chain(session, app.work, {"n": 1, "sleep": 0})
        staged = client.start_chain(session, app.staged_work, {"n": 2, "sleep": 0})
    command = [sys.executable, "-m", "queuert_sa", "worker", "tests.app:worker", "--burst"]
    env = child_env(QUEUERT_APP_URL=db.url)
    result = run([*command, "--types", "staged-work"], env=env)
    assert result.returncode == 0, result.stderr
    assert (client.get_chain(work.id).status, client.get_chain(staged.id).output) == (
        "pending",
        4,
    )
    refused = run([*command, "--types", "work,nope"], env=env)
    assert refused.returncode == 2
    assert "the worker has no handler for 'nope'; its types are staged-work, work" in " ".join(
        refused.stderr.split()
    )
    assert client.get_chain(work.id).status == "pending"


def test_worker_processes_jobs_and_stops_on_sigterm(
    db: Db, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        chain = client.start_chain(session, app.work, {"n": 21, "sleep": 0})

    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            cli("worker", "tests.app:worker", "--log-level", "info"),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL=db.url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)

    wait_for(
        lambda: client.get_chain(chain.id).is_completed,
        "the chain to complete",
        proc=proc,
        log=log,
    )
    assert client.get_chain(chain.id).output == 42
    with Session(db.engine) as session:
        assert app.count_effects(session, "work") == 1

    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {DEADLINE_S:g} s after SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    assert returncode == 0, output
    assert "started" in output
    assert "stopped" in output
    assert "Traceback" not in output


def test_worker_started_with_the_database_down_waits_for_it_in_one_line_per_retry(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    """An outage is not a bug: no traceback, a warning per retry with the backoff, and the
    worker still stops cleanly on SIGTERM (exit 0)."""
    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            cli("worker", "tests.app:worker"),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL="postgresql+psycopg://postgres@127.0.0.1:1/none"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)
    wait_for(
        lambda: "loop failed again (2 in a row" in log.read_text(),
        "two retries",
        proc=proc,
        log=log,
    )
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=DEADLINE_S)
    output = log.read_text()
    assert returncode == 0, output
    assert "database unavailable at start" in output
    assert "retrying in 1 s (and with backoff until it is back)" in output
    assert "Traceback" not in output


def test_sigterm_lets_the_attempt_in_flight_finish(
    db: Db, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        chain = client.start_chain(session, app.work, {"n": 5, "sleep": 1.0})

    started = tmp_path / "started"
    started.mkdir()
    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            cli("worker", "tests.app:worker"),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL=db.url, QUEUERT_APP_STARTED_DIR=str(started)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)
    wait_for(
        lambda: (started / str(chain.id)).exists(),
        "the handler to start",
        proc=proc,
        log=log,
    )

    proc.send_signal(signal.SIGTERM)
    try:
        returncode = proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running {DEADLINE_S:g} s after SIGTERM:\n{log.read_text()}")
    output = log.read_text()
    assert returncode == 0, output
    assert "finishing in-flight attempts" in output
    done = client.get_chain(chain.id)
    assert done.is_completed, output
    assert done.output == 10
    with Session(db.engine) as session:
        assert app.count_effects(session, "work") == 1


# --- bad APP_PATH --------------------------------------------------------------------

LOCAL_APP = """
import queuert_sa

worker = 42


def make_worker():
    return "not a worker"


def make_worker_with(url):
    raise AssertionError("never called")


class NotAWorker:
    pass
"""


BAD_APP_PATHS = [
    ("tests.app", "expected 'module:attribute'"),
    ("tests.app:", "expected 'module:attribute'"),
    ("tests.app:a:b", "expected 'module:attribute'"),
    ("../tests/app.py:worker", "is not a valid module name"),
    ("no_such_module_q:worker", "no module named 'no_such_module_q'"),
    ("tests.no_such_module_q:worker", "no module named 'tests.no_such_module_q'"),
    ("tests.app:no_such_worker", "'tests.app' has no attribute 'no_such_worker'"),
    ("tests.app:job_types", "found a queuert_sa.JobTypes object, not a"),
    ("tests.app:User", "found the class tests.app.User, not a queuert_sa.Worker"),
    ("tests.app:count_effects", "which needs arguments"),
    ("local_app:worker", "found an int object (42), not a queuert_sa.Worker"),
    ("local_app:make_worker", "the factory returned a str object ('not a worker')"),
    ("local_app:make_worker_with", "which needs arguments"),
    ("local_app:NotAWorker", "found the class local_app.NotAWorker"),
    ("local_app:queuert_sa.Worker", "found the class queuert_sa.Worker"),
]


@pytest.mark.parametrize(
    ("app_path", "message"),
    [
        BAD_APP_PATHS[0],  # malformed
        BAD_APP_PATHS[4],  # no such module
        BAD_APP_PATHS[6],  # no such attribute
        BAD_APP_PATHS[10],  # not a Worker, in a module found through the current directory
    ],
)
def test_bad_app_path_is_a_usage_error(tmp_path: Path, app_path: str, message: str) -> None:
    # Run from tmp_path: ``local_app`` is found because the current directory is
    # put on sys.path, as a user's ``myapp.jobs`` would be.
    (tmp_path / "local_app.py").write_text(LOCAL_APP)
    result = run(cli("worker", app_path), cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Invalid value for APP_PATH" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def local_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "local_app.py").write_text(LOCAL_APP)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield
    sys.modules.pop("local_app", None)


@pytest.mark.parametrize(("app_path", "message"), BAD_APP_PATHS)
@pytest.mark.usefixtures("local_app")
def test_import_worker_explains_a_bad_app_path(app_path: str, message: str) -> None:
    with pytest.raises(AppPathError) as info:
        import_worker(app_path)

    assert message in str(info.value)
    assert info.value.app_path == app_path
    assert isinstance(info.value, q.QueuertError)


def test_missing_attribute_lists_the_workers_of_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app_with_worker.py").write_text(
        "import sqlalchemy, queuert_sa as q\n"
        "from tests.app import job_types, work\n"
        "engine = sqlalchemy.create_engine('sqlite://')\n"
        "the_worker = q.Queuert(engine, job_types).worker()\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    try:
        with pytest.raises(AppPathError, match="Workers defined there: the_worker"):
            import_worker("app_with_worker:worker")
    finally:
        module = sys.modules.pop("app_with_worker", None)
        if module is not None:
            module.engine.dispose()


def test_app_that_raises_on_import_exits_1_with_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("raise RuntimeError('boom at import')\n")
    result = run(cli("worker", "broken_app:worker"), cwd=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" in result.stderr
    assert "Error: loading 'broken_app:worker' raised RuntimeError: boom at import" in result.stderr


def test_missing_environment_of_a_lazy_worker_exits_1() -> None:
    env = child_env()
    env.pop("QUEUERT_APP_URL", None)
    result = run(cli("worker", "tests.app:worker"), env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "KeyError: 'QUEUERT_APP_URL'" in result.stderr


def test_bad_log_level_is_a_usage_error() -> None:
    result = run(cli("worker", "tests.app:worker", "--log-level", "loud"))

    assert result.returncode == 2
    assert "Invalid value for '--log-level'" in result.stderr


# --- import_worker in-process -------------------------------------------------------


def test_import_worker_accepts_a_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QUEUERT_APP_URL", f"sqlite:///{tmp_path / 'x.db'}")
    worker = import_worker("tests.app:worker_from_env")
    try:
        assert isinstance(worker, q.Worker)
        assert worker.type_names == ("work", "staged-work")
    finally:
        worker.client.engine.dispose()


# --- help, version, missing click ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "queuert-sa worker myapp.jobs:worker"),
        (["worker", "--help"], "APP_PATH is module:attribute"),
        (["demo", "--help"], "--db FILE"),
        (["chains", "list", "--help"], "--cursor CURSOR"),
        (["chain", "show", "--help"], "Usage: queuert-sa chain show [OPTIONS] ID"),
        (["cleanup", "--help"], "--older-than DURATION"),
        (["--version"], "queuert-sa, version 0.1.0"),
    ],
)
def test_help_and_version(args: list[str], expected: str) -> None:
    result = run(cli(*args))

    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_module_entry_point_works() -> None:
    result = run([sys.executable, "-m", "queuert_sa.cli", "--help"])

    assert result.returncode == 0, result.stderr
    assert "Usage: queuert-sa" in result.stdout


def test_without_click_main_says_what_to_install() -> None:
    code = "import sys; sys.modules['click'] = None; import queuert_sa.cli as c; c.main(['--help'])"
    result = run([sys.executable, "-c", code])

    assert result.returncode == 2
    assert "pip install 'queuert_sa[cli]'" in result.stderr


# --- examples ------------------------------------------------------------------------


def test_quickstart_example_runs(tmp_path: Path) -> None:
    script = ROOT / "examples" / "quickstart.py"
    result = run([sys.executable, str(script)], cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "sending a receipt for payment pay-" in result.stdout
    assert "completed, output {'sent_to': 'ada@example.com'}" in result.stdout
    assert (tmp_path / "quickstart.db").exists()


def test_quickstart_is_listed_in_the_examples_readme() -> None:
    readme = (ROOT / "examples" / "README.md").read_text()
    for example in sorted((ROOT / "examples").glob("*.py")):
        assert example.name in readme, f"{example.name} is missing from examples/README.md"


# --- operator commands: chains list, chain show, cleanup ---------------------------------

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)


class FetchIn(TypedDict):
    source: str


class MergeIn(TypedDict):
    title: str


ops_types = q.JobTypes()
fetch = ops_types.entry("fetch", input=FetchIn, output=dict)
merge = ops_types.entry("merge", input=MergeIn, output=dict, blockers=q.many(fetch))


class Clock:
    """The injected clock of the clients that write the rows these tests read."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def chain_id(n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-7000-8000-{n:012d}")


def operator(*args: str, db: Db | None = None, env: dict[str, str] | None = None) -> Result:
    """``queuert-sa args...`` in-process (with ``--db`` when ``db`` is given)."""
    argv = [*args, "--db", db.url] if db is not None else list(args)
    return CliRunner().invoke(
        build_cli(), argv, env=env, catch_exceptions=False, prog_name="queuert-sa"
    )


def start_at(
    db: Db, when: dt.datetime, job_type: q.JobType[Any, Any], input: Any, *, id: uuid.UUID
) -> q.Queuert:
    client = q.Queuert(db.engine, app.job_types, clock=Clock(when))
    with Session(db.engine) as session, session.begin():
        client.start_chain(session, job_type, input, id=id)
    return client


def complete_at(db: Db, when: dt.datetime, job_type: q.JobType[Any, Any], id: uuid.UUID) -> None:
    client = q.Queuert(db.engine, app.job_types, clock=Clock(when))
    with Session(db.engine) as session, session.begin():
        client.complete_chain(session, id, job_type, lambda c: c.complete(42))


def some_chains(db: Db) -> None:
    """work #1 (completed at T0+5m), signup #2 (moved on to greet#1), work #3 (pending)."""
    start_at(db, T0, app.work, {"n": 1, "sleep": 0}, id=chain_id(1))
    complete_at(db, T0 + dt.timedelta(minutes=5), app.work, chain_id(1))
    signup = start_at(db, T0 + dt.timedelta(minutes=1), app.signup, {"user_id": 7}, id=chain_id(2))
    with Session(db.engine) as session, session.begin():
        signup.complete_chain(
            session, chain_id(2), app.signup, lambda c: c.continue_with(app.greet, {"user_id": 7})
        )
    start_at(db, T0 + dt.timedelta(minutes=2), app.work, {"n": 3, "sleep": 0}, id=chain_id(3))


def untaken_warnings(stderr: str) -> list[str]:
    """The types ``chains list`` warns of on stderr (pending jobs of T0 wait since then)."""
    found = re.findall(
        r"^warning: untaken for over 5 min: 1 ready job\(s\) of type '([^']+)' "
        r"\(the oldest due [0-9.]+ d ago\): no running worker handles it, or its workers "
        r"are down or behind$",
        stderr,
        re.MULTILINE,
    )
    assert len(found) == len(stderr.splitlines()), stderr
    return found


def test_chains_list_prints_a_table_newest_first(db: Db) -> None:
    some_chains(db)

    result = operator("chains", "list", db=db)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ID                                    TYPE    STATUS     CURRENT STEP  CREATED (UTC)        COMPLETED (UTC)",
        "00000000-0000-7000-8000-000000000003  work    pending    work#0        2026-01-02 03:06:05  -",
        "00000000-0000-7000-8000-000000000002  signup  pending    greet#1       2026-01-02 03:05:05  -",
        "00000000-0000-7000-8000-000000000001  work    completed  work#0        2026-01-02 03:04:05  2026-01-02 03:09:05",
    ]
    assert untaken_warnings(result.stderr) == ["greet", "work"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--type", "work"], [3, 1]),
        (["--type", "signup", "--type", "work", "--asc"], [1, 2, 3]),
        (["--status", "completed"], [1]),
        (["--status", "completed", "--status", "pending", "--type", "signup"], [2]),
        (["--since", "2026-01-02T03:05:05Z"], [3, 2]),
        (["--before", "2026-01-02 03:05:05"], [1]),  # no offset: UTC
        (["--since", "2026-01-02T04:04:06+01:00", "--before", "2026-01-02T03:06:00Z"], [2]),
        (["--since", "1h"], []),  # a duration before now: all of them are older
        (["--type", "no-such-type"], []),
    ],
)
def test_chains_list_filters(db: Db, options: list[str], expected: list[int]) -> None:
    some_chains(db)

    result = operator("chains", "list", *options, db=db)

    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    if not expected:
        assert result.stdout == "no chains found\n"
    else:
        assert listed == [str(chain_id(n)) for n in expected]


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_chains_list_pages_through_the_printed_cursor(db: Db, order: str) -> None:
    for n in range(1, 8):
        start_at(db, T0 + dt.timedelta(seconds=n), app.work, {"n": n, "sleep": 0}, id=chain_id(n))
    extra = ["--asc"] if order == "asc" else []

    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(10):
        result = operator("chains", "list", "--limit", "3", *extra, *cursor, db=db)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith("ID ")
        if not lines[-1].startswith("next page: "):
            seen += [line.split()[0] for line in lines[1:]]
            break
        seen += [line.split()[0] for line in lines[1:-1]]
        cursor = lines[-1].removeprefix("next page: ").split()
        assert cursor[0] == "--cursor"
    expected = [str(chain_id(n)) for n in range(1, 8)]
    assert seen == (expected if order == "asc" else expected[::-1])


def test_chains_list_json(db: Db) -> None:
    some_chains(db)

    result = operator("chains", "list", "--json", "--limit", "2", db=db)

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [c["id"] for c in data["chains"]] == [str(chain_id(3)), str(chain_id(2))]
    signup = data["chains"][1]
    assert signup == {
        "id": str(chain_id(2)),
        "type_name": "signup",
        "input": {"user_id": 7},
        "status": "pending",
        "output": None,
        "created_at": "2026-01-02T03:05:05.678000+00:00",
        "completed_at": None,
        "current_job_id": signup["current_job_id"],
        "current_type_name": "greet",
        "current_index": 1,
        "priority": 0,
    }
    uuid.UUID(signup["current_job_id"])
    assert isinstance(data["next_cursor"], str)

    rest = operator(
        "chains", "list", "--json", "--limit", "2", "--cursor", data["next_cursor"], db=db
    )
    last = json.loads(rest.stdout)
    assert [c["id"] for c in last["chains"]] == [str(chain_id(1))]
    assert last["chains"][0]["output"] == 42
    assert last["chains"][0]["completed_at"] == "2026-01-02T03:09:05.678000+00:00"
    assert last["next_cursor"] is None


def test_chains_list_console_script_reads_the_url_from_the_environment(db: Db) -> None:
    some_chains(db)

    result = run(
        cli("chains", "list", "--status", "completed"), env=child_env(QUEUERT_DATABASE_URL=db.url)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ID                                    TYPE  STATUS     CURRENT STEP  CREATED (UTC)        COMPLETED (UTC)",
        "00000000-0000-7000-8000-000000000001  work  completed  work#0        2026-01-02 03:04:05  2026-01-02 03:09:05",
    ]
    assert untaken_warnings(result.stderr) == ["greet", "work"]


def test_chain_show_lists_every_step_with_its_last_error(db: Db) -> None:
    client = q.Queuert(db.engine, app.job_types, clock=Clock(T0))
    with Session(db.engine) as session, session.begin():
        client.start_chain(session, app.signup, {"user_id": 7}, id=chain_id(1))
    worker = client.worker()
    worker.handler(app.signup)(
        lambda a: a.continue_with(app.greet, {"user_id": a.input["user_id"]})
    )

    def greet_fails(attempt: q.Attempt[Any, Any]) -> q.Outcome:
        raise RuntimeError("mail relay said 451: " + "try again later, " * 10)

    worker.handler(app.greet)(greet_fails)
    assert worker.drain() == 2
    greet_id = client.list_chain_jobs(chain_id(1)).items[1].id

    result = operator("chain", "show", str(chain_id(1)), db=db)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:9] == [
        "chain 00000000-0000-7000-8000-000000000001",
        "  type       signup",
        "  status     pending",
        "  created    2026-01-02 03:04:05 UTC",
        "  completed  -",
        '  input      {"user_id": 7}',
        "  output     -",
        "",
        "jobs (2):",
    ]
    header, root, greet = lines[9:12]
    assert header == (
        "#  JOB ID                                TYPE    STATUS     ATTEMPT  PRIORITY  "
        "SCHEDULED (UTC)      COMPLETED (UTC)      LAST ERROR"
    )
    assert root.split() == [
        "0",
        str(chain_id(1)),
        "signup",
        "completed",
        "1",
        "0",
        "2026-01-02",
        "03:04:05",
        "2026-01-02",
        "03:04:05",
        "-",
    ]
    assert greet.split()[:5] == ["1", str(greet_id), "greet", "pending", "1"]
    error = greet[header.index("LAST ERROR") :]
    assert error.startswith("RuntimeError: mail relay said 451: try again later, ")
    assert len(error) == 80
    assert error.endswith("…")
    assert len(lines) == 12  # no blockers, no dependents

    data = json.loads(operator("chain", "show", str(chain_id(1)), "--json", db=db).stdout)
    assert [job["type_name"] for job in data["jobs"]] == ["signup", "greet"]
    assert data["jobs"][1]["last_attempt_error"].startswith("Traceback")  # the full text
    assert data["jobs"][1]["blockers"] == []
    assert data["dependents"] == []

    client.clock = Clock(T0 + dt.timedelta(minutes=10))
    with Session(db.engine) as session, session.begin():
        client.complete_chain(
            session, chain_id(1), app.signup, lambda c: c.complete({"greeting": "hi"})
        )
    done = operator("chain", "show", str(chain_id(1)), db=db).stdout.splitlines()
    assert done[2:7] == [
        "  status     completed",
        "  created    2026-01-02 03:04:05 UTC",
        "  completed  2026-01-02 03:14:05 UTC",
        '  input      {"user_id": 7}',
        '  output     {"greeting": "hi"}',
    ]
    assert done[11].split()[3] == "completed"
    assert done[11].endswith("  -")  # a completed job keeps no error


def test_chain_show_lists_blockers_and_dependents(db: Db) -> None:
    client = q.Queuert(db.engine, ops_types, clock=Clock(T0))
    with Session(db.engine) as session, session.begin():
        a = client.start_chain(session, fetch, {"source": "a"}, id=chain_id(1))
        b = client.start_chain(session, fetch, {"source": "b"}, id=chain_id(2))
        client.start_chain(session, merge, {"title": "m"}, blockers=[a, b], id=chain_id(3))
    with Session(db.engine) as session, session.begin():
        client.complete_chain(session, a.id, fetch, lambda c: c.complete({"rows": 1}))

    shown = operator("chain", "show", str(chain_id(3)), db=db)

    assert shown.exit_code == 0, shown.output
    tail = shown.stdout.splitlines()[-4:]
    assert tail == [
        "blockers (chains a job waits or waited for):",
        "JOB  SLOT  CHAIN ID                              TYPE   STATUS     COMPLETED (UTC)",
        "#0   0     00000000-0000-7000-8000-000000000001  fetch  completed  2026-01-02 03:04:05",
        "#0   1     00000000-0000-7000-8000-000000000002  fetch  pending    -",
    ]
    assert "  status     blocked" in shown.stdout

    blocker = operator("chain", "show", str(b.id), db=db)
    assert blocker.stdout.splitlines()[-3:] == [
        "dependents (jobs with this chain as a blocker, 1):",
        "CHAIN ID                              STEP     STATUS   JOB ID",
        "00000000-0000-7000-8000-000000000003  merge#0  blocked  00000000-0000-7000-8000-000000000003",
    ]
    data = json.loads(operator("chain", "show", str(chain_id(3)), "--json", db=db).stdout)
    assert [c["id"] for c in data["jobs"][0]["blockers"]] == [str(a.id), str(b.id)]


def test_chain_show_unknown_id_exits_1(db: Db) -> None:
    missing = chain_id(99)
    result = operator("chain", "show", str(missing), db=db)

    assert result.exit_code == 1
    where = db.engine.url.render_as_string(hide_password=True)
    assert result.stderr == f"Error: no chain {missing} in {where}.\n"
    assert result.stdout == ""


def test_chain_show_of_a_continuation_id_names_its_chain(db: Db) -> None:
    some_chains(db)
    greet = q.Queuert(db.engine, app.job_types).list_chain_jobs(chain_id(2)).items[1]

    result = operator("chain", "show", str(greet.id), db=db)

    assert result.exit_code == 1
    assert f"no chain {greet.id} in " in result.stderr
    assert f"is job #1 (greet) of chain {chain_id(2)}" in result.stderr
    assert f"Try: queuert-sa chain show {chain_id(2)}" in result.stderr


def test_chain_show_bad_id_is_a_usage_error(db: Db) -> None:
    result = operator("chain", "show", "not-a-uuid", db=db)

    assert result.exit_code == 2
    assert "Invalid value for 'ID': 'not-a-uuid' is not a valid UUID" in result.stderr


def test_cleanup_deletes_chains_completed_long_ago(db: Db) -> None:
    now = dt.datetime.now(dt.UTC)
    month_ago, hour_ago = now - dt.timedelta(days=30), now - dt.timedelta(hours=1)
    for n, job_type in ((1, app.work), (2, app.work), (3, app.staged_work)):
        start_at(db, month_ago, job_type, {"n": n, "sleep": 0}, id=chain_id(n))
        complete_at(db, month_ago, job_type, chain_id(n))
    start_at(db, month_ago, app.work, {"n": 4, "sleep": 0}, id=chain_id(4))  # still open
    start_at(db, hour_ago, app.work, {"n": 5, "sleep": 0}, id=chain_id(5))
    complete_at(db, hour_ago, app.work, chain_id(5))  # completed recently

    only_staged = operator("cleanup", "--older-than", "7d", "--type", "staged-work", db=db)
    assert only_staged.exit_code == 0, only_staged.output
    assert only_staged.stdout == "deleted 1 chain completed more than 7d ago\n"

    rest = operator("cleanup", "--older-than", "1d12h", "--batch-size", "1", db=db)
    assert rest.exit_code == 0, rest.output
    assert rest.stdout == "deleted 2 chains completed more than 1d12h ago\n"

    left = json.loads(operator("chains", "list", "--json", "--asc", db=db).stdout)
    assert [c["id"] for c in left["chains"]] == [str(chain_id(4)), str(chain_id(5))]
    again = operator("cleanup", "--older-than", "7d", "--json", db=db)
    assert json.loads(again.stdout) == {"deleted": 0}


@pytest.mark.parametrize("duration", ["7", "7x", "d", "1.5h", "-1d", "7 d", ""])
def test_cleanup_bad_duration_is_a_usage_error(tmp_path: Path, duration: str) -> None:
    result = operator("cleanup", "--older-than", duration, "--db", f"sqlite:///{tmp_path / 'x.db'}")

    assert result.exit_code == 2
    assert "Invalid value for '--older-than'" in result.stderr
    assert "use a whole number and a unit: 7d, 12h, 30m or 90s" in result.stderr


def test_missing_tables_exit_1_with_the_schema_message(db: Db) -> None:
    # Another table prefix names tables that do not exist, on both engines.
    result = operator("chains", "list", "--table-prefix", "missing_", db=db)

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: list chains: queuert's tables are missing (")
    assert "missing_job" in result.stderr
    assert "alembic upgrade heads" in result.stderr
    assert "Traceback" not in result.output


def test_missing_tables_through_the_console_script(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = run(cli("chain", "show", str(chain_id(1)), "--db", f"sqlite:///{empty}"))

    assert result.returncode == 1
    assert "queuert's tables are missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_custom_table_prefix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'custom.db'}"
    engine = create_engine(url)
    try:
        models = create_models(table_prefix="ops_")
        models.metadata.create_all(engine)
        client = q.Queuert(engine, app.job_types, models=models, clock=Clock(T0))
        with Session(engine) as session, session.begin():
            client.start_chain(session, app.work, {"n": 1, "sleep": 0}, id=chain_id(1))
    finally:
        engine.dispose()

    result = operator("chains", "list", "--table-prefix", "ops_", "--db", url)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:3] == [str(chain_id(1)), "work", "pending"]
    assert operator("chains", "list", "--db", url).exit_code == 1  # default tables: missing


def test_a_sqlite_file_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    result = operator("chains", "list", "--db", f"sqlite:///{path}")

    assert result.exit_code == 1
    assert result.stderr == f"Error: the SQLite database file {path} does not exist.\n"
    assert not path.exists()


def test_unreachable_database_exits_1_without_the_password() -> None:
    result = operator("chains", "list", "--db", "postgresql+psycopg://ops:s3cret@127.0.0.1:1/app")

    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: database postgresql+psycopg://ops:***@127.0.0.1:1/app: "
    )
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


#: A --db that is never opened: each case fails before a connection is made.
NO_DB = ["--db", "sqlite:///never-opened.db"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chains", "list", "--db", "not a url"], "Invalid value for '--db': not a database URL"),
        (["chains", "list", "--db", "nosuchdialect://x"], "Invalid value for '--db'"),
        (["chains", "list"], "Missing option '--db' (env var: 'QUEUERT_DATABASE_URL')"),
        (["chains", "list", "--status", "done", *NO_DB], "Invalid value for '--status'"),
        (["chains", "list", "--limit", "0", *NO_DB], "Invalid value for '--limit'"),
        (
            ["chains", "list", "--since", "yesterday", *NO_DB],
            "Invalid value for '--since': 'yesterday' is neither",
        ),
        (
            ["chains", "list", "--table-prefix", "a-b", *NO_DB],
            "Invalid value for '--table-prefix'",
        ),
        (["cleanup", *NO_DB], "Missing option '--older-than'"),
    ],
)
def test_operator_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = operator(*args, env={"QUEUERT_DATABASE_URL": ""})

    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_bad_cursor_is_a_usage_error(db: Db) -> None:
    result = operator("chains", "list", "--cursor", "bm9wZQ", db=db)

    assert result.exit_code == 2
    assert "Invalid value for '--cursor': Invalid cursor 'bm9wZQ'" in result.stderr


def test_cursor_of_the_other_order_is_refused(db: Db) -> None:
    for n in range(1, 4):
        start_at(db, T0 + dt.timedelta(seconds=n), app.work, {"n": n, "sleep": 0}, id=chain_id(n))
    cursor = json.loads(operator("chains", "list", "--json", "--limit", "1", db=db).stdout)[
        "next_cursor"
    ]

    result = operator("chains", "list", "--asc", "--cursor", cursor, db=db)

    assert result.exit_code == 2
    assert "Invalid value for '--cursor'" in result.stderr


# --- operator commands: the parsers and the table, without a database ------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", dt.timedelta(days=7)),
        ("12h", dt.timedelta(hours=12)),
        ("30m", dt.timedelta(minutes=30)),
        ("90s", dt.timedelta(seconds=90)),
        ("1d12h", dt.timedelta(days=1, hours=12)),
        (" 2H ", dt.timedelta(hours=2)),
        ("0s", dt.timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_refuses_what_it_cannot_read() -> None:
    for text in ("", "7", "h", "1.5h", "-1d", "1w", "7 d", "99999999999999d"):
        with pytest.raises(ValueError, match=re.escape(repr(text))):
            parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("7d", "12h", "30m", "90s", "1d12h", "0s"):
        assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
    assert format_duration(dt.timedelta(seconds=90)) == "1m30s"


def test_parse_time() -> None:
    assert parse_time("2026-01-02", now=T0) == dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert parse_time("2026-01-02T05:00:00+02:00", now=T0) == dt.datetime(
        2026, 1, 2, 3, tzinfo=dt.UTC
    )
    assert parse_time("2026-01-02T03:00Z", now=T0) == dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)
    assert parse_time("2h", now=T0) == T0 - dt.timedelta(hours=2)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_time("last tuesday", now=T0)


def test_format_table_fits_each_column_to_its_widest_cell() -> None:
    assert format_table(("A", "LONG HEADER", "C"), [["wide cell", "x", ""], ["", "y", "z"]]) == [
        "A          LONG HEADER  C",
        "wide cell  x",
        "           y            z",
    ]
    assert format_table(("ONLY",), []) == ["ONLY"]


# --- bench ----------------------------------------------------------------------------


UNBATCHED_PHASES = [p for p in PHASES if p not in BATCHED_PHASES]


def test_bench_runs_the_unbatched_phases_and_their_references_on_a_temporary_sqlite_file(
    tmp_path: Path,
) -> None:
    modes = [arg for phase in UNBATCHED_PHASES for arg in ("--mode", phase)]
    result = run(
        cli("bench", "--chains", "30", "--concurrency", "2", *modes, "--json"),
        env=child_env(TMPDIR=str(tmp_path)),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["database"].startswith("sqlite:///")
    assert (report["batch"], report["history"], report["blocked"]) == (100, 0, 0)
    assert [f["phase"] for f in report["figures"]] == [
        "start-single",
        "start-batched",
        "atomic",
        "atomic-session",
        "staged",
        "async-atomic",
        "async-staged",
    ]
    assert all(f["count"] == 30 and f["rate"] > 0 for f in report["figures"])
    assert report["reference"]["count"] == 30  # every due job acquired and completed once
    references = {r["kind"]: r["figure"] for r in report["references"]}
    assert list(references) == ["start-single", "start-batched", "process"]
    assert all(figure["count"] == 30 and figure["rate"] > 0 for figure in references.values())
    assert all(f["of_reference"] > 0 for f in report["figures"])
    assert list(tmp_path.iterdir()) == []  # its temporary database is removed


def test_bench_runs_every_phase_by_default_batched_ones_included(tmp_path: Path) -> None:
    result = run(
        cli("bench", "--chains", "30", "--concurrency", "2", "--batch", "7", "--json"),
        env=child_env(TMPDIR=str(tmp_path)),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert [f["phase"] for f in report["figures"]] == list(PHASES)
    assert report["batch"] == 7
    assert all(f["count"] == 30 and f["rate"] > 0 for f in report["figures"])
    references = {r["kind"]: r["figure"] for r in report["references"]}
    assert list(references) == ["start-single", "start-batched", "process", "process-batched"]
    assert references["process-batched"]["count"] == 30
    assert all(f["of_reference"] > 0 for f in report["figures"])
    assert list(tmp_path.iterdir()) == []


def test_bench_batched_phases_on_postgresql(pg: Db) -> None:
    modes = [arg for phase in BATCHED_PHASES for arg in ("--mode", phase)]
    result = run(
        cli("bench", "--db", pg.url, "--chains", "40", "--concurrency", "3", "--batch", "9",
            "--history", "100", "--blocked", "10", *modes),
        env=child_env(),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to 9 jobs per transaction when batched" in result.stdout
    for phase in BATCHED_PHASES:
        # Each beside its share of the batched reference.
        assert re.search(rf"^{phase} +[0-9,]+ +jobs/s +[0-9.]+ +[0-9]+%$", result.stdout, re.M), (
            result.stdout
        )
    assert re.search(r"^reference process-batched +[0-9,]+ +jobs/s", result.stdout, re.M)
    assert "reference process-batched: pgbench, 3 clients, one transaction per 9 jobs" in (
        result.stdout
    )
    assert "reference process:" not in result.stdout  # no unbatched phase ran


def test_bench_batched_reference_takes_and_completes_batch_jobs_per_transaction(db: Db) -> None:
    with bench._bench_database(db.url) as (engine, models, _):
        client, noop = bench._client(engine, models)
        bench._fill(client, noop, 45)

        reference = bench._batched_process_reference(client, models, 45, 1, 10)

        assert reference.figure is not None
        assert reference.figure.count == 45
        table = models.job_table
        with engine.connect() as conn:
            jobs = conn.execute(select(table.c.status, table.c.input, table.c.output)).all()
            # One client: each transaction's jobs share its time, and no other's.
            per_commit = conn.execute(
                select(func.count())
                .select_from(table)
                .group_by(table.c.completed_at)
                .order_by(func.count())
            ).scalars()
            assert list(per_commit) == [5, 10, 10, 10, 10]
    assert len(jobs) == 45
    assert all(status == "completed" and output == i["i"] for status, i, output in jobs)


def test_bench_history_and_blocked_jobs_stay_in_the_table_across_phases(db: Db) -> None:
    with bench._bench_database(db.url) as (engine, models, _):
        client, noop = bench._client(engine, models)
        table = models.job_table

        def statuses() -> dict[str, int]:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(table.c.status, func.count()).group_by(table.c.status)
                ).all()
            return {str(status): count for status, count in rows}

        bench._insert_background(client, models, 120, 40)
        background = {"completed": 120, "blocked": 40, "pending": 1}  # 1: the blocker chain
        assert statuses() == background
        references = (
            lambda: bench._process_reference(client, models, 30, 2),
            lambda: bench._batched_process_reference(client, models, 30, 2, 8),
        )
        for reference in references:
            bench._fill(client, noop, 30)
            figure = reference().figure
            assert figure is not None
            assert figure.count == 30  # the phase's jobs, not the history
            assert statuses() == {**background, "completed": 150}
            bench._clear(engine, models)
            assert statuses() == background
        with Session(engine) as session:
            blocked = session.scalars(
                select(table.c.id).where(table.c.status == "blocked").limit(1)
            ).one()
            [blocker] = client.get_job_blockers(blocked, session=session)
        assert (blocker.type_name, blocker.status) == ("bench-blocker", "pending")


def test_bench_reports_the_jobs_already_in_the_table(tmp_path: Path) -> None:
    result = run(
        cli("bench", "--chains", "30", "--concurrency", "2", "--mode", "atomic",
            "--history", "200", "--blocked", "50", "--json"),
        env=child_env(TMPDIR=str(tmp_path)),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["history"], report["blocked"]) == (200, 50)
    assert [(f["phase"], f["count"]) for f in report["figures"]] == [("atomic", 30)]
    assert report["reference"]["count"] == 30


def test_bench_on_postgresql_leaves_no_schema_behind(pg: Db) -> None:
    db = pg
    modes = [arg for phase in UNBATCHED_PHASES for arg in ("--mode", phase)]
    result = run(
        cli("bench", "--db", db.url, "--chains", "20", "--concurrency", "2", *modes,
            "--history", "300", "--blocked", "30"),
        env=child_env(),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "atomic" in result.stdout
    assert "of reference" in result.stdout
    assert "already in the table during each phase: 300 completed jobs, 30 blocked jobs" in (
        result.stdout
    )
    for kind in ("start-single", "start-batched", "process"):
        assert f"reference {kind}: pgbench" in result.stdout
    with db.engine.connect() as conn:
        schemas = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_namespace WHERE starts_with(nspname, 'queuert_bench_')"
        ).scalar_one()
    assert schemas == 0


def test_bench_refuses_an_unknown_mode() -> None:
    result = run(cli("bench", "--mode", "fastest"))

    assert result.returncode == 2
    assert "Invalid value for '--mode'" in result.stderr


@pytest.mark.parametrize("option", ["--batch=0", "--history=-1", "--blocked=-1"])
def test_bench_refuses_an_empty_batch_and_negative_counts(option: str) -> None:
    result = run(cli("bench", option))

    assert result.returncode == 2
    assert f"Invalid value for '{option.split('=')[0]}'" in result.stderr


def test_bench_modes_are_the_phases_of_the_bench_module() -> None:
    [modes] = [param for param in build_cli().commands["bench"].params if param.name == "modes"]

    assert isinstance(modes.type, click.Choice)
    assert tuple(modes.type.choices) == PHASES


def test_the_bench_module_is_imported_only_when_bench_runs() -> None:
    code = (
        "import sys, queuert_sa.cli as c; c.build_cli(); print('queuert_sa.bench' in sys.modules)"
    )
    result = run([sys.executable, "-c", code])

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
