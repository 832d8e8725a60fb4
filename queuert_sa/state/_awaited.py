"""The driver-level path on aiosqlite: one hop to the driver's thread per hot statement.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.util import concurrency

#: ``await_`` since SQLAlchemy 2.1; ``await_only`` before.
_await: Any = getattr(concurrency, "await_", None) or concurrency.await_only


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
            self._rows = _await(self._driver.execute_fetchall(sql, parameters))
        except Exception as exc:
            self._adapted._handle_exception(exc)  # raises it, translated

    def executemany(self, sql: str, batch: Sequence[Any]) -> None:
        self._rows = ()
        try:
            _await(self._driver.executemany(sql, batch))
        except Exception as exc:
            self._adapted._handle_exception(exc)

    def fetchall(self) -> Sequence[Any]:
        rows, self._rows = self._rows, ()
        return rows
