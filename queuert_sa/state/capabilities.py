"""What the database can do, resolved once per engine.

The rest of the package branches on these capabilities, never on a dialect
or driver name. This module is the one place that maps a dialect (and its DBAPI
driver) to its capabilities and that prepares an engine (SQLite needs a few
connection settings to behave like a transactional database under SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite

from queuert_sa._errors import QueuertError

#: Execution option asking the SQLite begin hook for ``BEGIN IMMEDIATE``.
BEGIN_IMMEDIATE = "queuert_sa_begin_immediate"

#: SQLite ``busy_timeout`` set by :func:`prepare_engine`, in milliseconds.
SQLITE_BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """Database features the state layer relies on."""

    name: str
    """Dialect name, for messages only."""

    skip_locked: bool
    """``SELECT ... FOR UPDATE SKIP LOCKED``: concurrent acquirers skip each other's rows."""

    single_writer: bool
    """One write transaction at a time per database (SQLite): acquire takes the
    write lock up front (``BEGIN IMMEDIATE``) instead of locking rows."""

    listen_notify: bool
    """Server-side LISTEN/NOTIFY is available."""

    server_timeouts: bool
    """The server can end a transaction that idles or runs too long
    (PostgreSQL's ``idle_in_transaction_session_timeout``/``statement_timeout``)."""

    insert: Callable[[Table], postgresql.Insert | sqlite.Insert]
    """Dialect ``insert()`` supporting ``ON CONFLICT DO NOTHING``."""

    driver_cursor: bool = False
    """The hot statements (acquire, complete, lock, renew, insert) may run on the
    DBAPI driver's own cursor instead of through ``Session.execute``: a
    driver that path is measured and tested with (psycopg 3, ``sqlite3``, and
    aiosqlite, where a statement is one call to the driver's thread instead of
    four: ``state/_awaited.py``). Each statement still falls back to SQLAlchemy
    when something would notice (SQL logging, cursor-execute listeners, a
    ``schema_translate_map``): ``state/_exec.py`` decides. False for psycopg's
    asyncio connection."""

    array_insert: bool = False
    """On the driver's cursor, a batch of rows is inserted by one statement
    taking one array per column (PostgreSQL ``unnest``, with psycopg adapting a
    list to an array) instead of one execution per row."""

    server_prepare: bool = False
    """On the driver's cursor, statements are prepared server side at their
    first run (psycopg's ``prepare=True``), unless the connection turned
    preparing off (``prepare_threshold=None``, e.g. behind PgBouncer)."""


_POSTGRES = Capabilities(
    name="postgresql",
    skip_locked=True,
    single_writer=False,
    listen_notify=True,
    server_timeouts=True,
    insert=postgresql.insert,
)

_SQLITE = Capabilities(
    name="sqlite",
    skip_locked=False,
    single_writer=True,
    listen_notify=False,
    server_timeouts=False,
    insert=sqlite.insert,
)

#: The DBAPI drivers whose cursor the hot statements run on, by (dialect name,
#: driver name), with what that path may use there. Drivers not listed run
#: everything through SQLAlchemy; of the asyncio drivers, aiosqlite and
#: psycopg's are on it. The test suite empties it to run on SQLAlchemy's path
#: only (``tests/conftest.py``).
DRIVER_CURSOR: Mapping[tuple[str, str], Capabilities] = {
    ("postgresql", "psycopg"): replace(
        _POSTGRES, driver_cursor=True, array_insert=True, server_prepare=True
    ),
    ("sqlite", "pysqlite"): replace(_SQLITE, driver_cursor=True),
    ("sqlite", "aiosqlite"): replace(_SQLITE, driver_cursor=True),
}

#: The asyncio drivers on the driver cursor's path (psycopg's asyncio dialect
#: shares the sync one's driver name; both are listed in :data:`DRIVER_CURSOR`).
_ASYNC_ON_DRIVER_CURSOR = frozenset({("sqlite", "aiosqlite"), ("postgresql", "psycopg")})

#: Attribute of a dialect holding its resolved capabilities.
_CAPABILITIES_ATTR = "_queuert_sa_capabilities"


def capabilities_for(dialect: Dialect) -> Capabilities:
    """Capabilities of a dialect; :class:`QueuertError` for unsupported databases.

    Resolved once per dialect (one per engine) and kept on it: the hot
    statements look them up on every execution.
    """
    caps: Capabilities | None = getattr(dialect, _CAPABILITIES_ATTR, None)
    if caps is None:
        caps = _resolve(dialect)
        setattr(dialect, _CAPABILITIES_ATTR, caps)
    return caps


#: The first PostgreSQL version with ``transaction_timeout``.
TRANSACTION_TIMEOUT_SINCE = (17,)


def has_transaction_timeout(caps: Capabilities, dialect: Dialect) -> bool:
    """Whether the connected server can end a whole transaction after a time limit.

    PostgreSQL 17 added ``transaction_timeout``: with it, an attempt's
    timeout also cuts off a transaction of many short statements, which
    ``statement_timeout`` and ``idle_in_transaction_session_timeout`` never
    do. Known once the dialect has connected (``server_version_info``); False
    before, on older servers and where the server has no timeouts (SQLite).
    """
    version = getattr(dialect, "server_version_info", None) or ()
    return caps.server_timeouts and tuple(version) >= TRANSACTION_TIMEOUT_SINCE


def _resolve(dialect: Dialect) -> Capabilities:
    if dialect.name == "postgresql":
        generic = _POSTGRES
    elif dialect.name == "sqlite":
        generic = _SQLITE
    else:
        raise QueuertError(
            f"queuert_sa supports PostgreSQL and SQLite; this engine uses {dialect.name!r}."
        )
    key = (dialect.name, dialect.driver)
    if dialect.is_async and key not in _ASYNC_ON_DRIVER_CURSOR:
        # The cursor of an asyncio driver is awaited; SQLAlchemy's adaptor bridges it.
        return generic
    return DRIVER_CURSOR.get(key, generic)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLAlchemy's documented recipe: stop the sqlite3 module from managing
    # transactions (it skips BEGIN for SELECT and SAVEPOINT), emit BEGIN ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL lets readers proceed while a worker holds the write lock. It is
        # a property of the database file; in-memory databases keep "memory".
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    from . import _exec  # it imports this module

    immediate = conn.get_execution_options().get(BEGIN_IMMEDIATE)
    _exec.begin(conn, "BEGIN IMMEDIATE" if immediate else "BEGIN")


def prepare_engine(engine: Engine) -> Capabilities:
    """Resolve the engine's capabilities and apply the settings queuert relies on.

    On SQLite this installs, once per engine: WAL journal, a 30 s busy timeout,
    foreign keys on, and SQLAlchemy's recipe for real transactions and
    SAVEPOINTs with the ``sqlite3`` driver (``BEGIN`` emitted by SQLAlchemy;
    ``BEGIN IMMEDIATE`` for worker transactions). Connections already pooled
    were made without these settings, so the pool of a file database is
    disposed when they are installed (an in-memory database keeps its one
    connection: prepare it before first use).
    """
    caps = capabilities_for(engine.dialect)
    # An engine made by engine.execution_options(...) (e.g. immediate_engine)
    # shares its parent's pool and events: prepare the parent, once. Listening
    # on the copy as well would emit BEGIN twice on its connections.
    while (parent := getattr(engine, "_proxied", None)) is not None:
        engine = parent
    if caps.single_writer and not event.contains(engine, "connect", _sqlite_connect):
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        if engine.dialect.is_async:
            _skip_idle_rollbacks(engine.dialect)
        if not _in_memory(engine):
            engine.dispose()
    return caps


def _skip_idle_rollbacks(dialect: Dialect) -> None:
    """No ROLLBACK on a connection with no transaction open (aiosqlite).

    The pool rolls back every connection it takes back, even one whose
    transaction has just committed. On ``sqlite3`` that is a no-op in C; on
    aiosqlite it is a call to the connection's thread, one per worker
    transaction. ``in_transaction`` is ``sqlite3``'s own flag, read without
    that call; a connection in a transaction is rolled back as before.
    """
    rollback = dialect.do_rollback

    def do_rollback(dbapi_connection: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and not driver.in_transaction:
            return
        rollback(dbapi_connection)

    dialect.do_rollback = do_rollback  # type: ignore[method-assign]


def _in_memory(engine: Engine) -> bool:
    database = engine.url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(engine.url)


def immediate_engine(engine: Engine) -> Engine:
    """The engine, with transactions that take SQLite's write lock when they begin.

    SQLite lets one transaction write at a time. A transaction that *reads*
    first and writes later (``session.get(...)`` then ``start_chain``) fails at
    once with "database is locked" if another writer (a worker) committed in
    between; ``busy_timeout`` cannot help it. Beginning with ``BEGIN
    IMMEDIATE`` makes it wait for the lock up front instead::

        SessionLocal = sessionmaker(immediate_engine(engine))

    On PostgreSQL this returns ``engine`` unchanged.
    """
    caps = prepare_engine(engine)
    if not caps.single_writer:
        return engine
    return engine.execution_options(**{BEGIN_IMMEDIATE: True})
