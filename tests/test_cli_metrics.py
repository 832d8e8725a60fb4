"""``queuert-sa worker --metrics-port``: Prometheus scrapes the worker's OpenTelemetry metrics."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from sqlalchemy.orm import Session

import queuert_sa as q

from . import app
from .conftest import Db
from .test_cli import DEADLINE_S, ROOT, child_env, cli, spawned, wait_for

__all__ = ["spawned"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_metrics_port_serves_throughput_and_backlog_for_prometheus(
    db: Db, tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as session, session.begin():
        chain = client.start_chain(session, app.work, {"n": 1, "sleep": 0})
        client.start_chain(session, app.work, {"n": 2, "sleep": 0}, run_in=3600)
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            cli(
                "worker",
                "tests.app:worker",
                "--metrics-port",
                str(port),
                "--metrics-host",
                "127.0.0.1",
            ),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL=db.url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    spawned.append(proc)
    wait_for(lambda: client.get_chain(chain.id).is_completed, "the chain", proc=proc, log=log)
    deadline = time.monotonic() + DEADLINE_S
    while "queuert_job_attempt_completed_total" not in (text := scrape(port)):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    lines = [line for line in text.splitlines() if not line.startswith("#")]

    def value(name: str, *labels: str) -> float:
        (found,) = [
            line
            for line in lines
            if line.startswith(name + "{") and all(label in line for label in labels)
        ]
        return float(found.rsplit(" ", 1)[1])

    assert value("queuert_job_attempt_completed_total", 'queuert_job_type="work"') == 1
    assert (
        value("queuert_job_attempt_duration_seconds_count", 'queuert_attempt_result="completed"')
        == 1
    )
    assert (
        value(
            "queuert_job_type_backlog", 'queuert_job_type="work"', 'queuert_job_state="scheduled"'
        )
        == 1
    )
    assert (
        value("queuert_job_type_backlog", 'queuert_job_type="work"', 'queuert_job_state="ready"')
        >= 0
    )
    assert value("queuert_job_type_oldest_ready_age_seconds", 'queuert_job_type="work"') >= 0
    assert "metrics on http://127.0.0.1:" in log.read_text()
    proc.terminate()
    assert proc.wait(timeout=DEADLINE_S) == 0


def test_a_busy_metrics_port_is_one_clear_error(db: Db) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            cli(
                "worker",
                "tests.app:worker",
                "--metrics-port",
                str(port),
                "--metrics-host",
                "127.0.0.1",
            ),
            cwd=ROOT,
            env=child_env(QUEUERT_APP_URL=db.url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"Error: cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "pick another --metrics-port" in result.stderr
    assert "Traceback" not in result.stderr
