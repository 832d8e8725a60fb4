"""The batch statements on PostgreSQL's driver cursor: rows as arrays, one statement (private).

A batch of rows (the first jobs of a ``start_chains``, the jobs of a group
commit) is one INSERT or UPDATE whose parameters are arrays, ``unnest`` on the
server: one statement whatever the batch size, parsed, planned and run once.
They run as :mod:`._fastpath`'s statements do, on the connection's DBAPI
cursor inside SQLAlchemy's transaction, with its errors; :mod:`._exec` decides
when (the :attr:`~.Capabilities.array_insert` capability).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import is_, itemgetter
from typing import Any, cast

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.sql import sqltypes

from ._fastpath import Processor, convert, execute_on_cursor, once


def array_insert_for(
    dialect: Dialect, table: Table, columns: tuple[str, ...], *, prepare: bool
) -> ArrayInsert:
    """The one-statement batch INSERT of ``columns`` into ``table``, once per dialect."""
    return once(
        dialect,
        ("array_insert", table, columns),
        lambda: ArrayInsert(table, columns, dialect, prepare=prepare),
    )


def array_update_for(
    dialect: Dialect,
    table: Table,
    key: str,
    per_row: tuple[str, ...],
    shared: tuple[str, ...],
    *,
    prepare: bool,
) -> ArrayUpdate:
    """The one-statement batch UPDATE of ``table`` (see :class:`ArrayUpdate`), once per dialect."""
    return once(
        dialect,
        ("array_update", table, key, per_row, shared),
        lambda: ArrayUpdate(table, key, per_row, shared, dialect, prepare=prepare),
    )


class ArrayInsert:
    """Many rows in one INSERT on PostgreSQL, from arrays of their values, prepared once.

    One statement whatever the batch size, instead of one execution per row:
    the server parses, plans and runs it once. psycopg dumps each array element
    in Python, most of a batched start's Python time, so only the columns that
    differ between rows are arrays (``unnest``): a column holding the same
    object in every row (the batch's ``now``, its status, its type) is sent
    once, as a scalar; one holding another column's objects (a chain's id is
    its first job's id) reads that column's values; and a JSONB column's
    values go as one JSON array (``jsonb_array_elements``), serialised in one
    call. Each such shape of a batch is its own statement, built on first use.
    """

    __slots__ = (
        "_columns",
        "_jsonb",
        "_prepare",
        "_row_values",
        "_shapes",
        "_table",
        "_types",
        "sql",
    )

    #: Statements kept, one per shape (how each column is sent).
    MAX_SHAPES = 64

    def __init__(
        self, table: Table, columns: Sequence[str], dialect: Dialect, *, prepare: bool
    ) -> None:
        if len(columns) < 2:  # pragma: no cover - every caller inserts several columns
            raise ValueError("ArrayInsert takes two or more columns")
        preparer = dialect.identifier_preparer
        self._table = preparer.format_table(table)
        self._columns = [
            (name, preparer.quote(name), _bind_processor(table, name, dialect)) for name in columns
        ]
        self._row_values = itemgetter(*columns)
        self._types = {name: str(table.c[name].type.compile(dialect=dialect)) for name in columns}
        self._jsonb = frozenset(
            name
            for name, _, processor in self._columns
            if processor is not None
            and self._types[name] == "JSONB"
            and isinstance(table.c[name].type.dialect_impl(dialect), sqltypes.JSON)
        )
        self._shapes: dict[tuple[Any, ...], str] = {}
        self._prepare = prepare
        #: The statement of a batch in which every column differs, for messages.
        self.sql = self._statement(
            tuple(_JSON if name in self._jsonb else _ARRAY for name in columns)
        )

    def _statement(self, shape: tuple[Any, ...]) -> str:
        """The INSERT for ``shape``: how each column is sent (``_ARRAY``, ``_JSON``,
        ``_SCALAR``, ``_NULL``, or ``(_SAME, other column)``)."""
        sources: list[str] = []
        aliases: list[str] = []
        read: dict[str, str] = {}
        for (name, quoted, _), kind in zip(self._columns, shape, strict=True):
            cast_to = self._types[name]
            if kind == _ARRAY:
                # Binary parameters: psycopg quotes each element of a text array with
                # regular expressions.
                sources.append(f"unnest(%({name})b::{cast_to}[])")
                aliases.append(quoted)
                read[name] = f"v.{quoted}"
            elif kind == _JSON:
                # A JSON null element is a None: SQL NULL, as in an array.
                sources.append(f"jsonb_array_elements(%({name})b::JSONB)")
                aliases.append(quoted)
                read[name] = f"NULLIF(v.{quoted}, 'null'::JSONB)"
            elif kind == _SCALAR:
                read[name] = f"%({name})b::{cast_to}"
            elif kind == _NULL:
                read[name] = f"NULL::{cast_to}"
        for name, kind in zip(self._types, shape, strict=True):
            if isinstance(kind, tuple):
                read[name] = read[cast("tuple[str, str]", kind)[1]]
        return (
            f"INSERT INTO {self._table} ({', '.join(q for _, q, _ in self._columns)}) "
            f"SELECT {', '.join(read[name] for name in self._types)} "
            f"FROM ROWS FROM ({', '.join(sources)}) AS v({', '.join(aliases)})"
        )

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` (two or more) in ``connection``'s transaction."""
        by_column = zip(*map(self._row_values, rows), strict=True)
        params: dict[str, Any] = {}
        shape: list[Any] = []
        sent: list[tuple[str, tuple[Any, ...]]] = []  # the columns sent row by row
        for (name, _, processor), values in zip(self._columns, by_column, strict=True):
            first = values[0]
            if all(map(is_, values, repeat(first))):
                if first is None:
                    shape.append(_NULL)
                else:
                    params[name] = convert(processor, [first], self.sql)[0] if processor else first
                    shape.append(_SCALAR)
                continue
            same = next(
                (
                    other
                    for other, seen in sent
                    if seen[0] is first
                    and self._types[other] == self._types[name]
                    and all(map(is_, values, seen))
                ),
                None,
            )
            if same is not None:
                shape.append((_SAME, same))
                continue
            sent.append((name, values))
            shape.append(self._send(name, processor, values, params))
        if not sent:  # every column shared: one column still gives the rows' count
            name, _, processor = self._columns[0]
            shape[0] = self._send(name, processor, tuple(row[name] for row in rows), params)
        key = tuple(shape)
        sql = self._shapes.get(key)
        if sql is None:
            if len(self._shapes) >= self.MAX_SHAPES:
                self._shapes.clear()
            sql = self._shapes[key] = self._statement(key)
        execute_on_cursor(connection, sql, params, prepare=self._prepare)

    def _send(
        self,
        name: str,
        processor: Processor | None,
        values: tuple[Any, ...],
        params: dict[str, Any],
    ) -> str:
        """Put column ``name``'s ``values`` (one per row) in ``params``; how they are sent."""
        if processor is None:
            params[name] = list(values)
            return _ARRAY
        if name in self._jsonb:
            # The column type's own processor over the list: one serialisation
            # (the connection's JSON dumps function) for the whole column.
            params[name] = convert(processor, [list(values)], self.sql)[0]
            return _JSON
        params[name] = convert(processor, values, self.sql)
        return _ARRAY


#: How :class:`ArrayInsert` sends a column: an array, a JSON array, one value, NULL,
#: or (with the other column's name) the values of another column.
_ARRAY, _JSON, _SCALAR, _NULL, _SAME = "array", "json", "scalar", "null", "same"


class ArrayUpdate:
    """Many rows updated by one UPDATE on PostgreSQL: each row's values as arrays, ``unnest``.

    ``UPDATE t SET c = v.c, ..., s = %(s)s, ... FROM unnest(...) AS v(key, c, ...)
    WHERE t.key = v.key``: one statement whatever the batch size (prepared once),
    instead of one execution per row.
    """

    __slots__ = ("_arrays", "_prepare", "_shared", "sql")

    def __init__(
        self,
        table: Table,
        key: str,
        per_row: Sequence[str],
        shared: Sequence[str],
        dialect: Dialect,
        *,
        prepare: bool,
    ) -> None:
        preparer = dialect.identifier_preparer
        name = preparer.format_table(table)
        arrayed = (key, *per_row)
        arrays = ", ".join(
            f"%(a_{c})s::{table.c[c].type.compile(dialect=dialect)}[]" for c in arrayed
        )
        sets = [f"{preparer.quote(c)} = v.{preparer.quote(c)}" for c in per_row]
        sets += [f"{preparer.quote(c)} = %(s_{c})s" for c in shared]
        self.sql = (
            f"UPDATE {name} SET {', '.join(sets)} "
            f"FROM unnest({arrays}) AS v({', '.join(preparer.quote(c) for c in arrayed)}) "
            f"WHERE {name}.{preparer.quote(key)} = v.{preparer.quote(key)}"
        )
        self._arrays = [(c, _bind_processor(table, c, dialect)) for c in arrayed]
        self._shared = [(c, _bind_processor(table, c, dialect)) for c in shared]
        self._prepare = prepare

    def execute(
        self, connection: Connection, rows: Sequence[Mapping[str, Any]], shared: Mapping[str, Any]
    ) -> None:
        """Update ``rows`` in ``connection``'s transaction, with ``shared`` on every one."""
        params: dict[str, Any] = {}
        for name, processor in self._arrays:
            values = [row[name] for row in rows]
            params[f"a_{name}"] = (
                convert(processor, values, self.sql) if processor is not None else values
            )
        for name, processor in self._shared:
            value = shared[name]
            if processor is not None and value is not None:
                value = convert(processor, [value], self.sql)[0]
            params[f"s_{name}"] = value
        execute_on_cursor(connection, self.sql, params, prepare=self._prepare)


def _bind_processor(table: Table, column: str, dialect: Dialect) -> Processor | None:
    return cast(
        "Processor | None", table.c[column].type.dialect_impl(dialect).bind_processor(dialect)
    )
