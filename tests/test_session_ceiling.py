"""The bench script of a Session's ceiling runs the way its docstring says."""

from __future__ import annotations

import subprocess
import sys

from .conftest import Db


def test_the_session_ceiling_bench_runs_as_its_docstring_says(pg: Db) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench_session_ceiling",
            "--db",
            pg.url,
            "--chains=100",
            "--concurrency=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert any(line.startswith("session ceiling") and "jobs/s" in line for line in lines), lines
    assert any(line.startswith("worker, atomic") for line in lines), lines
    assert any(line.startswith("pgbench reference") or "reference" in line for line in lines)
    assert any(line.startswith("start ceiling") and "chains/s" in line for line in lines), lines
    assert any(line.startswith("start_chain") for line in lines), lines
