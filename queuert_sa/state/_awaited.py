"""The driver-level path on the asyncio drivers: one awaited call per hot statement.

**aiosqlite.**

aiosqlite runs every call of its connection on a thread of its own, and
SQLAlchemy's adaptor makes four such calls per statement (open a cursor,
execute, fetch, close). Each is a round trip between the event loop and that
thread, and they, not SQLite, are most of an asyncio attempt's time. The hot
statements (:mod:`._fastpath`) run here in one: ``execute_fetchall`` or
``executemany`` of aiosqlite's own connection, awaited from the greenlet
SQLAlchemy runs the session's sync code in (the caller is always inside
``AsyncSession.run_sync``). The transaction is the session's: aiosqlite has one
``sqlite3`` connection.

Errors are translated by SQLAlchemy's adaptor first, to the exceptions of the
dialect's DBAPI module, so that SQLAlchemy's own handler then treats them as it
treats every other statement's (private API, pinned by the test suite, which
runs every asyncio SQLite test on this path).

**psycopg's asyncio connection.** SQLAlchemy's adaptor awaits each statement
and then builds a cursor description and a result for it, several times the
Python time of psycopg's own call. Here the statement and the fetch of its
rows are one coroutine on psycopg's ``AsyncCursor``, awaited once (one
greenlet switch and one event-loop turn per statement). psycopg raises the
DBAPI's own exceptions, so the adaptor's handler passes them on unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.util import concurrency

#: SQLAlchemy's ``await_`` (``await_only`` before 2.1): awaits a coroutine from the
#: greenlet SQLAlchemy runs sync code in.
await_: Any = getattr(concurrency, "await_", None) or concurrency.await_only

#: ``psycopg.pq.ExecStatus.TUPLES_OK`` (an ``IntEnum``; psycopg is an optional dependency).
_TUPLES_OK = 2


class AwaitedCursor:
    """The cursor surface :mod:`._fastpath` uses, over aiosqlite's connection."""

    __slots__ = ("_adapted", "_driver", "_rows", "connection")

    def __init__(self, adapted: Any) -> None:
        self._adapted = adapted  # SQLAlchemy's AsyncAdapt_aiosqlite_connection
        self._driver = adapted.driver_connection  # aiosqlite.Connection
        self._rows: Sequence[Any] = ()
        self.connection = self

    #: No server-side preparing on SQLite (read by ``_fastpath._run``).
    prepare_threshold = None

    def execute(self, sql: str, parameters: Any) -> None:
        try:
            self._rows = await_(self._driver.execute_fetchall(sql, parameters))
        except Exception as exc:
            self._adapted._handle_exception(exc)  # raises it, translated

    def executemany(self, sql: str, batch: Sequence[Any]) -> None:
        self._rows = ()
        try:
            await_(self._driver.executemany(sql, batch))
        except Exception as exc:
            self._adapted._handle_exception(exc)

    def fetchall(self) -> Sequence[Any]:
        rows, self._rows = self._rows, ()
        return rows

    def close(self) -> None:
        """Called by SQLAlchemy's error handler; the kept cursor is dropped then anyway."""
        self._rows = ()


class AwaitedPsycopgCursor:
    """The cursor surface :mod:`._fastpath` uses, over psycopg's ``AsyncConnection``."""

    __slots__ = ("_adapted", "_cursor", "_rows", "connection")

    def __init__(self, adapted: Any) -> None:
        self._adapted = adapted  # SQLAlchemy's AsyncAdapt_psycopg_connection
        self.connection = adapted.driver_connection  # psycopg.AsyncConnection
        self._cursor = self.connection.cursor()
        self._rows: Sequence[Any] = ()

    async def _execute(self, sql: str, parameters: Any, prepare: bool | None) -> Sequence[Any]:
        cursor = self._cursor
        await cursor.execute(sql, parameters, prepare=prepare)
        # Rows unless the statement returns none (an INSERT): psycopg's fetch
        # raises then. (Not ``description``: it builds an object per column.)
        result = cursor.pgresult
        if result is None or result.status != _TUPLES_OK:
            return ()
        rows: Sequence[Any] = await cursor.fetchall()
        return rows

    def execute(self, sql: str, parameters: Any, *, prepare: bool | None = None) -> None:
        try:
            self._rows = await_(self._execute(sql, parameters, prepare))
        except Exception as exc:
            self._adapted._handle_exception(exc)

    def executemany(self, sql: str, batch: Sequence[Any]) -> None:
        self._rows = ()
        try:
            await_(self._cursor.executemany(sql, batch))
        except Exception as exc:
            self._adapted._handle_exception(exc)

    def fetchall(self) -> Sequence[Any]:
        rows, self._rows = self._rows, ()
        return rows

    def close(self) -> None:
        """Called by SQLAlchemy's error handler; the kept cursor is dropped then anyway."""
        self._rows = ()
