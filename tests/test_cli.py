"""Acceptance tests of the ``queuert-sa`` command line, run as a subprocess.

Also the quickstart example, and the demo and the APP_PATH loader in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.cli import AppPathError, import_worker
from queuert_sa.demo import Account, run_demo

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
    ("tests.app:job_types", "found a queuert_sa._job_types.JobTypes object, not a"),
    ("tests.app:User", "found the class tests.app.User, not a queuert_sa.Worker"),
    ("tests.app:count_effects", "which needs arguments"),
    ("local_app:worker", "found an int object (42), not a queuert_sa.Worker"),
    ("local_app:make_worker", "the factory returned a str object ('not a worker')"),
    ("local_app:make_worker_with", "which needs arguments"),
    ("local_app:NotAWorker", "found the class local_app.NotAWorker"),
    ("local_app:queuert_sa.Worker", "found the class queuert_sa._worker.Worker"),
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
