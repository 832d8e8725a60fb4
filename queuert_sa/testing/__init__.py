"""queuert_sa's pytest plugin: throwaway databases, a clock to move, recorders, ``drain``.

Installed with queuert_sa and registered as the ``pytest11`` entry point
``queuert_sa``: its fixtures are there in every test, and cost nothing until
a test asks for one. Fixtures:

* ``queuert_database`` / ``queuert_engine``: a database of its own per test,
  with the tables of ``queuert_metadata`` (override that session fixture to add
  your application's tables). SQLite, a fresh file per test, unless
  ``--queuert-db`` / ``QUEUERT_DATABASE_URL`` names a PostgreSQL server: then a
  scratch database created on that server for the session (and dropped at its
  end), its tables emptied before each test.
* ``queuert_postgres``: the same on PostgreSQL always: the server given, or,
  with none given, one started in Docker by ``testcontainers`` (the
  ``testing`` extra); without either the test is skipped with what to set
  (failed when ``QUEUERT_TEST_REQUIRE_SERVICES=1``).
* ``queuert_redis_url`` / ``queuert_nats_url``: a Redis / NATS server, given
  (``--queuert-redis`` / ``QUEUERT_REDIS_URL``, ``--queuert-nats`` /
  ``QUEUERT_NATS_URL``) or started in Docker, as for PostgreSQL.
* ``queuert_clock``: a :class:`FrozenClock` to pass as ``clock=``.
* ``queuert_notify``: a :class:`RecordingNotify` to pass as ``notify=``.
* ``queuert_observer``: a :class:`~queuert_sa.observers.RecordingObserver`.
* ``queuert_drain``: :class:`Drain`, runs due jobs in the test's thread.

The plugin never writes to the database a URL names: it only connects to it
to create (and later drop) its scratch database next to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import pytest
from sqlalchemy import Engine, MetaData, create_engine, make_url, text
from sqlalchemy.engine import URL

import queuert_sa as q
from queuert_sa.observers import RecordingObserver

from ._drain import Drain
from ._recording import DEFAULT_START, FrozenClock, NotifyEvent, RecordingNotify
from ._services import (
    SETTINGS,
    Service,
    Source,
    async_url,
    choose_source,
    create_scratch_database,
    docker_problem,
    drop_scratch_database,
    require_services,
    start_container,
    testcontainers_installed,
)

__all__ = [
    "DEFAULT_START",
    "Drain",
    "FrozenClock",
    "NotifyEvent",
    "RecordingNotify",
    "RecordingObserver",
    "ScratchDatabase",
    "Source",
    "choose_source",
    "docker_problem",
]


@dataclass(frozen=True)
class ScratchDatabase:
    """A database that exists for one test (the ``queuert_database`` fixtures)."""

    kind: Literal["sqlite", "postgresql"]
    url: URL
    """Its URL, password included (``url.render_as_string(hide_password=False)``)."""
    engine: Engine
    """A sync engine on it, disposed after the test."""

    @property
    def async_url(self) -> URL:
        """The same database through an asyncio driver, for ``create_async_engine``."""
        return async_url(self.url)


UNSET_HELP = {"postgresql": "unset: queuert_database is SQLite, queuert_postgres "}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("queuert", "queuert_sa's fixtures")
    for service, (env, option) in SETTINGS.items():
        group.addoption(
            option,
            dest=option.lstrip("-").replace("-", "_"),
            metavar="URL",
            default=None,
            help=f"URL of the {service} server for queuert_sa's fixtures (default: ${env}; "
            + UNSET_HELP.get(service, "unset: ")
            + "a Docker container when Docker is reachable).",
        )


def given_url(config: pytest.Config, service: Service) -> str | None:
    """The URL given for ``service``: its option, else its environment variable, else None."""
    env, option = SETTINGS[service]
    value = config.getoption(option.lstrip("-").replace("-", "_"), default=None)
    return str(value or os.environ.get(env) or "") or None


def _unavailable(reason: str) -> NoReturn:
    if require_services():
        pytest.fail(f"{reason} (QUEUERT_TEST_REQUIRE_SERVICES is set)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def _server(config: pytest.Config, service: Service) -> Generator[str]:
    source = choose_source(
        service,
        given_url(config, service),
        docker_problem=docker_problem,
        testcontainers_installed=testcontainers_installed(),
    )
    if source.kind == "unavailable":
        _unavailable(str(source.reason))
    if source.kind == "url":
        yield str(source.url)
        return
    with start_container(service) as url:
        yield url


@pytest.fixture(scope="session")
def queuert_metadata() -> Sequence[MetaData]:
    """The tables every test database gets: queuert's. Override it to add your own::

    @pytest.fixture(scope="session")
    def queuert_metadata():
        return [q.metadata, Base.metadata]
    """
    return (q.metadata,)


@pytest.fixture(scope="session")
def queuert_postgres_url(
    request: pytest.FixtureRequest, queuert_metadata: Sequence[MetaData]
) -> Iterator[URL]:
    """The session's scratch PostgreSQL database (created with the tables, dropped at the end)."""
    with _server(request.config, "postgresql") as server:
        url = create_scratch_database(server, queuert_metadata)
        try:
            yield url
        finally:
            drop_scratch_database(server, str(url.database))


def _postgres(url: URL, metadata: Sequence[MetaData]) -> Iterator[ScratchDatabase]:
    engine = create_engine(url)
    tables = [t for m in metadata for t in m.sorted_tables]
    if tables:
        names = ", ".join(f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"' for t in tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    try:
        yield ScratchDatabase("postgresql", url, engine)
    finally:
        engine.dispose()


@pytest.fixture
def queuert_postgres(
    queuert_postgres_url: URL, queuert_metadata: Sequence[MetaData]
) -> Iterator[ScratchDatabase]:
    """A PostgreSQL database for this test: the session's scratch one, its tables emptied."""
    yield from _postgres(queuert_postgres_url, queuert_metadata)


@pytest.fixture
def queuert_database(
    request: pytest.FixtureRequest, tmp_path: Path, queuert_metadata: Sequence[MetaData]
) -> Iterator[ScratchDatabase]:
    """A database for this test: SQLite (a fresh file), or PostgreSQL when a server is given."""
    given = given_url(request.config, "postgresql")
    backend = make_url(given).get_backend_name() if given else "sqlite"
    if backend == "postgresql":
        url: URL = request.getfixturevalue("queuert_postgres_url")
        yield from _postgres(url, queuert_metadata)
        return
    if backend != "sqlite":
        env, option = SETTINGS["postgresql"]
        pytest.fail(
            f"{env} (or {option}) names {backend}: queuert runs on PostgreSQL and SQLite",
            pytrace=False,
        )
    url = make_url(f"sqlite:///{tmp_path / 'queuert.db'}")
    engine = create_engine(url)
    q.prepare_engine(engine)
    for tables in queuert_metadata:
        tables.create_all(engine)
    try:
        yield ScratchDatabase("sqlite", url, engine)
    finally:
        engine.dispose()


@pytest.fixture
def queuert_engine(queuert_database: ScratchDatabase) -> Engine:
    """The engine of ``queuert_database``."""
    return queuert_database.engine


@pytest.fixture(scope="session")
def queuert_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis server's URL: ``--queuert-redis`` / ``QUEUERT_REDIS_URL``, or a container."""
    with _server(request.config, "redis") as url:
        yield url


@pytest.fixture(scope="session")
def queuert_nats_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A NATS server's URL: ``--queuert-nats`` / ``QUEUERT_NATS_URL``, or a container."""
    with _server(request.config, "nats") as url:
        yield url


@pytest.fixture
def queuert_clock() -> FrozenClock:
    """A clock that stands still until the test moves it (pass it as ``clock=``)."""
    return FrozenClock()


@pytest.fixture
def queuert_notify() -> Iterator[RecordingNotify]:
    """An in-process notify adapter that records what it sent (pass it as ``notify=``)."""
    adapter = RecordingNotify()
    yield adapter
    adapter.close()


@pytest.fixture
def queuert_observer() -> RecordingObserver:
    """An observer that keeps every event (pass it in ``observers=[...]``)."""
    return RecordingObserver()


@pytest.fixture
def queuert_drain() -> Drain:
    """``queuert_drain(worker)``: run the due jobs in this thread; a failed attempt fails the test."""
    return Drain()
