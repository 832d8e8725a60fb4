"""``queuert-sa jobs list``, ``jobs trigger`` and ``cleanup --dry-run``, on both engines.

Each command's main path runs as a subprocess (the installed console script);
the filter combinations run in-process through click's ``CliRunner``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job as JobRow

from . import app
from .conftest import Db
from .test_cli import (
    T0,
    Clock,
    chain_id,
    cli,
    complete_at,
    fetch,
    merge,
    operator,
    ops_types,
    run,
    some_chains,
    start_at,
)
from .test_retry_cancel import make_failed


def queuert_sa(db: Db, *args: str) -> tuple[int, str, str]:
    """``queuert-sa args... --db URL`` as a subprocess: (exit code, stdout, stderr)."""
    done = run(cli(*args, "--db", db.url))
    return done.returncode, done.stdout, done.stderr


def greet_id(db: Db) -> uuid.UUID:
    """The id of ``some_chains``' continuation (signup #2 moved on to greet#1)."""
    return q.Queuert(db.engine, app.job_types).get_chain(chain_id(2)).current_job_id


def job_count(db: Db) -> int:
    with Session(db.engine) as session:
        return session.execute(select(func.count()).select_from(JobRow)).scalar_one()


# --- jobs list ------------------------------------------------------------------------------


def test_jobs_list_prints_every_step_of_every_chain_newest_first(db: Db) -> None:
    some_chains(db)
    greet = greet_id(db)

    code, out, err = queuert_sa(db, "jobs", "list")

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "ID                                    TYPE    STATUS     CHAIN                                 STEP      ATTEMPTS  SCHEDULED (UTC)      COMPLETED (UTC)",
        f"00000000-0000-7000-8000-000000000003  work    pending    {chain_id(3)}  work#0    0         2026-01-02 03:06:05  -",
        f"{greet}  greet   pending    {chain_id(2)}  signup#1  0         2026-01-02 03:05:05  -",
        f"00000000-0000-7000-8000-000000000002  signup  completed  {chain_id(2)}  signup#0  0         2026-01-02 03:05:05  2026-01-02 03:05:05",
        f"00000000-0000-7000-8000-000000000001  work    completed  {chain_id(1)}  work#0    0         2026-01-02 03:04:05  2026-01-02 03:09:05",
    ]

    code, out, err = queuert_sa(db, "jobs", "list", "--json", "--chain", str(chain_id(2)))
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert [(j["id"], j["type_name"], j["chain_index"]) for j in data["jobs"]] == [
        (str(greet), "greet", 1),
        (str(chain_id(2)), "signup", 0),
    ]
    assert data["jobs"][0]["input"] == {"user_id": 7}
    assert data["jobs"][0]["scheduled_at"] == "2026-01-02T03:05:05.678000+00:00"
    assert data["next_cursor"] is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--type", "work"], ["w3", "w1"]),
        (["--type", "greet", "--type", "signup", "--asc"], ["s2", "g2"]),
        (["--chain-type", "signup"], ["g2", "s2"]),
        (["--status", "completed"], ["s2", "w1"]),
        (["--status", "pending", "--chain-type", "work"], ["w3"]),
        (["--chain", str(chain_id(1)), "--chain", str(chain_id(3))], ["w3", "w1"]),
        (["--since", "2026-01-02T03:05:05Z"], ["w3", "g2", "s2"]),
        (["--before", "2026-01-02 03:05:05"], ["w1"]),
        (["--since", "1h"], []),
        (["--type", "no-such-type"], []),
    ],
)
def test_jobs_list_filters(db: Db, options: list[str], expected: list[str]) -> None:
    some_chains(db)
    names = {
        "w1": chain_id(1),
        "s2": chain_id(2),
        "g2": greet_id(db),
        "w3": chain_id(3),
    }

    result = operator("jobs", "list", *options, db=db)

    assert result.exit_code == 0, result.output
    if not expected:
        assert result.stdout == "no jobs found\n"
    else:
        listed = [line.split()[0] for line in result.stdout.splitlines()[1:]]
        assert listed == [str(names[n]) for n in expected]


def test_jobs_list_pages_through_the_printed_cursor(db: Db) -> None:
    for n in range(1, 6):
        start_at(db, T0 + dt.timedelta(seconds=n), app.work, {"n": n, "sleep": 0}, id=chain_id(n))

    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(5):
        result = operator("jobs", "list", "--limit", "2", "--asc", *cursor, db=db)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        last = lines[-1].startswith("next page: ")
        seen += [line.split()[0] for line in lines[1 : -1 if last else None]]
        if not last:
            break
        cursor = lines[-1].removeprefix("next page: ").split()
    assert seen == [str(chain_id(n)) for n in range(1, 6)]

    bad = operator("jobs", "list", "--status", "asleep", db=db)
    assert bad.exit_code == 2
    assert "Invalid value for '--status'" in bad.stderr
    chains_cursor = json.loads(operator("chains", "list", "--json", "--limit", "1", db=db).stdout)
    other = operator("jobs", "list", "--cursor", chains_cursor["next_cursor"], db=db)
    assert other.exit_code == 2
    assert "Invalid value for '--cursor'" in other.stderr


# --- jobs trigger ---------------------------------------------------------------------------


def test_jobs_trigger_is_all_or_nothing_and_lists_every_id_it_cannot_trigger(db: Db) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    for n in (1, 2, 3):
        start_at(db, later, app.work, {"n": n, "sleep": 0}, id=chain_id(n))
    make_failed(db, chain_id(3))
    unknown = uuid.uuid4()

    code, out, err = queuert_sa(
        db, "jobs", "trigger", str(chain_id(1)), str(unknown), str(chain_id(3))
    )
    assert (code, out) == (1, "")
    assert "2 not found" not in err
    assert f"1 not found ({unknown})" in err
    assert f"1 not pending ({chain_id(3)} is failed)" in err
    assert "Nothing was triggered" in err
    client = q.Queuert(db.engine, app.job_types)
    assert client.get_job(chain_id(1)).scheduled_at > dt.datetime.now(dt.UTC)

    code, out, err = queuert_sa(db, "jobs", "trigger", str(chain_id(1)), str(chain_id(2)))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"triggered job {chain_id(1)}",
        f"triggered job {chain_id(2)}",
    ]
    assert lines[0].startswith(f"triggered job {chain_id(1)} (work#0 of chain {chain_id(1)}): due ")
    now = dt.datetime.now(dt.UTC)
    assert {client.get_job(chain_id(n)).scheduled_at <= now for n in (1, 2)} == {True}

    again = json.loads(operator("jobs", "trigger", str(chain_id(2)), "--json", db=db).stdout)
    assert [(j["id"], j["status"]) for j in again["triggered"]] == [(str(chain_id(2)), "pending")]
    assert operator("jobs", "trigger", db=db).exit_code == 2  # an ID is required


# --- cleanup --dry-run ----------------------------------------------------------------------


def test_cleanup_dry_run_counts_what_would_go_by_type_and_deletes_nothing(db: Db) -> None:
    now = dt.datetime.now(dt.UTC)
    month_ago, hour_ago = now - dt.timedelta(days=30), now - dt.timedelta(hours=1)
    for n, job_type in ((1, app.work), (2, app.work), (3, app.staged_work)):
        start_at(db, month_ago, job_type, {"n": n, "sleep": 0}, id=chain_id(n))
        complete_at(db, month_ago, job_type, chain_id(n))
    signup = start_at(db, month_ago, app.signup, {"user_id": 7}, id=chain_id(4))
    with Session(db.engine) as session, session.begin():  # two jobs: signup, then greet
        signup.complete_chain(
            session, chain_id(4), app.signup, lambda c: c.continue_with(app.greet, {"user_id": 7})
        )
    with Session(db.engine) as session, session.begin():
        signup.complete_chain(
            session, chain_id(4), app.signup, lambda c: c.complete({"greeting": "hi"})
        )
    start_at(db, month_ago, app.work, {"n": 5, "sleep": 0}, id=chain_id(5))  # still open
    start_at(db, hour_ago, app.work, {"n": 6, "sleep": 0}, id=chain_id(6))
    complete_at(db, hour_ago, app.work, chain_id(6))  # completed recently
    jobs_before = job_count(db)

    code, out, err = queuert_sa(db, "cleanup", "--older-than", "7d", "--dry-run")

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "would delete 4 chains (5 jobs) completed more than 7d ago; nothing was deleted "
        "(--dry-run)",
        "CHAIN TYPE   CHAINS  JOBS",
        "signup       1       2",
        "staged-work  1       1",
        "work         2       2",
    ]
    assert job_count(db) == jobs_before

    code, out, err = queuert_sa(
        db, "cleanup", "--older-than", "7d", "--dry-run", "--json", "--batch-size", "1"
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "dry_run": True,
        "chains": 4,
        "jobs": 5,
        "by_type": {
            "signup": {"chains": 1, "jobs": 2},
            "staged-work": {"chains": 1, "jobs": 1},
            "work": {"chains": 2, "jobs": 2},
        },
    }
    assert job_count(db) == jobs_before

    only = json.loads(
        operator(
            "cleanup", "--older-than", "7d", "--type", "work", "--dry-run", "--json", db=db
        ).stdout
    )
    assert (only["chains"], only["by_type"]) == (2, {"work": {"chains": 2, "jobs": 2}})
    # What the dry run counted is what a real run deletes.
    deleted = json.loads(operator("cleanup", "--older-than", "7d", "--json", db=db).stdout)
    assert deleted == {"deleted": 4}
    assert job_count(db) == jobs_before - 5
    none = operator("cleanup", "--older-than", "7d", "--dry-run", db=db)
    assert none.stdout == (
        "would delete 0 chains (0 jobs) completed more than 7d ago; nothing was deleted "
        "(--dry-run)\n"
    )


def test_preview_cleanup_keeps_blockers_a_kept_chain_still_needs(db: Db) -> None:
    """The library call behind --dry-run, on both clients' sync path: same rules as cleanup."""
    month_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    client = q.Queuert(db.engine, ops_types, clock=Clock(month_ago))
    with Session(db.engine) as session, session.begin():
        a = client.start_chain(session, fetch, {"source": "a"}, id=chain_id(1))
        client.start_chain(session, fetch, {"source": "b"}, id=chain_id(2))
        client.start_chain(session, merge, {"title": "m"}, blockers=[a], id=chain_id(3))
    for n in (1, 2):
        with Session(db.engine) as session, session.begin():
            client.complete_chain(session, chain_id(n), fetch, lambda c: c.complete({"rows": 1}))

    preview = q.Queuert(db.engine, ops_types).preview_cleanup(older_than=dt.timedelta(days=7))

    # ``a`` is kept: the open merge chain declares it as a blocker.
    assert preview == q.CleanupPreview(chains=1, jobs=1, by_type={"fetch": (1, 1)})
    assert q.Queuert(db.engine, ops_types).cleanup(older_than=dt.timedelta(days=7)) == 1
