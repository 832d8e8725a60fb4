"""The hot statements, executed on the DBAPI driver's own cursor (private).

A worker runs the same few statements (acquire, complete, ...) for every job.
Going through ``Session.execute`` costs several times the Python time of the
driver call itself (execution context, result wrapping, cache-key walk), and on
two cores that Python time is the throughput limit. A :class:`DriverStatement`
is compiled once by SQLAlchemy, for the engine's dialect, and then executed on
the DBAPI cursor of the connection SQLAlchemy already holds, inside the same
transaction: SQLAlchemy still owns the connection, its transaction, the pool
and the commit. Bind and result processing use each column type's own
processors, so values go in and come out as they would through SQLAlchemy.
Driver errors go through SQLAlchemy's own error handling (``handle_error``
events, disconnect detection and pool invalidation, ``hide_parameters``).

This module only knows *how* to run a statement on the cursor (and
:mod:`._arrays` how to run PostgreSQL's batch statements over arrays there).
*Whether* one does (the driver's capabilities, and nothing listening that would
miss it) is decided in one place, :mod:`._exec`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from itertools import repeat
from operator import is_
from typing import Any, NoReturn, TypeVar, cast

from sqlalchemy import Connection, Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

from ._awaited import AwaitedCursor, AwaitedPsycopgCursor

T = TypeVar("T")

_CURSOR_KEY = "queuert_sa.driver_cursor"

Processor = Callable[[Any], Any]

#: Attribute of a dialect holding its compiled statements (they refer to the
#: dialect through their type processors, so a weak mapping keyed by the
#: dialect would keep it alive; an attribute goes with it).
_STATEMENTS_ATTR = "_queuert_sa_driver_statements"


def statement_for(
    dialect: Dialect,
    key: Hashable,
    build: Callable[[], UpdateBase | Select[Any]],
    *,
    prepare: bool,
) -> DriverStatement:
    """The statement ``build()`` compiled for ``dialect``, once per (dialect, key).

    With ``prepare``, it is prepared server side at its first run.
    """
    return once(dialect, key, lambda: DriverStatement(build(), dialect, prepare=prepare))


def once(dialect: Dialect, key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per (dialect, key), kept in the dialect's cache."""
    per_dialect = _cache_of(dialect)
    found = per_dialect.get(key)
    if found is None:
        found = per_dialect[key] = build()
    return cast("T", found)


def _cache_of(dialect: Dialect) -> dict[Hashable, Any]:
    """The dialect's own cache of compiled statements: it goes with its engine."""
    per_dialect: dict[Hashable, Any] | None = getattr(dialect, _STATEMENTS_ATTR, None)
    if per_dialect is None:
        per_dialect = {}
        setattr(dialect, _STATEMENTS_ATTR, per_dialect)
    return per_dialect


def _run(cursor: Any, sql: str, parameters: Any, prepare: bool) -> None:
    # psycopg prepares a statement server side after five runs; these run for
    # every job, so prepare them at once (unless the application turned
    # preparing off, e.g. prepare_threshold=None behind PgBouncer).
    if prepare and cursor.connection.prepare_threshold is not None:
        cursor.execute(sql, parameters, prepare=True)
    else:
        cursor.execute(sql, parameters)


_PYFORMAT = re.compile(r"%\((\w+)\)s")


class DriverStatement:
    """One SELECT, INSERT or UPDATE compiled once for one dialect."""

    __slots__ = ("_fixed", "_order", "_prepare", "_results", "_variable", "keys", "sql")

    def __init__(
        self, statement: UpdateBase | Select[Any], dialect: Dialect, *, prepare: bool
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.positional and compiled.positiontup is None:  # pragma: no cover
            raise ValueError("positional statement without parameter order")
        self.sql = compiled.string
        if "POSTCOMPILE" in self.sql:
            raise ValueError("expanding parameters cannot run on the driver's cursor")
        self._order: list[str] | None = (
            list(compiled.positiontup or ()) if compiled.positional else None
        )
        defaults = compiled.construct_params(_check=False)
        self._fixed: dict[str, Any] = {}
        self._variable: dict[str, Processor | None] = {}
        used = set(self._order) if self._order is not None else None
        literals: dict[str, str] = {}
        for name, bind in compiled.binds.items():
            if (name not in used) if used is not None else (f"%({name})s" not in self.sql):
                continue  # an alias SQLAlchemy keeps for anonymous parameters
            processor = cast(
                "Processor | None", bind.type.dialect_impl(dialect).bind_processor(dialect)
            )
            if bind.required:
                self._variable[name] = processor
                continue
            value = defaults.get(name)
            inline = self._literal(bind, value, dialect) if self._order is None else None
            if inline is not None:
                # A constant: in the SQL text, so psycopg does not convert it per run.
                literals[name] = inline
            else:
                self._fixed[name] = processor(value) if processor is not None else value
        if literals:
            # One pass over the compiled text: a literal may itself contain "%(x)s".
            self.sql = _PYFORMAT.sub(
                lambda m: literals.get(m.group(1), m.group(0)), compiled.string
            )
        columns = list(statement.exported_columns)
        self.keys: list[str] = [str(c.key) for c in columns]
        self._results: list[Processor | None] = [
            cast("Processor | None", c.type.dialect_impl(dialect).result_processor(dialect, None))
            for c in columns
        ]
        self._prepare = prepare

    @staticmethod
    def _literal(bind: Any, value: Any, dialect: Dialect) -> str | None:
        """``value`` as SQL text for a pyformat statement, or None if the type has no literal.

        The dialect's literal processor quotes it and doubles ``%`` for pyformat.
        """
        if value is None:
            return "NULL"
        render = bind.type.dialect_impl(dialect).literal_processor(dialect)
        if render is None:
            return None
        return str(render(value))

    def _parameters(self, params: Mapping[str, Any]) -> dict[str, Any] | list[Any]:
        values = dict(self._fixed)
        try:
            for name, processor in self._variable.items():
                value = params[name]
                values[name] = processor(value) if processor is not None else value
        except Exception as exc:
            raise _refused(exc, self.sql) from exc
        if self._order is None:
            return values
        return [values[name] for name in self._order]

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row in ``connection``'s transaction (no RETURNING).

        psycopg sends the batch in one pipeline (one round trip); sqlite3 steps
        it in C. Values are converted a column at a time, and a value repeated
        across rows (the same ``now``, the same status) is converted once.
        """
        cursor = _cursor(connection)
        count = len(rows)
        columns: dict[str, Iterable[Any]] = {
            name: repeat(value, count) for name, value in self._fixed.items()
        }
        for name, processor in self._variable.items():
            values = [row[name] for row in rows]
            columns[name] = convert(processor, values, self.sql) if processor else values
        batch: list[Any]
        if self._order is None:
            names = list(columns)
            batch = [
                dict(zip(names, values, strict=True))
                for values in zip(*columns.values(), strict=True)
            ]
        else:
            batch = list(zip(*(columns[name] for name in self._order), strict=True))
        if not columns:
            batch = [{} if self._order is None else ()] * count
        try:
            if len(batch) == 1:
                # One row: psycopg's executemany would open a pipeline (extra syncs).
                _run(cursor, self.sql, batch[0], self._prepare)
            else:
                cursor.executemany(self.sql, batch)
        except BaseException as exc:
            _handle(connection, exc, self.sql, batch, cursor)

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run in ``connection``'s transaction; the RETURNING rows as dicts."""
        cursor = _cursor(connection)
        parameters = self._parameters(params)
        try:
            _run(cursor, self.sql, parameters, self._prepare)
            rows = cursor.fetchall()
        except BaseException as exc:
            _handle(connection, exc, self.sql, parameters, cursor)
        processors = self._results
        keys = self.keys
        return [
            {
                key: (proc(value) if proc is not None else value)
                for key, proc, value in zip(keys, processors, row, strict=True)
            }
            for row in rows
        ]


def convert(processor: Processor, values: Sequence[Any], sql: str) -> list[Any]:
    """``processor`` over ``values``, once per distinct object in a row (None stays None)."""
    first = values[0] if values else None
    try:
        if all(map(is_, values, repeat(first))):  # one object in every row: converted once
            return [None if first is None else processor(first)] * len(values)
        out: list[Any] = []
        last: Any = None
        converted: Any = None
        for value in values:
            if value is None:
                out.append(None)
                continue
            if value is not last:
                last, converted = value, processor(value)
            out.append(converted)
    except Exception as exc:
        raise _refused(exc, sql) from exc
    return out


def execute_on_cursor(connection: Connection, sql: str, params: Any, *, prepare: bool) -> None:
    """Run ``sql`` on the driver's cursor, in ``connection``'s transaction (no rows back).

    Errors are raised as SQLAlchemy raises them (see :func:`_handle`). For the
    array statements of :mod:`._arrays`, compiled there.
    """
    cursor = _cursor(connection)
    try:
        _run(cursor, sql, params, prepare)
    except BaseException as exc:
        _handle(connection, exc, sql, params, cursor)


def _refused(exc: Exception, sql: str) -> sa_exc.StatementError:
    """A value its column type refused, reported as SQLAlchemy reports it."""
    return sa_exc.StatementError(
        f"({type(exc).__module__}.{type(exc).__qualname__}) {exc}", sql, None, exc
    )


def run_plain(connection: Connection, sql: str) -> None:
    """Run ``sql``, which takes no parameters and returns no rows, on the kept cursor."""
    cursor = _cursor(connection)
    try:
        cursor.execute(sql, ())
    except BaseException as exc:
        _handle(connection, exc, sql, (), cursor)


def _cursor(connection: Connection) -> Any:
    """The driver cursor kept with the pooled connection (one per DBAPI connection)."""
    fairy = connection.connection
    cursor: Any = fairy.info.get(_CURSOR_KEY)
    if cursor is None:
        dbapi_connection: Any = fairy.dbapi_connection
        dialect = connection.dialect
        if not dialect.is_async:
            cursor = dbapi_connection.cursor()
        elif dialect.name == "postgresql":  # psycopg, the one asyncio PostgreSQL driver listed
            cursor = AwaitedPsycopgCursor(dbapi_connection)
        else:  # aiosqlite (see capabilities)
            cursor = AwaitedCursor(dbapi_connection)
        fairy.info[_CURSOR_KEY] = cursor
    return cursor


def _handle(
    connection: Connection, exc: BaseException, sql: str, parameters: Any, cursor: Any
) -> NoReturn:
    """Raise ``exc`` as SQLAlchemy would from ``Connection.execute``.

    SQLAlchemy's own handler: ``handle_error`` listeners, disconnect detection
    (invalidating the connection, and the pool's older connections with it),
    ``hide_parameters``, and exit exceptions invalidating the connection. It
    is private API, pinned by this package's tests.
    """
    connection.connection.info.pop(_CURSOR_KEY, None)
    handler = connection._handle_dbapi_exception  # pyright: ignore[reportPrivateUsage]
    handler(exc, sql, parameters, cursor, None)
