"""The one place that chooses where a hot statement runs: the driver's cursor or SQLAlchemy.

Every hot operation in :mod:`.operations` (insert jobs, acquire, complete,
lock, renew) makes one call here. The statement runs on the DBAPI driver's own
cursor (:mod:`._fastpath`, several times less Python time per job) when both
hold:

* the connection's dialect has the :attr:`~.Capabilities.driver_cursor`
  capability (a synchronous driver that path is measured and tested with), and
* nothing would miss a statement that bypasses SQLAlchemy's execution or would
  route it elsewhere: SQL logging (``echo``, or the ``sqlalchemy.engine`` logger
  at INFO), cursor-execute event listeners (OpenTelemetry's SQLAlchemy
  instrumentation), or a ``schema_translate_map``.

Otherwise it runs through ``Session.execute``/``Connection.execute``, as any
other statement does. Either way the rows come back as mappings, in the
caller's transaction. Errors are not translated here: the calling operation
wraps the call in :func:`~.operations.database_errors`, and errors on the
cursor go through SQLAlchemy's own handler first, so both paths raise alike.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Table, bindparam
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import UpdateBase

from queuert_sa.models import Models

from . import _arrays, _fastpath, _statements
from .capabilities import Capabilities, capabilities_for

if TYPE_CHECKING:
    from .operations import Executor


def fetch(
    executor: Executor,
    models: Models,
    statement: UpdateBase | Select[Any],
    params: Mapping[str, Any],
    *,
    key: Hashable | None,
    driver_statement: Callable[[], UpdateBase | Select[Any]] | None = None,
) -> Sequence[Mapping[Any, Any]]:
    """Run ``statement`` with ``params``; the rows it returns, as mappings.

    ``key`` names the statement in the dialect's cache of compiled statements
    for the driver's cursor; ``None`` keeps it on SQLAlchemy's path (a
    statement with expanding parameters, which the cursor cannot take).
    ``driver_statement`` builds the form compiled for the cursor when it is not
    ``statement`` itself. Parameters a form does not use are ignored.
    """
    connection = _connection(executor, models)
    caps = capabilities_for(connection.dialect)
    if key is not None and _on_driver_cursor(connection, caps):
        build = driver_statement or (lambda: statement)
        compiled = _fastpath.statement_for(
            connection.dialect, key, build, prepare=caps.server_prepare
        )
        return compiled.execute(connection, params)
    return executor.execute(statement, params).mappings().all()


def execute_many(
    executor: Executor,
    models: Models,
    statement: UpdateBase,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Hashable,
) -> None:
    """Run ``statement`` once per row of parameters, in one batch (no rows returned).

    On the driver's cursor psycopg sends the batch in one pipeline and sqlite3
    steps it in C; through SQLAlchemy it is an executemany.
    """
    if not rows:
        return
    connection = _connection(executor, models)
    caps = capabilities_for(connection.dialect)
    if _on_driver_cursor(connection, caps):
        _fastpath.statement_for(
            connection.dialect, key, lambda: statement, prepare=caps.server_prepare
        ).execute_many(connection, rows)
        return
    executor.execute(statement, [dict(row) for row in rows])


def update_rows(
    executor: Executor,
    models: Models,
    table: Table,
    *,
    key: str,
    per_row: tuple[str, ...],
    shared: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """Set the ``per_row`` columns of each row (found by its ``key``) and ``shared`` on all.

    In one round trip. On the driver's cursor with
    :attr:`~.Capabilities.array_insert`: one UPDATE over an array per column
    (the server runs one statement whatever the batch size); otherwise one
    execution per row in one batch.
    """
    if not rows:
        return
    connection = _connection(executor, models)
    caps = capabilities_for(connection.dialect)
    names = tuple(shared)
    if caps.array_insert and _on_driver_cursor(connection, caps):
        _arrays.array_update_for(
            connection.dialect, table, key, per_row, names, prepare=caps.server_prepare
        ).execute(connection, rows, shared)
        return
    statement = _statements.update_by_key(table, key, (*per_row, *names))
    fixed = {f"p_{name}": value for name, value in shared.items()}
    params = [{**fixed, **{f"p_{name}": row[name] for name in (key, *per_row)}} for row in rows]
    execute_many(executor, models, statement, params, key=("update", table, key, per_row, names))


def insert_rows(
    executor: Executor,
    models: Models,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """Insert ``rows`` (values for ``columns``) into ``table``, in one round trip.

    On the driver's cursor: one statement taking an array per column where the
    dialect has :attr:`~.Capabilities.array_insert`, else one execution per row
    in one batch. Through SQLAlchemy: an executemany of the table's INSERT.
    """
    connection = _connection(executor, models)
    caps = capabilities_for(connection.dialect)
    if _on_driver_cursor(connection, caps):
        dialect = connection.dialect
        if len(rows) > 1 and caps.array_insert:
            _arrays.array_insert_for(dialect, table, columns, prepare=caps.server_prepare).execute(
                connection, rows
            )
        else:
            _fastpath.statement_for(
                dialect,
                ("insert", table, columns),
                lambda: table.insert().values(
                    {name: bindparam(name, type_=table.c[name].type) for name in columns}
                ),
                prepare=caps.server_prepare,
            ).execute_many(connection, rows)
        return
    # Copies: the rows may be the callers' own objects (a NewJob's __dict__).
    executor.execute(table.insert(), [dict(row) for row in rows])


def begin(connection: Connection, sql: str) -> None:
    """Emit SQLite's ``BEGIN`` (or ``BEGIN IMMEDIATE``), from the engine's begin hook.

    On the driver's cursor when the hot statements run there: through
    SQLAlchemy it is an execution context and, on aiosqlite, three calls to
    its thread (open a cursor, execute, close) instead of one.
    """
    if _on_driver_cursor(connection, capabilities_for(connection.dialect)):
        _fastpath.run_plain(connection, sql)
    else:
        connection.exec_driver_sql(sql)


def _connection(executor: Executor, models: Models) -> Connection:
    """The connection statements on queuert's tables run on (a Session's ``binds`` apply)."""
    if isinstance(executor, Session):
        return executor.connection(bind_arguments={"clause": models.job_table})
    return executor


def _on_driver_cursor(connection: Connection, caps: Capabilities) -> bool:
    """Whether statements on this connection may run on the driver's cursor (see above)."""
    if not caps.driver_cursor:
        return False
    dispatch = connection.dispatch
    return not (
        dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or getattr(connection, "_echo", False)
        or connection.get_execution_options().get("schema_translate_map")
    )
