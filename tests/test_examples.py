"""Examples behave as their docstrings say.

The Flask app run as its docstring says, on a fresh SQLite file: as a script
(``python examples/flask_app.py``, driven over HTTP) and its worker alone
(``queuert-sa worker examples.flask_app:worker``); also imported, in-process.
``recurring.py`` and ``operate.py`` run as scripts on their own temporary
SQLite file and, with ``--db``, on PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import itertools
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q

from .conftest import make_db
from .test_cli import DEADLINE_S, child_env, cli, wait_for

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def imported_flask_example(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``examples/flask_app.py`` imported with ``QUEUERT_DATABASE_URL=url`` (a fresh module)."""
    monkeypatch.setenv("QUEUERT_DATABASE_URL", url)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("flask_app", None)
    module = importlib.import_module("flask_app")
    try:
        yield module
    finally:
        module.engine.dispose()
        sys.modules.pop("flask_app", None)


@pytest.fixture
def flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    with imported_flask_example(f"sqlite:///{tmp_path / 'flask.db'}", monkeypatch) as module:
        yield module


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; killed if the test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def spawn(
    command: list[str], log: Path, spawned: list[subprocess.Popen[str]], **env: str
) -> subprocess.Popen[str]:
    """Start ``command`` from the repository root, its stdout and stderr going to ``log``."""
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=child_env(**env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)
    return proc


def stop(proc: subprocess.Popen[str], sig: signal.Signals, log: Path) -> int:
    """Send ``sig`` and wait for ``proc`` to exit; its exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {DEADLINE_S:g} s after {sig.name}:\n{log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """``method url`` with ``body`` as JSON: the status and the JSON reply (None if not JSON)."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, None


def serving(url: str) -> bool:
    try:
        http("GET", url)
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def test_flask_example_as_a_script_serves_signups_and_its_worker_welcomes(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    # As the docstring says: python examples/flask_app.py, then curl; here on a fresh file.
    db_file = tmp_path / "fresh.db"
    base = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "flask.log"
    proc = spawn(
        [sys.executable, "-W", "error", "examples/flask_app.py"],
        log,
        spawned,
        QUEUERT_DATABASE_URL=f"sqlite:///{db_file}",
        PORT=base.rsplit(":", 1)[1],
    )
    wait_for(lambda: serving(f"{base}/chains/x"), f"{base} to serve", proc=proc, log=log)

    status, body = http("POST", f"{base}/signup", {"email": "ada@example.com"})
    assert status == 201, log.read_text()
    chain_url = f"{base}/chains/{body['chain_id']}"
    wait_for(
        lambda: http("GET", chain_url)[1]["status"] == "completed",
        "the chain to complete",
        proc=proc,
        log=log,
    )
    assert http("GET", chain_url)[1]["output"]["to"] == "ada@example.com"
    assert http("POST", f"{base}/signup", {"email": "not-an-email"})[0] == 400
    assert http("GET", f"{base}/chains/not-a-uuid")[0] == 404
    # The dashboard, mounted at /queuert behind Basic auth.
    ops = {"Authorization": "Basic " + base64.b64encode(b"ops:ops").decode()}
    status, listed = http("GET", f"{base}/queuert/api/chains", headers=ops)
    assert status == 200
    assert [c["id"] for c in listed["items"]] == [body["chain_id"]]
    assert http("GET", f"{base}/queuert/api/chains")[0] == 401

    # Ctrl+C: the server returns, the worker stops, the script exits 0.
    returncode = stop(proc, signal.SIGINT, log)
    output = log.read_text()
    assert returncode == 0, output
    assert "Traceback" not in output
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        users = conn.execute("SELECT email, welcomed_at IS NOT NULL FROM example_user").fetchall()
    assert users == [("ada@example.com", 1)]


def test_flask_example_worker_runs_from_the_cli_on_a_fresh_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawned: list[subprocess.Popen[str]]
) -> None:
    # As the docstring says: its worker in its own process, from the repository root.
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    log = tmp_path / "worker.log"
    proc = spawn(cli("worker", "examples.flask_app:worker"), log, spawned, QUEUERT_DATABASE_URL=url)
    started = re.compile(r"worker \S+ started: types=send-welcome concurrency=2")
    wait_for(
        lambda: bool(started.search(log.read_text())), "the worker to start", proc=proc, log=log
    )

    # The app (here imported) signs a user up; the command's worker welcomes them.
    with imported_flask_example(url, monkeypatch) as app:
        with Session(app.engine) as session, session.begin():
            user = app.User(email="ada@example.com")
            session.add(user)
            session.flush()
            chain = app.queuert.start_chain(session, app.welcome, {"user_id": user.id})
        wait_for(
            lambda: app.queuert.get_chain(chain.id).is_completed,
            "the command's worker to complete the chain",
            proc=proc,
            log=log,
        )
        with Session(app.engine) as session:
            assert session.scalars(select(app.User)).one().welcomed_at is not None

    returncode = stop(proc, signal.SIGTERM, log)
    output = log.read_text()
    assert returncode == 0, output
    assert "SchemaMissingError" not in output
    assert "tables are missing" not in output
    assert re.search(r"queuert-sa worker \S+ stopped", output), output


def test_signup_commits_user_and_chain_and_worker_welcomes(flask_example: ModuleType) -> None:
    app = flask_example.create_app()
    http = app.test_client()
    done = threading.Event()
    flask_example.worker.start()
    try:
        response = http.post("/signup", json={"email": "ada@example.com"})
        assert response.status_code == 201
        chain_id = response.get_json()["chain_id"]
        # Subscribe, then check: a completion before the subscription is seen by the check.
        flask_example.queuert.notify.listen_chain_completed(
            uuid.UUID(chain_id), lambda _id: done.set()
        )
        chain = flask_example.queuert.get_chain(chain_id)
        assert chain.is_completed or done.wait(20)
    finally:
        assert flask_example.worker.stop()

    body = http.get(f"/chains/{chain_id}").get_json()
    assert body["status"] == "completed"
    assert body["output"]["to"] == "ada@example.com"
    with Session(flask_example.engine) as s:
        user = s.scalars(select(flask_example.User)).one()
        assert user.welcomed_at is not None


def test_invalid_signup_stores_neither_user_nor_job(flask_example: ModuleType) -> None:
    app = flask_example.create_app()
    response = app.test_client().post("/signup", json={"email": "not-an-email"})
    assert response.status_code == 400
    with Session(flask_example.engine) as s:
        assert s.execute(select(func.count()).select_from(flask_example.User)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(q.models.Job)).scalar_one() == 0
    assert app.test_client().get("/chains/not-a-uuid").status_code == 404


# --- recurring.py and operate.py: run as scripts, on SQLite and on PostgreSQL ----------------


def run_script(name: str, *args: str) -> str:
    """Run ``examples/<name>`` with warnings as errors; its stdout (exit code 0 asserted).

    Also asserted: it leaves no database file in the repository (the default
    SQLite file lives in a temporary directory).
    """
    before = set(ROOT.glob("*.db")) | set((ROOT / "examples").glob("*.db"))
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(ROOT.glob("*.db")) | set((ROOT / "examples").glob("*.db")) == before
    return result.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def example_db_args(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """No arguments (the example's own temporary SQLite file), or ``--db`` a fresh PostgreSQL."""
    if request.param == "sqlite":
        yield []
        return
    database = make_db("postgresql", tmp_path)  # emptied; skips if PostgreSQL is down
    database.engine.dispose()
    yield ["--db", database.url]


RUN_LINE = re.compile(
    r"^run (\d+): at ([+-]\d+\.\d+) s \(due ([+-]\d+\.\d+) s\) by worker-[ab]; "
    r"next run scheduled$"
)


def test_recurring_example_runs_once_per_period_and_keeps_one_open_chain(
    example_db_args: list[str],
) -> None:
    lines = run_script("recurring.py", *example_db_args).splitlines()

    started = re.fullmatch(r"bootstrap 1: started run 1, chain (\S+)", lines[0])
    assert started, lines
    assert lines[1] == "bootstrap 2: run 1 already open (pending), nothing started"
    assert lines[2] == "bootstrap 3: run 1 already open (pending), nothing started"
    assert any(
        re.fullmatch(
            r"bootstrap from a second instance: run \d already open \(\w+\), nothing started", line
        )
        for line in lines
    ), lines

    runs = [m for m in map(RUN_LINE.match, lines) if m]
    numbers = [int(m[1]) for m in runs]
    # 3.5 s with a 1 s period: runs at about 0, 1, 2 and 3 s, each exactly once, in order.
    assert numbers == list(range(1, len(numbers) + 1)), lines
    assert 3 <= len(numbers) <= 4, lines
    due = [float(m[3]) for m in runs]
    ran = [float(m[2]) for m in runs]
    for earlier, later in itertools.pairwise(due):
        assert later - earlier >= 0.99, lines  # never sooner than one period apart
    for start, when in zip(ran, due, strict=True):
        assert start >= when - 0.01, lines  # never before it was due

    n = len(numbers)
    assert "workers stopped" in lines
    assert f"chains: {n + 1} ({n} completed, 1 open)" in lines
    assert re.fullmatch(
        rf"open chain: \S+ run {n + 1}, pending, (due in \d+\.\d\d s|due now)", lines[-1]
    )


def test_operate_example_prints_dedup_trigger_pages_refusal_cleanup_and_cancel(
    example_db_args: list[str],
) -> None:
    out = run_script("operate.py", *example_db_args)
    lines = out.splitlines()

    # Deduplication: the second start in the same transaction returns the first chain.
    assert "sync account 7: started sync 7 (pending)" in lines
    assert "sync account 7: deduplicated, returned sync 7 (pending)" in lines
    assert "== drain: processed 8 jobs (what is due)" in lines
    assert (
        "sync account 7 again, scope='any' within 1 h: deduplicated=True, "
        "returned sync 7 (completed)"
    ) in lines
    # trigger_job: a report scheduled an hour ahead runs now; a completed job cannot be.
    assert "weekly report: was due in 60 min, now due in 0 min (pending)" in lines
    assert (
        'drain: processed 1 job; weekly report output {"report": "weekly", "sent": true}' in lines
    )
    assert "trigger again refused: JobNotTriggerableError (status completed)" in lines
    # Pagination: ten chains, four per page, newest first; nothing repeated or lost.
    assert lines[lines.index("== list chains, 4 per page, newest first") + 1 :][:4] == [
        "page 1: merge nightly (blocked), merge daily (completed), fetch c (pending), "
        "fetch d (completed)",
        "page 2: fetch b (completed), fetch a (completed), monthly report (pending), "
        "weekly report (completed)",
        "page 3: sync 8 (completed), sync 7 (completed)",
        "open chains: monthly report (pending), fetch c (pending), merge nightly (blocked)",
    ]
    assert "a 'desc' cursor with order='asc': InvalidCursorError" in lines
    assert "sync 7 #0: sync-account completed, output null" in lines
    assert 'sync 7 #1: record-sync completed, output {"account_id": 7, "records": 3}' in lines
    assert "merge daily waits for: fetch a (completed), fetch b (completed)" in lines
    assert "jobs blocked by fetch a: merge daily" in lines
    # Deletion: refused while merge daily needs fetch a; allowed together with it.
    assert (
        "delete fetch a refused: BlockerReferenceError: Cannot delete: 1 job(s) outside the "
        "deletion set declare a chain in it as a blocker (chain fetch a blocks job merge daily "
        "of chain merge daily). Nothing was deleted." in out
    )
    assert "delete fetch a with its dependent: deleted fetch a, merge daily" in lines
    # Cleanup: the four completed chains nobody needs; open ones and fetch d (needed) stay.
    assert "deleted 4 completed chains" in lines
    assert (
        "kept: monthly report (pending), fetch d (completed), fetch c (pending), "
        "merge nightly (blocked)"
    ) in lines
    # Cancel: alone, the dependent stays blocked; with cascade=True it is cancelled too.
    assert lines[lines.index("== cancel fetch c") + 1 :] == [
        "cancelled: fetch c",
        "still blocked on fetch c: merge nightly",
        "await fetch c: ChainCancelledError (reason 'source c retired')",
        "cancel fetch c again, cascade=True: cancelled merge nightly",
        "now: merge nightly (cancelled), fetch c (cancelled)",
    ]


# --- fastapi_app.py: its self-contained demo, on aiosqlite and on async psycopg ------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_fastapi_example_commits_order_with_chain_and_runs_atomic_then_staged(
    kind: str, tmp_path: Path
) -> None:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fastapi.db'}"
    else:
        database = make_db("postgresql", tmp_path)  # emptied; skips if PostgreSQL is down
        database.engine.dispose()
        url = database.url  # postgresql+psycopg works for the async engine too
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / "fastapi_app.py")],
        cwd=tmp_path,
        env={**os.environ, "QUEUERT_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert out[1] == "refused: 422 quantity must be at least 1"
    assert "chain completed: True" in out
    assert "status: completed [('reserve-stock', 'completed'), ('charge-card', 'completed')]" in out
    assert "order: paid True" in out
    assert "dashboard: 1 chain(s); anonymous: 401" in out
    # The refused order rolled back with its chain: one order in the database.
    assert out[-1] == "orders in the database: 1"


def test_failures_example_fails_retries_and_cancels(example_db_args: list[str]) -> None:
    lines = run_script("failures.py", *example_db_args).splitlines()
    assert lines[-10:-5] == [
        "the gateway is back: retry order 2's charge; cancel order 3",
        "cancelled 2 chains",
        "drain 5:",
        "  charge order 2: attempt 4",
        "  ship order 2",
    ], lines
    assert "charge 2: failed after 3 attempts: ConnectionError: card gateway unreachable" in lines
    assert "charge 3: failed after 1 attempt: Fail: order 3 was deleted" in lines
    assert lines.count("ship 2: blocked") == 1  # behind the failed charge, until its retry
    assert lines[-5:] == [
        "charge 2: completed",
        "ship 2: completed",
        "charge 3: cancelled: order deleted by the customer",
        "ship 3: cancelled: order deleted by the customer",
        "payments: [1, 2]",  # the failed attempts' payments were rolled back
    ], lines


def test_group_commit_example_commits_groups_and_retries_the_refused_job_alone(
    example_db_args: list[str],
) -> None:
    lines = run_script("group_commit.py", *example_db_args).splitlines()
    assert lines == [
        "worker ran 420 attempts (1 failed)",
        # 300 jobs in groups of 50 (the refused one rescheduled inside its group's
        # transaction); 120 in groups of 40.
        "count-view: 299 completed in 6 transactions",
        "index-document: 120 completed in 3 transactions",
        "business rows: 299 page views, 120 search rows",
        "refused job: pending, attempt 1, ValueError: not a page: 'oops'",
    ], lines


def test_tracing_example_prints_one_trace_from_request_to_attempts(
    example_db_args: list[str],
) -> None:
    lines = run_script("tracing.py", *example_db_args).splitlines()
    assert lines[:10] == [
        "trace:",
        "  POST /orders  [INTERNAL, UNSET]",
        "    create chain.place-order  [PRODUCER, UNSET]",
        "      start job-attempt.place-order  [CONSUMER, OK]",
        "      create job.charge-card  [PRODUCER, UNSET]",
        "        start job-attempt.charge-card  [CONSUMER, OK]",
        "      create job.send-receipt  [PRODUCER, UNSET, linked to 1]",
        "        start job-attempt.send-receipt  [CONSUMER, ERROR, events: exception]",
        "        start job-attempt.send-receipt  [CONSUMER, OK, events: chain completed]",
        "metrics:",
    ], lines
    assert lines[10:] == [
        "  queuert.chain.created = 1",
        "  queuert.job.created = 3",
        "  queuert.job.attempt.started = 4",
        "  queuert.job.attempt.completed = 3",
        "  queuert.job.attempt.failed = 1",
        "  queuert.job.attempt.duration = 4",
        "  queuert.chain.completed = 1",
    ], lines


def test_schedules_example_keeps_one_chain_per_tick_with_two_workers(
    example_db_args: list[str],
) -> None:
    lines = run_script("schedules.py", *example_db_args).splitlines()
    assert lines[0] == "two workers keep the same schedules for 3.5 s"
    beats = [line for line in lines if line.startswith("heartbeat ") and " by worker-" in line]
    ticks = [line.split()[1] for line in beats]
    assert 3 <= len(beats) <= 4, lines
    assert len(set(ticks)) == len(ticks), lines  # each tick ran once, by one of the workers
    assert "workers stopped" in lines
    assert any(re.fullmatch(r"heartbeat ticks: \d+, chains per tick: \{1\}", x) for x in lines)
    assert any(
        re.fullmatch(r"nightly-report for \d{4}-\d\d-\d\d runs at \S+ 03:00 CES?T", x)
        for x in lines
    ), lines
    assert lines[-2:] == [
        "schedule heartbeat: every 0:00:01, missed=once",
        'schedule nightly-report: cron "0 3 * * *" in Europe/Berlin, missed=skip',
    ]


def test_limits_example_keeps_two_at_once_five_a_second_and_images_flow(
    example_db_args: list[str],
) -> None:
    lines = run_script("limits.py", *example_db_args).splitlines()
    assert lines[0] == "sms sent: 20, most at once: 2 (max_running=2)"
    spread = re.fullmatch(
        r"sms starts spread over (\d+\.\d) s \(rate 5/s: at least 3\.8 s\)", lines[1]
    )
    assert spread, lines
    assert float(spread[1]) >= 3.7
    assert lines[2:] == [
        "images done before the last sms: True",
        "attempts per job: [1]",
        "workers stopped",
    ]
