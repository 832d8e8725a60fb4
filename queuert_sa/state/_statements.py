"""The hot statements as SQLAlchemy objects: acquire, complete, lock, renew.

A worker runs these for every job, so each is built once per shape (cached
here) rather than per call: constructing a statement and its cache key costs
more Python time than the server spends running it. :mod:`.operations` runs
them through :mod:`._exec`, which either hands them to ``Session.execute`` or
compiles them once for the driver's cursor; one object serves both paths.
"""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    Update,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    select,
    union_all,
    update,
)

from queuert_sa.models import JobStatus, Models

#: The status a pending job has, as a SQL literal: partial indexes are defined
#: with it, and a bound parameter would not let every planner match them.
_PENDING: ColumnElement[str] = literal_column("'pending'", String())


#: How many of each type's due jobs the several-types acquisition looks at before it falls
#: back to reading them all: rows other acquirers hold are skipped, one by one.
HEADS_PER_TYPE = 1000


@functools.cache
def acquire(
    models: Models,
    skip_locked: bool,
    with_exclude: bool,
    timeouts: tuple[tuple[str, int], ...],
    type_names: tuple[str, ...] | None = None,
    many: bool = False,
    whole_transaction: bool = False,
) -> Update:
    # Built once per worker shape: constructing the statement (and its cache
    # key) costs more Python time than the server spends running it. With
    # ``type_names`` they are part of the statement (the driver-level form
    # has no expanding parameters). ``many``: up to ``:limit`` rows, not one.
    table = models.job_table
    due = _due(table, with_exclude)
    candidate = (
        select(table.c.id)
        .where(
            table.c.type_name.in_(bindparam("type_names", expanding=True))
            if type_names is None
            else table.c.type_name.in_([literal(name, String()) for name in type_names]),
            *due,
        )
        # The acquisition index's order: higher priority first, then due time.
        .order_by(*_acquisition_order(table))
        .limit(bindparam("limit", type_=Integer()) if many else 1)
    )
    if skip_locked:
        candidate = candidate.with_for_update(skip_locked=True, key_share=True)
    if type_names is not None and len(type_names) > 1 and not many:
        candidate = _first_of_heads(table, type_names, due, skip_locked, candidate)
    returning: list[Any] = list(table.c)
    settings = ["idle_in_transaction_session_timeout", "statement_timeout"]
    if whole_transaction:
        # PostgreSQL 17+: also the transaction as a whole, counted from here.
        settings.append("transaction_timeout")
    for setting in settings if timeouts else ():
        # SET LOCAL of the attempt's timeout, in the acquiring round trip (it
        # runs once, for the row acquired; other types keep the current value).
        value = case(
            *((table.c.type_name == literal(name), literal(f"{ms}ms")) for name, ms in timeouts),
            else_=func.current_setting(setting),
        )
        returning.append(func.set_config(setting, value, True).label(f"_{setting}"))
    base = (
        update(table)
        .where(table.c.id.in_(candidate) if many else table.c.id == candidate.scalar_subquery())
        .values(
            status=JobStatus.RUNNING,
            attempt=table.c.attempt + 1,
            last_attempt_at=bindparam("now", type_=table.c.last_attempt_at.type),
            leased_by=bindparam("worker_id", type_=table.c.leased_by.type),
            leased_until=bindparam("lease_until", type_=table.c.leased_until.type),
        )
    )
    return cast("Update", base.returning(*returning))  # pyright: ignore[reportUnknownMemberType]


def _due(table: Any, with_exclude: bool) -> list[ColumnElement[bool]]:
    conditions = [
        table.c.status == _PENDING,
        table.c.scheduled_at <= bindparam("now", type_=table.c.scheduled_at.type),
    ]
    if with_exclude:
        conditions.append(
            table.c.id.not_in(bindparam("exclude_ids", expanding=True, type_=table.c.id.type))
        )
    return conditions


def _acquisition_order(table: Any) -> tuple[Any, ...]:
    return (table.c.priority.desc(), table.c.scheduled_at, table.c.id)


def _first_of_heads(
    table: Table,
    type_names: tuple[str, ...],
    due: list[ColumnElement[bool]],
    skip_locked: bool,
    every_due: Select[Any],
) -> Select[Any]:
    """The first due job of several types, read from each type's head of the index.

    One index range per type, merged in acquisition order, and the first row
    not held by another acquirer locked (PostgreSQL). ``type_name IN (...)``
    cannot be read in that order from an index led by the type, so it sorts
    every due job of the types first (a Seq Scan and Sort, 200 ms at 100k).
    Should every head row of every type be held (more acquirers than
    :data:`HEADS_PER_TYPE` on one type), the statement goes on to
    ``every_due``, the plain form; otherwise that part never runs.
    """
    arms = [
        select(table.c.id, table.c.priority, table.c.scheduled_at)
        .where(table.c.type_name == literal(name, String()), *due)
        .order_by(*_acquisition_order(table))
        # Nothing is held on a single-writer database: each type's first row will do.
        .limit(HEADS_PER_TYPE if skip_locked else 1)
        .subquery()
        for name in type_names
    ]
    heads = union_all(*(select(arm.c.id, arm.c.priority, arm.c.scheduled_at) for arm in arms))
    head = heads.subquery("heads")
    job = table.alias("locked_job")
    first = (
        select(job.c.id)
        .select_from(head.join(job, job.c.id == head.c.id))
        .where(*_due(job, False))
        .order_by(head.c.priority.desc(), head.c.scheduled_at, head.c.id)
        .limit(1)
    )
    if not skip_locked:
        return first
    first = first.with_for_update(of=job, skip_locked=True, key_share=True)
    either = union_all(select(first.subquery().c.id), select(every_due.subquery().c.id))
    picked = either.subquery("picked")
    return select(picked.c.id).limit(1)


@functools.cache
def complete(models: Models) -> Update:
    table = models.job_table
    blocker = models.job_blocker_table
    # Whether any job declares this chain as a blocker: most chains have no
    # dependents, and then the unblocking step is skipped (no extra round trip).
    dependents = select(blocker.c.job_id).where(blocker.c.blocked_by_chain_id == table.c.chain_id)
    return _completion(models).returning(dependents.exists().label("has_dependents"))


def _completion(models: Models) -> Update:
    table = models.job_table
    return (
        update(table)
        .where(table.c.id == bindparam("job_id", type_=table.c.id.type))
        .values(
            status=JobStatus.COMPLETED,
            output=bindparam("output", type_=table.c.output.type),
            completed_at=bindparam("now", type_=table.c.completed_at.type),
            completed_by=bindparam("worker_id", type_=table.c.completed_by.type),
            leased_by=None,
            leased_until=None,
            last_attempt_error=None,
        )
    )


@functools.cache
def update_by_key(table: Table, key: str, columns: tuple[str, ...]) -> Update:
    """``UPDATE table SET column = :p_column, ... WHERE key = :p_key``, run once per row."""
    return (
        update(table)
        .where(table.c[key] == bindparam(f"p_{key}", type_=table.c[key].type))
        .values({name: bindparam(f"p_{name}", type_=table.c[name].type) for name in columns})
    )


@functools.cache
def lock(models: Models, skip_locked: bool) -> Select[Any]:
    table = models.job_table
    stmt = select(table).where(table.c.id == bindparam("job_id", type_=table.c.id.type))
    if skip_locked:
        stmt = stmt.with_for_update(key_share=True)
    return stmt


@functools.cache
def renew(models: Models) -> Update:
    table = models.job_table
    return (
        update(table)
        .where(
            table.c.id == bindparam("job_id", type_=table.c.id.type),
            table.c.leased_by == bindparam("worker_id", type_=table.c.leased_by.type),
            table.c.attempt == bindparam("attempt_number", type_=table.c.attempt.type),
            table.c.status == JobStatus.RUNNING,
        )
        .values(leased_until=bindparam("new_leased_until", type_=table.c.leased_until.type))
        .returning(table.c.id)
    )
