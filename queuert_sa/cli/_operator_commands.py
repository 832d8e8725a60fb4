"""The operator commands ``chains list``, ``jobs list``, ``chain show`` and ``cleanup``
(``--dry-run``), their shared options (``--db``, ``--table-prefix``, ``--schema``, ``--json``, ``--type``),
and :func:`operator_client`, the ``Queuert`` they read and delete through.

They need no application code: the client has an empty ``JobTypes``, and inputs
and outputs are shown as the JSON stored in the database. Imports click.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Generator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import click
from sqlalchemy import create_engine, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from queuert_sa._client import Queuert
from queuert_sa._entities import CleanupPreview
from queuert_sa._errors import ChainNotFoundError, InvalidCursorError, QueuertError
from queuert_sa._job_types import JobTypes
from queuert_sa._rules import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from queuert_sa.models import DEFAULT_TABLE_PREFIX, JobStatus, create_models

from ._format import (
    CHAIN_HEADERS,
    JOB_HEADERS,
    chain_data,
    chain_row,
    format_duration,
    format_table,
    job_data,
    job_row,
    parse_duration,
    parse_time,
    to_json,
)
from ._report import missing_chain_message, read_chain_report
from ._untaken_lines import untaken_lines

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable read when ``--db`` is not given.
DATABASE_URL_ENV = "QUEUERT_DATABASE_URL"


@contextmanager
def operator_client(url: str, *, table_prefix: str, schema: str | None) -> Generator[Queuert]:
    """A ``Queuert`` with no job types on ``url``; library and database errors become
    click errors (exit 1, the message, no traceback). The engine is disposed on exit.
    """
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise click.BadParameter(
            "not a database URL; expected e.g. postgresql+psycopg://user@host/dbname or "
            "sqlite:///path/to/file.db.",
            param_hint="'--db'",
        ) from None
    where = parsed.render_as_string(hide_password=True)
    try:
        models = create_models(table_prefix=table_prefix, schema=schema)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--table-prefix'") from None
    database = parsed.database or ""
    if (
        parsed.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and not parsed.query.get("uri")
        and not os.path.exists(database)
    ):
        # Connecting would create an empty file; a typo should not leave one behind.
        raise click.ClickException(f"the SQLite database file {database} does not exist.")
    try:
        engine = create_engine(parsed)
    except sa_exc.NoSuchModuleError as exc:
        raise click.BadParameter(str(exc), param_hint="'--db'") from None
    except ImportError as exc:
        raise click.ClickException(
            f"the database driver for {parsed.drivername} is not installed ({exc}); for "
            "PostgreSQL: pip install 'queuert_sa[postgres]'."
        ) from None
    try:
        yield Queuert(engine, JobTypes(), models=models)
    except InvalidCursorError as exc:
        raise click.BadParameter(str(exc), param_hint="'--cursor'") from None
    except QueuertError as exc:
        raise click.ClickException(str(exc)) from None
    except sa_exc.SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
        first_line = (
            str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        )
        raise click.ClickException(f"database {where}: {first_line}") from None
    finally:
        engine.dispose()


def db_options(fn: F) -> F:
    """``--db``, ``--table-prefix`` and ``--schema``, shared by the operator commands."""
    fn = click.option(
        "--schema",
        default=None,
        metavar="NAME",
        help="Schema of queuert's tables. Default: the connection's default schema.",
    )(fn)
    fn = click.option(
        "--table-prefix",
        default=DEFAULT_TABLE_PREFIX,
        show_default=True,
        metavar="PREFIX",
        help="Prefix of queuert's table names (as given to create_models).",
    )(fn)
    return click.option(
        "--db",
        "db_url",
        envvar=DATABASE_URL_ENV,
        show_envvar=True,
        required=True,
        metavar="URL",
        help="SQLAlchemy URL of the database, e.g. postgresql+psycopg://app@db/app or "
        "sqlite:///app.db.",
    )(fn)


def duration_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A ``DURATION`` option's value as a timedelta (see :func:`parse_duration`)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def time_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A ``TIME`` option's value as an aware UTC datetime (see :func:`parse_time`)."""
    if value is None:
        return None
    try:
        return parse_time(value, now=dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead of text (ids as strings, times in ISO 8601, UTC).",
)
type_option = click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only chains of this type (the type of their first job). Repeatable.",
)


def page_options(noun: str) -> Callable[[F], F]:
    """``--since``, ``--before``, ``--limit``, ``--cursor`` and ``--asc`` of a listing of ``noun``."""

    def decorate(fn: F) -> F:
        fn = click.option("--asc", is_flag=True, help="Oldest first. Default: newest first.")(fn)
        fn = click.option(
            "--cursor",
            metavar="CURSOR",
            help="Print the next page: the cursor printed after the previous page (repeat its "
            "filters and --asc).",
        )(fn)
        fn = click.option(
            "--limit",
            type=click.IntRange(1, MAX_PAGE_SIZE),
            metavar="N",
            default=DEFAULT_PAGE_SIZE,
            show_default=True,
            help=f"{noun.capitalize()} per page.",
        )(fn)
        fn = click.option(
            "--before",
            metavar="TIME",
            callback=time_callback,
            help=f"Only {noun} created before TIME (same forms as --since).",
        )(fn)
        return click.option(
            "--since",
            metavar="TIME",
            callback=time_callback,
            help=f"Only {noun} created at or after TIME: ISO 8601 (UTC unless it has an offset, "
            "e.g. 2026-11-22T05:00) or a duration before now (30m, 2h, 7d).",
        )(fn)

    return decorate


def status_option(help: str) -> Callable[[F], F]:
    """``--status``, repeatable, one of the job statuses."""
    return click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice([status.value for status in JobStatus]),
        help=help,
    )


@click.group()
def chains() -> None:
    """List chains, and cancel one."""


@click.group()
def jobs() -> None:
    """List jobs, trigger pending ones, retry failed ones."""


@chains.command("list")
@db_options
@type_option
@status_option("Only chains whose current (latest) job has this status. Repeatable.")
@page_options("chains")
@json_option
def list_chains(
    db_url: str,
    table_prefix: str,
    schema: str | None,
    types: tuple[str, ...],
    statuses: tuple[str, ...],
    since: dt.datetime | None,
    before: dt.datetime | None,
    limit: int,
    cursor: str | None,
    asc: bool,
    as_json: bool,
) -> None:
    """List chains, newest first: id, type, status, current step, times.

    A chain's status is its current (latest) job's status. When more chains
    match than --limit, the last line gives the --cursor for the next page.
    """
    order: Literal["asc", "desc"] = "asc" if asc else "desc"
    with operator_client(db_url, table_prefix=table_prefix, schema=schema) as client:
        page = client.list_chains(
            types=types or None,
            statuses=statuses or None,
            created_since=since,
            created_before=before,
            order=order,
            cursor=cursor,
            limit=limit,
        )
        if as_json:
            data = {"chains": [chain_data(c) for c in page], "next_cursor": page.next_cursor}
            click.echo(to_json(data))
            return
        if not page.items:
            click.echo("no chains found")
        else:
            for line in format_table(CHAIN_HEADERS, [chain_row(c) for c in page]):
                click.echo(line)
        for line in untaken_lines(client):
            click.echo(line, err=True)  # stderr: the table on stdout stays as it was
    if page.next_cursor is not None:
        click.echo(f"next page: --cursor {page.next_cursor}")


@jobs.command("list")
@db_options
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Only jobs of this type (the job's own type). Repeatable.",
)
@click.option(
    "--chain-type",
    "chain_types",
    multiple=True,
    metavar="TYPE",
    help="Only jobs of chains of this type (the type of their first job). Repeatable.",
)
@status_option("Only jobs with this status. Repeatable.")
@click.option(
    "--chain",
    "chain_ids",
    multiple=True,
    metavar="ID",
    type=click.UUID,
    help="Only the jobs of this chain. Repeatable.",
)
@page_options("jobs")
@json_option
def list_jobs(
    db_url: str,
    table_prefix: str,
    schema: str | None,
    types: tuple[str, ...],
    chain_types: tuple[str, ...],
    statuses: tuple[str, ...],
    chain_ids: tuple[uuid.UUID, ...],
    since: dt.datetime | None,
    before: dt.datetime | None,
    limit: int,
    cursor: str | None,
    asc: bool,
    as_json: bool,
) -> None:
    """List jobs of any chain, newest first: id, type, status, chain, step, attempts, times.

    Every step of every chain is a job: a failed chain's failed job, a
    pending job scheduled for later, a continuation. When more jobs match
    than --limit, the last line gives the --cursor for the next page.
    """
    order: Literal["asc", "desc"] = "asc" if asc else "desc"
    with operator_client(db_url, table_prefix=table_prefix, schema=schema) as client:
        page = client.list_jobs(
            types=types or None,
            chain_types=chain_types or None,
            statuses=statuses or None,
            chain_ids=chain_ids or None,
            created_since=since,
            created_before=before,
            order=order,
            cursor=cursor,
            limit=limit,
        )
    if as_json:
        click.echo(to_json({"jobs": [job_data(j) for j in page], "next_cursor": page.next_cursor}))
        return
    if not page.items:
        click.echo("no jobs found")
    else:
        for line in format_table(JOB_HEADERS, [job_row(j) for j in page]):
            click.echo(line)
    if page.next_cursor is not None:
        click.echo(f"next page: --cursor {page.next_cursor}")


@click.group()
def chain() -> None:
    """Inspect one chain (read only)."""


@chain.command("show")
@click.argument("chain_id", metavar="ID", type=click.UUID)
@db_options
@json_option
def show_chain(
    chain_id: uuid.UUID, db_url: str, table_prefix: str, schema: str | None, as_json: bool
) -> None:
    """Show chain ID: its status and output, each job, and blockers.

    ID is the chain's id (its first job's id). Lists every job with its
    attempt count, schedule and last error (its last line; --json has the
    full text), the chains each job waits for, and the jobs of other chains
    waiting for this one.
    """
    with (
        operator_client(db_url, table_prefix=table_prefix, schema=schema) as client,
        Session(client.engine) as session,
    ):
        try:
            report = read_chain_report(client, chain_id, session)
        except ChainNotFoundError:
            where = client.engine.url.render_as_string(hide_password=True)
            message = missing_chain_message(client, chain_id, where, session)
            raise click.ClickException(message) from None
    if as_json:
        click.echo(to_json(report.to_data()))
    else:
        for line in report.to_lines():
            click.echo(line)


@click.command()
@db_options
@click.option(
    "--older-than",
    required=True,
    metavar="DURATION",
    callback=duration_callback,
    help="Delete chains completed more than DURATION ago: 7d, 12h, 30m, 90s (combined: 1d12h).",
)
@click.option(
    "--failed-older-than",
    metavar="DURATION",
    callback=duration_callback,
    default=None,
    help="Also delete chains that failed more than DURATION ago. Default: keep them.",
)
@click.option(
    "--cancelled-older-than",
    metavar="DURATION",
    callback=duration_callback,
    default=None,
    help="Also delete chains cancelled more than DURATION ago. Default: keep them.",
)
@type_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    default=1000,
    show_default=True,
    help="Chains examined per transaction.",
)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Stop after this many batches. Default: until no old chain is left.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Delete nothing: print what would be deleted, chains and jobs per chain type.",
)
@json_option
def cleanup(
    db_url: str,
    table_prefix: str,
    schema: str | None,
    older_than: dt.timedelta,
    failed_older_than: dt.timedelta | None,
    cancelled_older_than: dt.timedelta | None,
    types: tuple[str, ...],
    batch_size: int,
    max_batches: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete chains completed more than DURATION ago (retention).

    Open chains are never deleted, nor a chain that a kept chain declares as
    a blocker. Failed and cancelled chains are kept unless their own
    --failed-older-than / --cancelled-older-than is given. Each batch is its own short transaction, so it is
    safe to run while workers run, e.g. from cron. --dry-run locks and
    deletes nothing, and counts what a run now would delete.
    """
    if dry_run:
        with operator_client(db_url, table_prefix=table_prefix, schema=schema) as client:
            preview = client.preview_cleanup(
                older_than=older_than,
                failed_older_than=failed_older_than,
                cancelled_older_than=cancelled_older_than,
                types=types or None,
                batch_size=batch_size,
                max_batches=max_batches,
            )
        print_preview(preview, older_than, as_json=as_json)
        return
    with operator_client(db_url, table_prefix=table_prefix, schema=schema) as client:
        deleted = client.cleanup(
            older_than=older_than,
            failed_older_than=failed_older_than,
            cancelled_older_than=cancelled_older_than,
            types=types or None,
            batch_size=batch_size,
            max_batches=max_batches,
        )
    if as_json:
        click.echo(to_json({"deleted": deleted}))
    else:
        noun = "chain" if deleted == 1 else "chains"
        click.echo(
            f"deleted {deleted} {noun} completed more than {format_duration(older_than)} ago"
        )


def print_preview(preview: CleanupPreview, older_than: dt.timedelta, *, as_json: bool) -> None:
    """What ``cleanup --dry-run`` prints: the totals, then chains and jobs per chain type."""
    if as_json:
        by_type = {
            name: {"chains": chains, "jobs": jobs}
            for name, (chains, jobs) in preview.by_type.items()
        }
        data = {"dry_run": True, "chains": preview.chains, "jobs": preview.jobs}
        click.echo(to_json({**data, "by_type": by_type}))
        return
    noun = "chain" if preview.chains == 1 else "chains"
    click.echo(
        f"would delete {preview.chains} {noun} ({preview.jobs} "
        f"{'job' if preview.jobs == 1 else 'jobs'}) completed more than "
        f"{format_duration(older_than)} ago; nothing was deleted (--dry-run)"
    )
    if preview.by_type:
        rows = [[name, str(c), str(j)] for name, (c, j) in preview.by_type.items()]
        for line in format_table(("CHAIN TYPE", "CHAINS", "JOBS"), rows):
            click.echo(line)
