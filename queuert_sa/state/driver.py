"""The worker's fixed statements, executed on the driver's own cursor.

A worker runs the same two statements (acquire, complete) for every job. Going
through ``Session.execute`` costs several times the Python time of the driver
call itself (execution context, result wrapping, cache-key walk), and on two
cores that Python time is the throughput limit. A :class:`DriverStatement` is
compiled once by SQLAlchemy, for the engine's dialect, and then executed on the
DBAPI cursor of the connection SQLAlchemy already holds, inside the same
transaction: SQLAlchemy still owns the connection, its transaction, the pool
and the commit. Bind and result processing use each column type's own
processors, so values go in and come out as they would through SQLAlchemy.

Only the drivers measured with it take this path (psycopg 3 and the standard
``sqlite3``, both synchronous), and only when nothing listens to SQLAlchemy's
cursor events; otherwise the same statement runs through SQLAlchemy. Driver errors are wrapped as SQLAlchemy wraps them, and a
connection the dialect reports as lost is invalidated, as SQLAlchemy would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

#: Synchronous drivers the driver-level path is used (and tested) with.
SUPPORTED_DRIVERS = frozenset({("postgresql", "psycopg"), ("sqlite", "pysqlite")})

_CURSOR_KEY = "queuert_sa.driver_cursor"

Processor = Callable[[Any], Any]


def supported(connection: Connection) -> bool:
    """Whether statements on this connection may run on the driver's cursor.

    Not when the engine logs its SQL (``echo``) or has cursor-execute event
    listeners (SQL logging, OpenTelemetry's SQLAlchemy instrumentation): they
    would not see these statements, so the worker then goes through
    SQLAlchemy as for any other driver.
    """
    dialect = connection.dialect
    if dialect.is_async or (dialect.name, dialect.driver) not in SUPPORTED_DRIVERS:
        return False
    dispatch = connection.dispatch
    return not (
        dispatch.before_cursor_execute or dispatch.after_cursor_execute or connection.engine.echo
    )


class DriverStatement:
    """One SELECT, INSERT or UPDATE compiled once for one dialect."""

    __slots__ = ("_fixed", "_order", "_prepare", "_results", "_variable", "keys", "sql")

    def __init__(self, statement: UpdateBase | Select[Any], dialect: Dialect) -> None:
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
                self.sql = self.sql.replace(f"%({name})s", inline)
            else:
                self._fixed[name] = processor(value) if processor is not None else value
        columns = list(statement.exported_columns)
        self.keys: list[str] = [str(c.key) for c in columns]
        self._results: list[Processor | None] = [
            cast("Processor | None", c.type.dialect_impl(dialect).result_processor(dialect, None))
            for c in columns
        ]
        # psycopg prepares a statement server side after five runs; these run
        # for every job, so prepare them at once (unless the application turned
        # preparing off, e.g. prepare_threshold=None behind PgBouncer).
        self._prepare = dialect.name == "postgresql"

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
        for name, processor in self._variable.items():
            value = params[name]
            values[name] = processor(value) if processor is not None else value
        if self._order is None:
            return values
        return [values[name] for name in self._order]

    def execute_many(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row in ``connection``'s transaction (no RETURNING).

        psycopg sends the batch in one pipeline (one round trip); sqlite3 steps
        it in C. A value repeated across rows (the same ``now``, the same
        status) is converted once.
        """
        cursor = _cursor(connection)
        variable = list(self._variable.items())
        fixed = self._fixed
        order = self._order
        memo: dict[str, tuple[Any, Any]] = {}
        batch: list[Any] = []
        for row in rows:
            values = dict(fixed)
            for name, processor in variable:
                value = row[name]
                if processor is not None and value is not None:
                    seen = memo.get(name)
                    if seen is not None and seen[0] is value:
                        value = seen[1]
                    else:
                        converted = processor(value)
                        memo[name] = (value, converted)
                        value = converted
                values[name] = value
            batch.append(values if order is None else [values[name] for name in order])
        try:
            if len(batch) == 1:
                # One row: psycopg's executemany would open a pipeline (extra syncs).
                if self._prepare and cursor.connection.prepare_threshold is not None:
                    cursor.execute(self.sql, batch[0], prepare=True)
                else:
                    cursor.execute(self.sql, batch[0])
            else:
                cursor.executemany(self.sql, batch)
        except Exception as exc:
            raise _wrap(connection, exc, self.sql, batch[:1]) from exc

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run in ``connection``'s transaction; the RETURNING rows as dicts."""
        cursor = _cursor(connection)
        parameters = self._parameters(params)
        try:
            if self._prepare and cursor.connection.prepare_threshold is not None:
                cursor.execute(self.sql, parameters, prepare=True)
            else:
                cursor.execute(self.sql, parameters)
            rows = cursor.fetchall()
        except Exception as exc:
            raise _wrap(connection, exc, self.sql, parameters) from exc
        processors = self._results
        keys = self.keys
        return [
            {
                key: (proc(value) if proc is not None else value)
                for key, proc, value in zip(keys, processors, row, strict=True)
            }
            for row in rows
        ]


def _cursor(connection: Connection) -> Any:
    """The driver cursor kept with the pooled connection (one per DBAPI connection)."""
    fairy = connection.connection
    cursor: Any = fairy.info.get(_CURSOR_KEY)
    if cursor is None:
        dbapi_connection: Any = fairy.dbapi_connection
        cursor = fairy.info[_CURSOR_KEY] = dbapi_connection.cursor()
    return cursor


def _wrap(connection: Connection, exc: Exception, sql: str, parameters: Any) -> Exception:
    """The driver error as SQLAlchemy would raise it; invalidate a lost connection."""
    dialect = connection.dialect
    dbapi = dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    fairy = connection.connection
    fairy.info.pop(_CURSOR_KEY, None)
    lost = dialect.is_disconnect(exc, fairy.dbapi_connection, None)
    if lost and not connection.invalidated:
        connection.invalidate(exc)
    return sa_exc.DBAPIError.instance(
        sql,
        parameters,
        exc,
        dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
