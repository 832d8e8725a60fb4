"""``queuert-sa dashboard``, run as a subprocess: served by uvicorn, stopped by Ctrl+C,
and refused where it would expose the jobs without authorization."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q

from . import app
from .conftest import make_db
from .test_cli import cli, run, wait_for
from .test_examples import free_port, http, serving, spawn, spawned, stop

__all__ = ["spawned"]  # the fixture


def started_database(tmp_path: Path) -> tuple[str, q.Chain[app.WorkIn, int]]:
    database = make_db("sqlite", tmp_path)
    client = q.Queuert(database.engine, app.job_types)
    with Session(database.engine) as s, s.begin():
        chain = client.start_chain(s, app.work, {"n": 7, "sleep": 0.0})
    database.engine.dispose()
    return database.url, chain


def test_serves_a_database_read_only_until_ctrl_c(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    url, chain = started_database(tmp_path)
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = spawn(cli("dashboard", "--db", url, "--port", str(port)), log, spawned)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: serving(f"{base}/api/stats"), "the dashboard to serve", proc=proc, log=log)
    status, listed = http("GET", f"{base}/api/chains")
    assert status == 200
    assert [c["id"] for c in listed["items"]] == [str(chain.id)]
    assert listed["items"][0]["input"] == {"n": 7, "sleep": 0.0}  # as stored: no app code
    refused = http("POST", f"{base}/api/jobs/{chain.id}/trigger", headers={"X-Requested-With": "1"})
    assert refused[0] == 403  # read-only unless --writable
    assert stop(proc, signal.SIGINT, log) == 0
    assert f"queuert-sa dashboard (read-only) on {base}/" in log.read_text()


def test_refuses_a_public_host_without_authorization(tmp_path: Path) -> None:
    url, _ = started_database(tmp_path)
    result = run(cli("dashboard", "--db", url, "--host", "0.0.0.0", "--port", str(free_port())))
    assert result.returncode == 2
    assert "Refusing to serve the dashboard on 0.0.0.0 without authorization" in result.stderr
    assert "authorize=" in result.stderr


def test_serves_an_app_dashboard_with_its_authorize_on_any_host(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    url, chain = started_database(tmp_path)
    port = free_port()
    log = tmp_path / "dashboard.log"
    command = cli("dashboard", "tests.dashboard_app:dashboard", "--host", "0.0.0.0")
    proc = spawn([*command, "--port", str(port)], log, spawned, QUEUERT_DATABASE_URL=url)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: serving(f"{base}/api/stats"), "the dashboard to serve", proc=proc, log=log)
    assert http("GET", f"{base}/api/chains")[0] == 401
    status, listed = http("GET", f"{base}/api/chains", headers={"Authorization": "Bearer ops"})
    assert status == 200
    assert [c["id"] for c in listed["items"]] == [str(chain.id)]
    assert stop(proc, signal.SIGINT, log) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tests.app:nothing"], "has no attribute 'nothing'"),
        (["tests.app:job_types"], "not a queuert_sa.dashboard.Dashboard instance"),
        (["tests.dashboard_app:dashboard", "--writable"], "its read_only= decides"),
        ([], "Give APP_PATH or --db"),
        (["tests.dashboard_app:dashboard", "--db", "sqlite://"], "not both"),
    ],
)
def test_bad_targets_are_usage_errors(args: list[str], message: str) -> None:
    result = run(cli("dashboard", *args, "--port", str(free_port())))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
