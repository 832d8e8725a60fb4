"""The ``queuert-sa`` command line: ``demo``, ``worker``, and the operator commands
``chains list``, ``chain show`` and ``cleanup``.

click is an optional dependency (``pip install 'queuert_sa[cli]'``). This module
imports without it; :func:`main` then explains what to install and exits 2.

The operator commands read (and ``cleanup`` deletes) through a ``Queuert`` with
an empty ``JobTypes``: they need no application code, and show inputs and
outputs as the JSON stored in the database.

Exit codes: 0 success (the worker stopped gracefully), 1 an error at run time
(the application raised while being imported, the demo timed out, a library
error such as missing tables or an unreachable database, an unknown chain id),
2 a usage error (bad option, bad ``APP_PATH``, the target is not a ``Worker``,
a malformed ``--db`` URL, duration, time or cursor), and ``128 + signal`` when a
second SIGINT/SIGTERM abandons in-flight attempts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from queuert_sa import __version__
from queuert_sa._client import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Queuert
from queuert_sa._errors import (
    ChainNotFoundError,
    InvalidCursorError,
    QueuertError,
)
from queuert_sa._job_types import JobTypes
from queuert_sa._worker import Worker
from queuert_sa.bench import PHASES
from queuert_sa.models import DEFAULT_TABLE_PREFIX, JobStatus, create_models

from ._app import AppPathError as AppPathError
from ._app import import_worker as import_worker
from ._format import CHAIN_HEADERS, chain_data, chain_row, to_json
from ._format import format_duration as format_duration
from ._format import format_table as format_table
from ._format import parse_duration as parse_duration
from ._format import parse_time as parse_time
from ._report import missing_chain_message, read_chain_report

if TYPE_CHECKING:
    import click

    from queuert_sa._async_worker import AsyncWorker

__all__ = [
    "AppPathError",
    "build_cli",
    "format_duration",
    "format_table",
    "import_worker",
    "main",
    "parse_duration",
    "parse_time",
]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("queuert_sa.cli")

INSTALL_HINT = "pip install 'queuert_sa[cli]'"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


async def _run_async(worker: AsyncWorker) -> bool:
    try:
        return await worker.run()
    finally:
        await worker.client.engine.dispose()


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


#: Environment variable read when ``--db`` is not given.
DATABASE_URL_ENV = "QUEUERT_DATABASE_URL"


@contextmanager
def operator_client(url: str, *, table_prefix: str, schema: str | None) -> Generator[Queuert]:
    """A ``Queuert`` with no job types on ``url``; library and database errors become
    click errors (exit 1, the message, no traceback). The engine is disposed on exit.
    """
    import click
    from sqlalchemy import create_engine, make_url
    from sqlalchemy import exc as sa_exc

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


def build_cli() -> click.Group:
    """Build the ``queuert-sa`` click group (imports click; see :func:`main`)."""
    import click

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, "-V", "--version", prog_name="queuert-sa")
    def cli() -> None:
        """Transactional job chains in your own database, for SQLAlchemy.

        \b
        Examples:
          queuert-sa demo
          queuert-sa worker myapp.jobs:worker
          queuert-sa chains list --db sqlite:///app.db --status running
          queuert-sa chain show 0190a7c2-8d3e-7b61-9a53-3c9f4e2d1a7b --db "$DATABASE_URL"
          queuert-sa cleanup --db "$DATABASE_URL" --older-than 30d

        The operator commands (chains, chain, cleanup) read --db from
        QUEUERT_DATABASE_URL when it is not given.
        """

    @cli.command()
    @click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, writable=True),
        default=None,
        help="SQLite file to use (created if missing). Default: demo.db in a new temporary "
        "directory, kept afterwards.",
    )
    def demo(db_path: str | None) -> None:
        """Run the demo chain end to end on an embedded SQLite file.

        Starts a sign-up chain (signup -> provision-account -> send-welcome-email)
        in the same transaction as a new Account row, runs a worker until the chain
        completes, and prints each step and the chain's output. The source is the
        module queuert_sa.demo.
        """
        from queuert_sa.demo import run_demo

        if db_path is not None:
            directory = os.path.dirname(os.path.abspath(db_path))
            if not os.path.isdir(directory):
                raise click.BadParameter(
                    f"the directory {directory} does not exist; create it or pick another path.",
                    param_hint="'--db'",
                )
        _configure_logging("warning")
        try:
            run_demo(db_path, out=click.echo)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from exc

    @cli.command()
    @click.argument("app_path", metavar="APP_PATH")
    @click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Logging level of the root logger (written to stderr).",
    )
    def worker(app_path: str, log_level: str) -> None:
        """Run the worker named by APP_PATH until SIGINT/SIGTERM.

        APP_PATH is module:attribute, e.g. myapp.jobs:worker, naming a
        queuert_sa.Worker or a function that returns one (myapp.jobs:create_worker).
        The current directory is put first on sys.path, so run it from your
        project's root.

        On SIGINT or SIGTERM the worker stops taking jobs, lets in-flight attempts
        finish (up to its shutdown_grace) and exits 0; a second signal exits at once,
        leaving in-flight jobs to be retried.
        """
        _configure_logging(log_level)
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            loaded = import_worker(app_path)
        except AppPathError as exc:
            raise click.BadParameter(exc.problem, param_hint="APP_PATH") from exc
        except Exception as exc:
            # The application's own code failed: show where, then a one-line summary.
            traceback.print_exc()
            raise click.ClickException(
                f"loading {app_path!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        engine_url = loaded.client.engine.url.render_as_string(hide_password=True)
        log.info("running %s from %s on %s", loaded, app_path, engine_url)
        try:
            clean = loaded.run() if isinstance(loaded, Worker) else asyncio.run(_run_async(loaded))
        except QueuertError as exc:
            raise click.ClickException(str(exc)) from exc
        if not clean:
            log.error(
                "queuert-sa worker %s stopped with attempts still running after the "
                "shutdown grace period; their transactions roll back as the process exits",
                loaded.worker_id,
            )
            sys.exit(1)
        log.info("queuert-sa worker %s stopped", loaded.worker_id)

    # --- operator commands ------------------------------------------------------------

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

    def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
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

    @cli.group()
    def chains() -> None:
        """List chains (read only)."""

    @chains.command("list")
    @db_options
    @type_option
    @click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice([status.value for status in JobStatus]),
        help="Only chains whose current (latest) job has this status. Repeatable.",
    )
    @click.option(
        "--since",
        metavar="TIME",
        callback=time_option,
        help="Only chains created at or after TIME: ISO 8601 (UTC unless it has an offset, "
        "e.g. 2026-11-22T05:00) or a duration before now (30m, 2h, 7d).",
    )
    @click.option(
        "--before",
        metavar="TIME",
        callback=time_option,
        help="Only chains created before TIME (same forms as --since).",
    )
    @click.option(
        "--limit",
        type=click.IntRange(1, MAX_PAGE_SIZE),
        metavar="N",
        default=DEFAULT_PAGE_SIZE,
        show_default=True,
        help="Chains per page.",
    )
    @click.option(
        "--cursor",
        metavar="CURSOR",
        help="Print the next page: the cursor printed after the previous page (repeat its "
        "filters and --asc).",
    )
    @click.option("--asc", is_flag=True, help="Oldest first. Default: newest first.")
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
        if page.next_cursor is not None:
            click.echo(f"next page: --cursor {page.next_cursor}")

    @cli.group()
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
        from sqlalchemy.orm import Session

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

    @cli.command()
    @db_options
    @click.option(
        "--older-than",
        required=True,
        metavar="DURATION",
        callback=duration_option,
        help="Delete chains completed more than DURATION ago: 7d, 12h, 30m, 90s (combined: 1d12h).",
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
    @json_option
    def cleanup(
        db_url: str,
        table_prefix: str,
        schema: str | None,
        older_than: dt.timedelta,
        types: tuple[str, ...],
        batch_size: int,
        max_batches: int | None,
        as_json: bool,
    ) -> None:
        """Delete chains completed more than DURATION ago (retention).

        Open chains are never deleted, nor a completed chain that a kept chain
        declares as a blocker. Each batch is its own short transaction, so it is
        safe to run while workers run, e.g. from cron.
        """
        with operator_client(db_url, table_prefix=table_prefix, schema=schema) as client:
            deleted = client.cleanup(
                older_than=older_than,
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

    @cli.command()
    @click.option(
        "--db",
        "db_url",
        default=None,
        metavar="URL",
        help="Database to measure (its own schema or tables, removed afterwards). "
        "Default: a temporary SQLite file.",
    )
    @click.option("--chains", default=5000, show_default=True, type=click.IntRange(1))
    @click.option("--concurrency", default=10, show_default=True, type=click.IntRange(1))
    @click.option(
        "--mode",
        "modes",
        multiple=True,
        type=click.Choice(PHASES),
        help="Phase to run (repeatable). Default: all.",
    )
    @click.option("--no-reference", is_flag=True, help="Skip the raw-SQL reference figure.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def bench(
        db_url: str | None,
        chains: int,
        concurrency: int,
        modes: tuple[str, ...],
        no_reference: bool,
        as_json: bool,
    ) -> None:
        """Measure throughput on your database: starts, atomic and staged processing.

        Prints chains/s and jobs/s beside what the database does with the same
        acquire + complete SQL and no Python (pgbench on PostgreSQL when
        installed; raw sqlite3 on SQLite).
        """
        from queuert_sa.bench import run_bench

        def progress(line: str) -> None:
            if not as_json:
                click.echo(line, err=True)

        try:
            report = run_bench(
                db_url,
                chains=chains,
                concurrency=concurrency,
                phases=modes or PHASES,
                reference=not no_reference,
                progress=progress,
            )
        except QueuertError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(to_json(report.as_json()) if as_json else report.table())

    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``queuert-sa`` script; exits the process."""
    try:
        cli = build_cli()
    except ImportError as exc:
        if exc.name != "click":
            raise
        print(
            f"queuert-sa: the command line needs click, which is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    cli.main(args=list(argv) if argv is not None else None, prog_name="queuert-sa")
