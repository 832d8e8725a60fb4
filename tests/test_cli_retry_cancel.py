"""The operator commands that change state, ``jobs retry`` and ``chains cancel``, and the
failed and cancelled states in ``chains list`` and ``chain show``; on both engines, in-process
through click's ``CliRunner`` and once as a subprocess.

Failed jobs are set up with an UPDATE (``make_failed``: what the worker writes
for a job out of attempts), at chosen failure times and attempt counts.
"""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy.orm import Session

import queuert_sa as q

from . import app
from .conftest import Db
from .test_cli import T0, Clock, chain_id, child_env, cli, fetch, merge, operator, ops_types, run
from .test_cli import start_at as start_work_at
from .test_retry_cancel import make_failed


def test_jobs_retry_by_id_is_all_or_nothing(db: Db) -> None:
    for n in (1, 2, 3):
        start_work_at(db, T0, app.work, {"n": n, "sleep": 0}, id=chain_id(n))
    make_failed(db, chain_id(1), attempt=3)
    make_failed(db, chain_id(2), attempt=1)

    retried = operator("jobs", "retry", str(chain_id(1)), db=db)

    assert retried.exit_code == 0, retried.output
    (line,) = retried.stdout.splitlines()
    assert line.startswith(
        f"retried job {chain_id(1)} (work#0 of chain {chain_id(1)}, 3 attempts so far): "
        "pending, due "
    )
    client = q.Queuert(db.engine, app.job_types)
    assert client.get_job(chain_id(1)).status == "pending"

    refused = operator("jobs", "retry", str(chain_id(2)), str(chain_id(3)), db=db)
    assert refused.exit_code == 1
    assert f"Job {chain_id(3)} is pending, so it cannot be retried" in refused.stderr
    assert refused.stderr.rstrip().endswith("Nothing was retried.")
    assert client.get_job(chain_id(2)).status == "failed"  # rolled back with the refusal

    data = json.loads(operator("jobs", "retry", str(chain_id(2)), "--json", db=db).stdout)
    assert [(job["id"], job["status"], job["attempt"]) for job in data["retried"]] == [
        (str(chain_id(2)), "pending", 1)
    ]


def test_jobs_retry_in_bulk(db: Db) -> None:
    now = dt.datetime.now(dt.UTC)
    for n in (1, 2, 3):
        start_work_at(db, T0, app.work, {"n": n, "sleep": 0}, id=chain_id(n))
    start_work_at(db, T0, app.staged_work, {"n": 4, "sleep": 0}, id=chain_id(4))
    make_failed(db, chain_id(1), at=now - dt.timedelta(days=3))
    for n in (2, 3, 4):
        make_failed(db, chain_id(n), at=now - dt.timedelta(minutes=10))

    recent = operator("jobs", "retry", "--type", "work", "--failed-since", "1h", db=db)
    assert recent.exit_code == 0, recent.output
    assert recent.stdout == "retried 2 failed jobs\n"
    one = operator("jobs", "retry", "--all", "--limit", "1", db=db)
    assert one.stdout == "retried 1 failed job\n"
    rest = operator("jobs", "retry", "--all", "--json", db=db)
    assert json.loads(rest.stdout) == {"retried": 1}
    assert operator("jobs", "retry", "--all", db=db).stdout == "retried 0 failed jobs\n"
    listed = json.loads(operator("chains", "list", "--json", "--status", "failed", db=db).stdout)
    assert listed["chains"] == []


def test_jobs_retry_usage_errors(db: Db) -> None:
    nothing = operator("jobs", "retry", db=db)
    assert nothing.exit_code == 2
    assert "give the IDs of failed jobs, or select them with --type" in nothing.stderr
    both = operator("jobs", "retry", str(chain_id(1)), "--all", db=db)
    assert both.exit_code == 2
    assert "give job IDs or the bulk options" in both.stderr
    bad = operator("jobs", "retry", "--failed-since", "yesterday", db=db)
    assert bad.exit_code == 2
    assert "Invalid value for '--failed-since'" in bad.stderr


def test_chains_cancel_prints_what_it_did_and_what_stays_blocked(db: Db) -> None:
    client = q.Queuert(db.engine, ops_types, clock=Clock(T0))
    with Session(db.engine) as session, session.begin():
        a = client.start_chain(session, fetch, {"source": "a"}, id=chain_id(1))
        client.start_chain(session, merge, {"title": "m"}, blockers=[a], id=chain_id(2))
        client.start_chain(session, fetch, {"source": "done"}, id=chain_id(3))
    with Session(db.engine) as session, session.begin():
        client.complete_chain(session, chain_id(3), fetch, lambda c: c.complete({"rows": 0}))

    first = operator("chains", "cancel", str(chain_id(1)), "--reason", "bad source", db=db)

    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == [
        f"cancelled chain {chain_id(1)}",
        f"1 job of another chain stays blocked on it (queuert-sa chain show {chain_id(1)} lists "
        "them; --cascade cancels their chains)",
    ]
    shown = operator("chain", "show", str(chain_id(1)), db=db).stdout.splitlines()
    assert shown[2:4] == ["  status     cancelled", "  reason     bad source"]
    assert shown[-1] == (
        f"1 dependent stays blocked until this chain completes; cancel them too "
        f"(queuert-sa chains cancel {chain_id(1)} --cascade)."
    )

    cascade = operator("chains", "cancel", str(chain_id(1)), "--cascade", "--json", db=db)
    data = json.loads(cascade.stdout)
    assert data["cancelled"] == [str(chain_id(2))]
    assert (data["chain"]["status"], data["still_blocked"]) == ("cancelled", [])
    again = operator("chains", "cancel", str(chain_id(1)), db=db)
    assert again.stdout == f"chain {chain_id(1)} was cancelled already\n"
    done = operator("chains", "cancel", str(chain_id(3)), db=db)
    assert done.stdout == f"chain {chain_id(3)} is completed: nothing to cancel\n"

    listed = operator("chains", "list", "--status", "cancelled", "--asc", db=db)
    rows = [line.split()[:3] for line in listed.stdout.splitlines()[1:]]
    assert rows == [
        [str(chain_id(1)), "fetch", "cancelled"],
        [str(chain_id(2)), "merge", "cancelled"],
    ]

    missing = operator("chains", "cancel", str(chain_id(99)), db=db)
    assert missing.exit_code == 1
    assert f"no chain {chain_id(99)} in " in missing.stderr


def test_chain_show_of_a_failed_chain_gives_its_error_and_the_way_out(db: Db) -> None:
    client = q.Queuert(db.engine, ops_types, clock=Clock(T0))
    with Session(db.engine) as session, session.begin():
        a = client.start_chain(session, fetch, {"source": "a"}, id=chain_id(1))
        client.start_chain(session, merge, {"title": "m"}, blockers=[a], id=chain_id(2))
    make_failed(db, chain_id(1), error="Traceback (most recent call last):\nValueError: bad source")

    shown = operator("chain", "show", str(chain_id(1)), db=db)

    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[2:4] == ["  status     failed", "  error      ValueError: bad source"]
    assert lines[-1] == (
        f"1 dependent stays blocked until this chain completes; retry it (queuert-sa jobs "
        f"retry {chain_id(1)}), or cancel them too (queuert-sa chains cancel {chain_id(1)} "
        "--cascade)."
    )
    data = json.loads(operator("chain", "show", str(chain_id(1)), "--json", db=db).stdout)
    assert data["stuck_dependents"] == [str(chain_id(2))]
    failed = operator("chains", "list", "--status", "failed", db=db).stdout.splitlines()
    assert [line.split()[:3] for line in failed[1:]] == [[str(chain_id(1)), "fetch", "failed"]]


def test_chains_cancel_through_the_console_script(db: Db) -> None:
    start_work_at(db, T0, app.work, {"n": 1, "sleep": 0}, id=chain_id(1))

    result = run(
        cli("chains", "cancel", str(chain_id(1)), "--reason", "ops"),
        env=child_env(QUEUERT_DATABASE_URL=db.url),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"cancelled chain {chain_id(1)}\n"
    assert q.Queuert(db.engine, app.job_types).get_job(chain_id(1)).cancel_reason == "ops"
