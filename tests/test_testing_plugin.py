"""The pytest plugin ``queuert_sa.testing``, used as a user uses it (pytester), on both engines.

The user's test files below run in a pytest of their own (a subprocess), with
the plugin loaded by its ``pytest11`` entry point only. This machine has no
Docker engine: the container path is covered by its decision
(:func:`choose_source`) and by the skip that names what to set.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from pathlib import Path

# pytester restores sys.modules after each of its tests: a driver first imported
# during one would come back as a second copy of its classes in later tests
# (psycopg's errors would no longer be the ones SQLAlchemy's dialect catches).
import psycopg  # noqa: F401
import pytest
import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401
from sqlalchemy import create_engine, text

from queuert_sa.testing import FrozenClock, Source, choose_source, docker_problem

from .conftest import POSTGRES_URL, service_unavailable

pytest_plugins = ["pytester"]

#: A user's test module: job types, a table of their own, and the plugin's fixtures.
USER_TESTS = """
import asyncio
import datetime as dt
from typing import TypedDict

import pytest
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "user_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[str | None] = mapped_column(String(64))


class OrderIn(TypedDict):
    order_id: int


job_types = q.JobTypes()
charge = job_types.entry("charge-order", input=OrderIn, continues_with=["send-receipt"])
receipt = job_types.define("send-receipt", input=OrderIn)


@pytest.fixture(scope="session")
def queuert_metadata():
    return [q.metadata, Base.metadata]


def build_worker(queuert, flaky=None):
    worker = queuert.worker()

    @worker.handler(charge)
    def charge_order(attempt):
        if flaky is not None and flaky.pop():
            raise ConnectionError("the payment provider is down")
        order = attempt.session.get_one(Order, attempt.input["order_id"])
        order.payment_id = "pay-1"
        return attempt.continue_with(receipt, {"order_id": order.id})

    @worker.handler(receipt)
    def send_receipt(attempt):
        return attempt.complete({"sent": True})

    return worker


def start(queuert, engine):
    with Session(engine) as s, s.begin():
        s.add(Order(id=1))
        s.flush()
        return queuert.start_chain(s, charge, {"order_id": 1})


def test_a_chain_runs_to_completion(
    queuert_database, queuert_engine, queuert_clock, queuert_notify, queuert_observer, queuert_drain
):
    print("DATABASE", queuert_database.kind, queuert_database.url.database)
    queuert = q.Queuert(
        queuert_engine,
        job_types,
        clock=queuert_clock,
        notify=queuert_notify,
        observers=[queuert_observer],
    )
    chain = start(queuert, queuert_engine)
    assert queuert_drain(build_worker(queuert)) == 2
    assert queuert.get_chain(chain.id).output == {"sent": True}
    assert [e.type_name for e in queuert_notify.of("job_scheduled")] == [
        "charge-order",
        "send-receipt",
    ]
    assert [e["job"].type_name for e in queuert_observer.of("job_completed")] == [
        "charge-order",
        "send-receipt",
    ]


def test_each_test_has_an_empty_database(queuert_engine):
    with Session(queuert_engine) as s:
        assert s.query(Order).count() == 0


def test_a_retry_is_due_once_the_clock_moves(queuert_engine, queuert_clock, queuert_drain):
    queuert = q.Queuert(queuert_engine, job_types, clock=queuert_clock)
    chain = start(queuert, queuert_engine)
    worker = build_worker(queuert, flaky=[False, True])
    assert queuert_drain(worker, failures_allowed=True) == 1
    assert queuert_drain(worker) == 0  # the retry is not due yet
    queuert_clock.advance(dt.timedelta(hours=1))
    assert queuert_drain(worker) == 2
    assert queuert.get_chain(chain.id).status == "completed"


def test_the_async_worker_drains_too(queuert_database, queuert_drain):
    async def scenario():
        engine = create_async_engine(queuert_database.async_url)
        try:
            aqueuert = q.AsyncQueuert(engine, job_types)
            worker = aqueuert.worker()

            @worker.handler(charge)
            async def charge_order(attempt):
                return attempt.continue_with(receipt, {"order_id": attempt.input["order_id"]})

            @worker.handler(receipt)
            async def send_receipt(attempt):
                return attempt.complete({"sent": True})

            async with AsyncSession(engine) as s, s.begin():
                chain = await aqueuert.start_chain(s, charge, {"order_id": 7})
            assert await queuert_drain.run_async(worker) == 2
            return (await aqueuert.get_chain(chain.id)).status
        finally:
            await engine.dispose()

    assert asyncio.run(scenario()) == "completed"
"""

FAILING_HANDLER = """
import queuert_sa as q
from sqlalchemy.orm import Session

job_types = q.JobTypes()
charge = job_types.entry("charge-order", input=dict)


def test_a_handler_that_raises(queuert_engine, queuert_drain):
    queuert = q.Queuert(queuert_engine, job_types)
    worker = queuert.worker()

    @worker.handler(charge)
    def charge_order(attempt):
        raise KeyError("order_id")

    with Session(queuert_engine) as s, s.begin():
        queuert.start_chain(s, charge, {})
    queuert_drain(worker)
"""

NEEDS_POSTGRES = """
def test_on_postgres(queuert_postgres):
    assert queuert_postgres.kind == "postgresql"
"""


def _database_names(server_url: str) -> set[str]:
    engine = create_engine(server_url)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT datname FROM pg_database")))
    finally:
        engine.dispose()


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A user's environment: none of the plugin's variables set, no Docker engine."""
    for name in (
        "QUEUERT_DATABASE_URL",
        "QUEUERT_REDIS_URL",
        "QUEUERT_NATS_URL",
        "QUEUERT_TEST_REQUIRE_SERVICES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    return monkeypatch


def test_user_tests_run_on_sqlite_by_default(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*DATABASE sqlite *queuert.db*"])


def test_user_tests_run_on_a_postgresql_scratch_database(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    try:
        before = _database_names(POSTGRES_URL)
    except Exception as exc:
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    pytester.makepyfile(test_user=USER_TESTS)
    user_env.setenv("QUEUERT_DATABASE_URL", POSTGRES_URL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=4)
    found = re.findall(r"DATABASE postgresql (\S+)", result.stdout.str())
    assert len(found) == 1, result.stdout.str()
    scratch = found[0]
    assert scratch.startswith("queuert_test_")
    # made for the session, dropped at its end; the URL's own database untouched
    assert scratch not in _database_names(POSTGRES_URL)
    assert scratch not in before


def test_the_option_wins_over_the_environment(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    try:
        _database_names(POSTGRES_URL)
    except Exception as exc:
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    pytester.makepyfile(test_user=USER_TESTS)
    user_env.setenv("QUEUERT_DATABASE_URL", "sqlite:///ignored.db")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", f"--queuert-db={POSTGRES_URL}", "-k", "completion"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DATABASE postgresql queuert_test_*"])


def test_a_failed_attempt_fails_the_drain_with_the_workers_message(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_user=FAILING_HANDLER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 attempt(s) failed while draining:",
            "*WARNING queuert_sa.worker: job * (charge-order) attempt 1 failed*KeyError('order_id')*",
            "*Pass failures_allowed=True to queuert_drain() when the test expects failures.",
        ]
    )


def test_without_a_server_or_docker_postgres_tests_skip_saying_what_to_set(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_user=NEEDS_POSTGRES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*no postgresql server given and no Docker engine to start one "
            "(unix:///nonexistent/docker.sock: *): set QUEUERT_DATABASE_URL (or --queuert-db)*"
        ]
    )
    user_env.setenv("QUEUERT_TEST_REQUIRE_SERVICES", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*QUEUERT_TEST_REQUIRE_SERVICES is set*"])


def test_an_unreachable_server_given_is_an_error_not_a_skip(
    pytester: pytest.Pytester, user_env: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytester.makepyfile(test_user=NEEDS_POSTGRES)
    user_env.setenv("QUEUERT_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*could not create a scratch database on postgresql+psycopg://postgres@127.0.0.1:*"]
    )


# --- where a service comes from: the decision, without Docker ---------------------------


def _docker_fine() -> str | None:
    return None


def _no_docker() -> str | None:
    return "unix:///var/run/docker.sock: No such file or directory"


def _must_not_ask() -> str | None:
    raise AssertionError("Docker is not asked when a URL is given")


def test_a_url_given_wins_over_docker() -> None:
    url = "postgresql+psycopg://app@db/app"
    source = choose_source(
        "postgresql", url, docker_problem=_must_not_ask, testcontainers_installed=True
    )
    assert source == Source("url", url=url)


def test_a_sqlite_url_is_no_postgresql_server() -> None:
    source = choose_source(
        "postgresql", "sqlite:///t.db", docker_problem=_docker_fine, testcontainers_installed=True
    )
    assert source.kind == "unavailable"
    assert source.reason is not None
    assert source.reason.startswith("QUEUERT_DATABASE_URL names sqlite, not PostgreSQL")


@pytest.mark.parametrize(
    ("service", "env", "option"),
    [
        ("postgresql", "QUEUERT_DATABASE_URL", "--queuert-db"),
        ("redis", "QUEUERT_REDIS_URL", "--queuert-redis"),
        ("nats", "QUEUERT_NATS_URL", "--queuert-nats"),
    ],
)
def test_without_a_url_docker_decides(service: str, env: str, option: str) -> None:
    started = choose_source(
        service,  # type: ignore[arg-type]
        None,
        docker_problem=_docker_fine,
        testcontainers_installed=True,
    )
    assert started == Source("container")
    no_docker = choose_source(
        service,  # type: ignore[arg-type]
        None,
        docker_problem=_no_docker,
        testcontainers_installed=True,
    )
    assert no_docker.kind == "unavailable"
    assert f"set {env} (or {option}) to one, e.g. {env}=" in str(no_docker.reason)
    assert "No such file or directory" in str(no_docker.reason)
    not_installed = choose_source(
        service,  # type: ignore[arg-type]
        None,
        docker_problem=_docker_fine,
        testcontainers_installed=False,
    )
    assert "pip install 'queuert_sa[testing]'" in str(not_installed.reason)


def test_docker_problem_says_where_it_looked(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path / 'docker.sock'}"
    assert str(docker_problem(missing)).startswith(f"{missing}: ")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    assert str(docker_problem(closed)).startswith(f"{closed}: ")
    assert "neither unix:// nor tcp://" in str(docker_problem("ssh://host"))


# --- the clock ---------------------------------------------------------------------------


def test_the_frozen_clock_stands_still_until_moved() -> None:
    clock = FrozenClock()
    first = clock()
    assert clock() == first == dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC)
    assert clock.advance(30) == first + dt.timedelta(seconds=30)
    assert clock.advance(dt.timedelta(minutes=1)) == first + dt.timedelta(seconds=90)
    clock.set(first)
    assert clock() == first
    with pytest.raises(ValueError, match="use set"):
        clock.advance(-1)
    with pytest.raises(TypeError, match="a timedelta or a number of seconds"):
        clock.advance("1s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware datetime"):
        FrozenClock(dt.datetime(2030, 1, 1))


def test_an_advancing_clock_moves_at_each_reading() -> None:
    clock = FrozenClock(step=0.5)
    assert clock() + dt.timedelta(seconds=0.5) == clock()
