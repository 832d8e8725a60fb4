"""Log records a JSON formatter can use: every record of the library carries the job and
worker it is about; ``queuert-sa worker --log-format json`` writes them one per line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa._logs import FIELDS

from . import app
from .app import WorkIn, work
from .conftest import Db
from .test_cli import ROOT, child_env
from .workers import Kit


def test_attempt_records_carry_the_job_and_the_worker(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(kit.db.engine) as s, s.begin():
        ok = kit.client.start_chain(s, work, {"n": 1, "sleep": 0})
        bad = kit.client.start_chain(s, work, {"n": 2, "sleep": 0})
    worker = kit.worker()

    @worker.handler(work)
    def handle(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        if attempt.input["n"] == 2:
            raise RuntimeError("no")
        return attempt.complete(1)

    with caplog.at_level(logging.INFO, logger="queuert_sa"):
        assert worker.drain() == 2
    ours = [r for r in caplog.records if r.name.startswith("queuert_sa")]
    assert ours
    for record in ours:
        for name in FIELDS:
            assert hasattr(record, name), (record.getMessage(), name)
    (done,) = [r for r in ours if "completed in" in r.getMessage()]
    assert done.levelno == logging.INFO
    fields: dict[str, Any] = {name: getattr(done, name) for name in FIELDS}
    assert fields == {
        "job_id": str(ok.id),
        "chain_id": str(ok.id),
        "type_name": "work",
        "attempt": 1,
        "worker_id": worker.worker_id,
    }
    (failed,) = [r for r in ours if "failed after" in r.getMessage()]
    assert failed.levelno == logging.WARNING
    assert getattr(failed, "job_id") == str(bad.id)  # noqa: B009
    assert getattr(failed, "attempt") == 1  # noqa: B009


def test_worker_log_format_json_writes_one_object_per_line(db: Db) -> None:
    client = q.Queuert(db.engine, app.job_types)
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 3, "sleep": 0})
    db.engine.dispose()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queuert_sa",
            "worker",
            "tests.app:worker",
            "--burst",
            "--log-format",
            "json",
        ],
        cwd=ROOT,
        env=child_env(QUEUERT_APP_URL=db.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    (done,) = [e for e in entries if "completed in" in e["message"]]
    assert done["level"] == "INFO"
    assert done["logger"] == "queuert_sa.worker"
    assert done["job_id"] == str(chain.id) == done["chain_id"]
    assert (done["type_name"], done["attempt"]) == ("work", 1)
    assert done["worker_id"]
