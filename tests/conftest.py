"""Fixtures: real PostgreSQL and real SQLite, never a mocked database.

Environment variables:

* ``QUEUERT_TEST_POSTGRES_URL`` - an admin URL of a PostgreSQL server; the
  suite creates (and drops) its own database there. Defaults to
  ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
* ``QUEUERT_TEST_REQUIRE_SERVICES=1`` - a service that is down fails the tests
  that need it instead of skipping them (set by ``.ci/run``).
* ``QUEUERT_TEST_DRIVER_CURSOR=0`` - no driver gets the ``driver_cursor``
  capability, so every statement goes through SQLAlchemy (the path asyncio and
  other drivers take). Applies to this process; the subprocesses some tests
  start keep the default.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

import queuert_sa as q
from queuert_sa.state import capabilities

from . import app, workers

POSTGRES_URL = os.environ.get(
    "QUEUERT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("QUEUERT_TEST_REQUIRE_SERVICES", "") not in ("", "0")
DRIVER_CURSOR = os.environ.get("QUEUERT_TEST_DRIVER_CURSOR", "") != "0"


def pytest_configure(config: pytest.Config) -> None:
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background by a script (``cmd &``): SIGINT arrives
        # ignored, and every process the tests spawn would inherit that, so an
        # example stopped "with Ctrl+C" would never stop. Python's own handler
        # here; the children then start with the default.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not DRIVER_CURSOR:
        # Before any engine resolves its capabilities (they are kept per dialect).
        capabilities.DRIVER_CURSOR = {}


def pytest_report_header(config: pytest.Config) -> str:
    return f"queuert driver cursor: {'on' if DRIVER_CURSOR else 'off (SQLAlchemy only)'}"


#: Tests asserting what only the driver cursor path does (skipped without it).
_DRIVER_CURSOR_ONLY = frozenset(
    {
        # It prepares the worker's statements at their first run; SQLAlchemy
        # leaves that to psycopg's threshold (five runs).
        "tests/test_worker.py::test_prepared_statements_follow_the_drivers_setting[default]",
        # aiosqlite's hot statements in one call to its thread.
        "tests/test_driver.py::test_aiosqlite_statements_run_on_the_driver_path_and_fail_as_sqlalchemys",
        "tests/test_driver.py::test_psycopg_async_statements_run_on_the_driver_path_and_fail_as_sqlalchemys",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if DRIVER_CURSOR:
        return
    skip = pytest.mark.skip(reason="asserts the driver cursor path (QUEUERT_TEST_DRIVER_CURSOR=0)")
    for item in items:
        if item.nodeid in _DRIVER_CURSOR_ONLY:
            item.add_marker(skip)


def service_unavailable(what: str, reason: str) -> None:
    """Skip (developer laptop) or fail (CI) when a service is down."""
    message = f"{what} unavailable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (QUEUERT_TEST_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(message)


@dataclass
class Db:
    """A database under test."""

    kind: str
    url: str
    engine: Engine


_pg_state: dict[str, object] = {}


def _postgres_database() -> str:
    """URL of a fresh database for this test run (created once, dropped at exit)."""
    if "url" in _pg_state:
        return str(_pg_state["url"])
    if "error" in _pg_state:
        service_unavailable("PostgreSQL", str(_pg_state["error"]))
    admin_url = make_url(POSTGRES_URL)
    name = f"queuert_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        _pg_state["error"] = exc
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    _pg_state["url"] = url
    _pg_state["name"] = name
    engine = create_engine(url)
    q.metadata.create_all(engine)
    app.Base.metadata.create_all(engine)
    engine.dispose()
    return url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    name = _pg_state.get("name")
    if name:
        admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate(engine: Engine) -> None:
    tables = [*q.metadata.sorted_tables, *app.Base.metadata.sorted_tables]
    names = ", ".join(f'"{t.name}"' for t in tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


def make_db(kind: str, tmp_path: Path) -> Db:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'queuert.db'}"
        engine = create_engine(url)
        q.prepare_engine(engine)
        q.metadata.create_all(engine)
        app.Base.metadata.create_all(engine)
        return Db(kind, url, engine)
    url = _postgres_database()
    engine = create_engine(url, pool_size=10, max_overflow=10)
    _truncate(engine)
    return Db(kind, url, engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """Each test using it runs on SQLite and on PostgreSQL."""
    database = make_db(request.param, tmp_path)
    yield database
    database.engine.dispose()


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Db]:
    """PostgreSQL only."""
    database = make_db("postgresql", tmp_path)
    yield database
    database.engine.dispose()


@pytest.fixture
def notify() -> q.InMemoryNotify:
    return q.InMemoryNotify()


@pytest.fixture
def client(db: Db, notify: q.InMemoryNotify) -> q.Queuert:
    return q.Queuert(db.engine, app.job_types, notify=notify)


# --- Redis (notify adapters) ---------------------------------------------------
# ``QUEUERT_TEST_REDIS_URL`` - a Redis server for the notify tests. Defaults to
# ``redis://127.0.0.1:6379/0``. Tests use their own channel names; no keys are written.

REDIS_URL = os.environ.get("QUEUERT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server; skips (or fails, in CI) when it is down."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", f"{REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


# --- both workers: the kit of tests/workers.py -----------------------------------------


@pytest.fixture(params=workers.KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The worker under test: ``"thread"`` (``Worker``) or ``"async"`` (``AsyncWorker``)."""
    return str(request.param)


@pytest.fixture
def kit(kind: str, db: Db, notify: q.InMemoryNotify) -> Iterator[workers.Kit]:
    """A worker kind on a database: each test using it runs on both workers and both engines."""
    with workers.open_kit(kind, db, notify) as opened:
        yield opened


@pytest.fixture
def pg_kit(kind: str, pg: Db, notify: q.InMemoryNotify) -> Iterator[workers.Kit]:
    """A worker kind on PostgreSQL only."""
    with workers.open_kit(kind, pg, notify) as opened:
        yield opened


# --- NATS (notify adapter) -------------------------------------------------------------
# ``QUEUERT_TEST_NATS_URL`` - a NATS server with JetStream for the notify tests. Defaults
# to ``nats://127.0.0.1:4222``. Tests use their own subjects; wake-hint tests write keys
# of their own prefix in the bucket ``queuert_wake_hints``.

NATS_URL = os.environ.get("QUEUERT_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of a reachable NATS server; skips (or fails, in CI) when it is down."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(NATS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 2) as s:
            s.settimeout(2)
            greeting = s.recv(4096)
    except OSError as exc:
        service_unavailable("NATS", f"{NATS_URL}: {exc}")
    if not greeting.startswith(b"INFO"):
        service_unavailable("NATS", f"{NATS_URL}: not a NATS server ({greeting[:40]!r})")
    return NATS_URL
