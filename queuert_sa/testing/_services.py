"""Where the plugin's services come from: a URL given, a container started, or nowhere.

:func:`choose_source` is the decision, a pure function of what was given and
what this machine has; the fixtures carry it out (:func:`start_container`,
:func:`create_scratch_database`). Nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy import MetaData, create_engine, make_url, text
from sqlalchemy.engine import URL

Service = Literal["postgresql", "redis", "nats"]

#: Per service: the environment variable and the command-line option that give its URL.
SETTINGS: dict[Service, tuple[str, str]] = {
    "postgresql": ("QUEUERT_DATABASE_URL", "--queuert-db"),
    "redis": ("QUEUERT_REDIS_URL", "--queuert-redis"),
    "nats": ("QUEUERT_NATS_URL", "--queuert-nats"),
}

#: An example URL per service, for the messages.
EXAMPLES: dict[Service, str] = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "redis": "redis://127.0.0.1:6379/0",
    "nats": "nats://127.0.0.1:4222",
}

#: The images started when no URL is given and Docker is reachable.
IMAGES: dict[Service, str] = {
    "postgresql": "postgres:16-alpine",
    "redis": "redis:7-alpine",
    "nats": "nats:2-alpine",
}

#: ``QUEUERT_TEST_REQUIRE_SERVICES=1`` turns "unavailable" skips into failures (CI).
REQUIRE_SERVICES_ENV = "QUEUERT_TEST_REQUIRE_SERVICES"


@dataclass(frozen=True)
class Source:
    """Where a service comes from: ``"url"`` (given), ``"container"`` or ``"unavailable"``."""

    kind: Literal["url", "container", "unavailable"]
    url: str | None = None
    """The URL given (kind ``"url"``)."""
    reason: str | None = None
    """Why the service is unavailable and what to set (kind ``"unavailable"``)."""


def choose_source(
    service: Service,
    url: str | None,
    *,
    docker_problem: Callable[[], str | None],
    testcontainers_installed: bool,
) -> Source:
    """Decide where ``service`` comes from for this test session.

    Args:
        service: ``"postgresql"``, ``"redis"`` or ``"nats"``.
        url: The URL given (option, else environment variable), or None.
        docker_problem: Says why no Docker engine is reachable, or None if one is
            (called only when no URL is given).
        testcontainers_installed: Whether ``testcontainers`` can be imported.

    A URL given wins (for PostgreSQL it must name a PostgreSQL server). Without
    one, a container is started when ``testcontainers`` is installed and a
    Docker engine answers; otherwise the service is unavailable, with a reason
    that names the variable and option to set.
    """
    env, option = SETTINGS[service]
    if url:
        if service == "postgresql" and make_url(url).get_backend_name() != "postgresql":
            return Source(
                "unavailable",
                reason=f"{env} names {make_url(url).get_backend_name()}, not PostgreSQL: "
                f"set {env} (or {option}) to a PostgreSQL server, e.g. {EXAMPLES[service]}",
            )
        return Source("url", url=url)
    hint = f"set {env} (or {option}) to one, e.g. {env}={EXAMPLES[service]}"
    if not testcontainers_installed:
        return Source(
            "unavailable",
            reason=f"no {service} server given: {hint}, or pip install 'queuert_sa[testing]' "
            "and run Docker to have one started in a container",
        )
    problem = docker_problem()
    if problem is not None:
        return Source(
            "unavailable",
            reason=f"no {service} server given and no Docker engine to start one ({problem}): "
            f"{hint}",
        )
    return Source("container")


def testcontainers_installed() -> bool:
    """Whether the ``testing`` extra's ``testcontainers`` can be imported."""
    return importlib.util.find_spec("testcontainers") is not None


def docker_problem(docker_host: str | None = None, timeout: float = 2.0) -> str | None:
    """Why no Docker engine answers at ``docker_host`` (default: ``$DOCKER_HOST``), or None.

    A unix socket must answer ``GET /_ping`` with ``OK``; a TCP endpoint must
    accept a connection (with TLS, testcontainers itself finds out the rest).
    """
    where = docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    parts = urlsplit(where)
    try:
        if parts.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(parts.path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = sock.recv(4096)
            if b" 200 " not in answer.split(b"\r\n", 1)[0]:
                return f"{where} answered {answer[:40]!r}"
            return None
        if parts.scheme in ("tcp", "http", "https"):
            with socket.create_connection(
                (parts.hostname or "localhost", parts.port or 2375), timeout
            ):
                return None
    except OSError as exc:
        return f"{where}: {exc.strerror or exc}"
    return f"DOCKER_HOST={where} is neither unix:// nor tcp://"


def require_services() -> bool:
    """Whether an unavailable service fails the test instead of skipping it."""
    return os.environ.get(REQUIRE_SERVICES_ENV, "") not in ("", "0")


@contextlib.contextmanager
def start_container(service: Service) -> Generator[str]:
    """Start ``service`` in a Docker container for the session; yield its URL."""
    if service == "postgresql":
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(IMAGES[service], driver="psycopg") as postgres:
            yield postgres.get_connection_url()
    elif service == "redis":
        from testcontainers.community.redis import RedisContainer

        with RedisContainer(IMAGES[service]) as redis:
            host, port = redis.get_container_host_ip(), redis.get_exposed_port(redis.port)
            yield f"redis://{host}:{port}/0"
    else:
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(IMAGES[service], jetstream=True) as nats:
            yield nats.nats_uri()


def scratch_name() -> str:
    """A fresh database name of the plugin's: ``queuert_test_<10 hex digits>``."""
    return f"queuert_test_{uuid.uuid4().hex[:10]}"


def create_scratch_database(server_url: str, metadata: Sequence[MetaData]) -> URL:
    """Create a fresh database on ``server_url``'s server with ``metadata``'s tables.

    ``server_url``'s own database is only connected to, never written. Raises
    with what to do when the server is unreachable or the role may not create
    databases.
    """
    admin_url = make_url(server_url)
    name = scratch_name()
    shown = admin_url.render_as_string(hide_password=True)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise RuntimeError(
            f"queuert_sa.testing could not create a scratch database on {shown}: {exc}. "
            "Check that the server is up and that the URL's role may CREATE DATABASE."
        ) from exc
    finally:
        admin.dispose()
    url = admin_url.set(database=name)
    engine = create_engine(url)
    try:
        for tables in metadata:
            tables.create_all(engine)
    finally:
        engine.dispose()
    return url


def drop_scratch_database(server_url: str, name: str) -> None:
    """Drop a database :func:`create_scratch_database` made (its connections closed first)."""
    admin = create_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def async_url(url: URL) -> URL:
    """The same database through an asyncio driver: aiosqlite, or psycopg's async mode."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql" and url.get_driver_name() in ("psycopg2", "psycopg", "pg8000"):
        return url.set(drivername="postgresql+psycopg")
    return url
