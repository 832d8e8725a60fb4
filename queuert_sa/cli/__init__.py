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
import dataclasses
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import re
import sys
import traceback
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from queuert_sa import __version__
from queuert_sa._client import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Queuert
from queuert_sa._entities import Chain, Job
from queuert_sa._errors import (
    ChainNotFoundError,
    InvalidCursorError,
    JobNotFoundError,
    QueuertError,
)
from queuert_sa._job_types import JobTypes
from queuert_sa._worker import Worker
from queuert_sa.bench import PHASES
from queuert_sa.models import DEFAULT_TABLE_PREFIX, JobStatus, create_models

if TYPE_CHECKING:
    import click
    from sqlalchemy.orm import Session

    from queuert_sa._async_worker import AsyncWorker

    AnyWorker = Worker | AsyncWorker

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


class AppPathError(QueuertError):
    """``APP_PATH`` does not name a :class:`~queuert_sa.Worker` that can be imported."""

    def __init__(self, app_path: str, problem: str) -> None:
        super().__init__(f"{app_path!r}: {problem}")
        self.app_path = app_path
        self.problem = problem


def _split_app_path(app_path: str) -> tuple[str, list[str]]:
    module_name, sep, attribute = app_path.partition(":")
    example = "e.g. myapp.jobs:worker or myapp.jobs:create_worker"
    if not sep or ":" in attribute:
        raise AppPathError(app_path, f"expected 'module:attribute' ({example}).")
    for what, dotted in (("module", module_name), ("attribute", attribute)):
        parts = dotted.split(".")
        if not all(part.isidentifier() for part in parts):
            raise AppPathError(
                app_path,
                f"{dotted!r} is not a valid {what} name; expected 'module:attribute' ({example}).",
            )
    return module_name, attribute.split(".")


def _describe(value: object) -> str:
    """How an object found at APP_PATH is named in error messages."""
    if inspect.isclass(value):
        return f"the class {value.__module__}.{value.__qualname__}"
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    if inspect.isroutine(value):
        return f"the function {getattr(value, '__module__', '?')}.{value.__qualname__}()"
    kind = type(value)
    kind_name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    article = "an" if kind_name[0] in "aeiou" else "a"
    text = repr(value)
    if text.startswith("<") or len(text) > 60:
        return f"{article} {kind_name} object"
    return f"{article} {kind_name} object ({text})"


def _worker_types() -> tuple[type[Any], ...]:
    """``Worker``, and ``AsyncWorker`` when SQLAlchemy's asyncio support is installed."""
    try:
        from queuert_sa._async_worker import AsyncWorker
    except ImportError:
        return (Worker,)
    return (Worker, AsyncWorker)


def import_worker(app_path: str) -> AnyWorker:
    """Import the :class:`~queuert_sa.Worker` (or ``AsyncWorker``) that ``app_path`` names.

    ``app_path`` is ``module:attribute``; the attribute may be dotted
    (``myapp.jobs:container.worker``). It is either a ``Worker`` or a function
    that takes no arguments and returns one (a factory).

    Raises :class:`AppPathError` when the path is malformed, the module or
    attribute does not exist, or the object is not a ``Worker``. Exceptions
    raised by the application's own code (at import, in the factory) propagate
    unchanged, with a note naming ``app_path``.
    """
    module_name, attributes = _split_app_path(app_path)
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(f"{missing}."):
            raise AppPathError(
                app_path,
                f"no module named {missing!r} (searched the current directory "
                f"{os.getcwd()} and sys.path; run from your project's root or set PYTHONPATH).",
            ) from None
        exc.add_note(f"queuert-sa: raised while importing {module_name!r} for {app_path!r}")
        raise
    except BaseException as exc:
        exc.add_note(f"queuert-sa: raised while importing {module_name!r} for {app_path!r}")
        raise
    for depth, name in enumerate(attributes):
        owner = f"{module_name}:{'.'.join(attributes[:depth])}" if depth else module_name
        try:
            target = getattr(target, name)
        except AttributeError:
            hint = ""
            if depth == 0:
                found = sorted(k for k, v in vars(target).items() if isinstance(v, _worker_types()))
                if found:
                    hint = f" Workers defined there: {', '.join(found)}."
            raise AppPathError(app_path, f"{owner!r} has no attribute {name!r}.{hint}") from None
        except BaseException as exc:
            exc.add_note(f"queuert-sa: raised while reading {name!r} of {owner!r}")
            raise
    if isinstance(target, _worker_types()):
        return cast("AnyWorker", target)
    if not callable(target) or inspect.isclass(target):
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, not a queuert_sa.Worker instance. Point APP_PATH "
            "at a Worker (worker = queuert.worker(...)) or at a function returning one.",
        )
    try:
        inspect.signature(target).bind()
    except TypeError:
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, which needs arguments; a worker factory must be "
            "callable with none.",
        ) from None
    except ValueError:  # no signature available (some builtins): just try it
        pass
    try:
        made = target()
    except BaseException as exc:
        exc.add_note(f"queuert-sa: raised by the worker factory {app_path!r}")
        raise
    if not isinstance(made, _worker_types()):
        raise AppPathError(
            app_path,
            f"the factory returned {_describe(made)}, not a queuert_sa.Worker.",
        )
    return cast("AnyWorker", made)


async def _run_async(worker: AsyncWorker) -> bool:
    try:
        return await worker.run()
    finally:
        await worker.client.engine.dispose()


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


# --- operator commands: parsing and formatting (pure; no click, no database) ---------

#: Environment variable read when ``--db`` is not given.
DATABASE_URL_ENV = "QUEUERT_DATABASE_URL"

#: ``chain show`` cuts a job's last error to this many characters.
ERROR_WIDTH = 80

_DURATION_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[dhms])+")
_DURATION_PART = re.compile(r"(\d+)([dhms])")


def parse_duration(text: str) -> dt.timedelta:
    """``7d``, ``12h``, ``30m``, ``90s``, or a combination such as ``1d12h``, as a timedelta.

    Raises ``ValueError`` with a message naming the accepted forms.
    """
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration; use a whole number and a unit: 7d, 12h, 30m or 90s "
            "(combined: 1d12h)."
        )
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(compact))
    try:
        return dt.timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration.") from None


def format_duration(value: dt.timedelta) -> str:
    """The shortest ``parse_duration`` form of ``value`` (whole seconds): ``1d12h``, ``0s``."""
    seconds = int(value.total_seconds())
    parts: list[str] = []
    for unit, size in _DURATION_UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def parse_time(text: str, *, now: dt.datetime) -> dt.datetime:
    """An aware UTC time: ISO 8601 (UTC when it has no offset) or a duration before ``now``.

    ``2026-11-22``, ``2026-11-22T05:00:00Z``, ``2026-11-22 06:00+01:00``, ``2h``.
    Raises ``ValueError`` for anything else.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-22T05:00:00Z; UTC when it has no "
            "offset) nor a duration before now (30m, 2h, 7d)."
        ) from None
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def format_time(value: dt.datetime | None) -> str:
    """A UTC time to the second (``2026-11-22 05:08:40``); ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, two spaces apart; one line per row."""
    widths = [len(header) for header in headers]
    for row in rows:
        for column, cell in enumerate(row):
            widths[column] = max(widths[column], len(cell))
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]


def error_line(text: str | None, width: int = ERROR_WIDTH) -> str:
    """The last line of a stored error (a traceback's exception line), cut to ``width``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "-"
    line = lines[-1]
    return line if len(line) <= width else line[: width - 1] + "…"


def _json_default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(value: object, *, indent: int | None = 2) -> str:
    """JSON text of ``value``; UUIDs and datetimes (ISO 8601, UTC) as strings."""
    return json.dumps(value, default=_json_default, indent=indent, ensure_ascii=False)


def chain_data(chain: Chain[Any, Any]) -> dict[str, Any]:
    """A chain as a JSON object (its ``Chain`` fields, less ``deduplicated``)."""
    data = dataclasses.asdict(chain)
    del data["deduplicated"]
    return data


def job_data(job: Job[Any]) -> dict[str, Any]:
    """A job as a JSON object (its ``Job`` fields)."""
    return dataclasses.asdict(job)


CHAIN_HEADERS = ("ID", "TYPE", "STATUS", "CURRENT STEP", "CREATED (UTC)", "COMPLETED (UTC)")


def chain_row(chain: Chain[Any, Any]) -> list[str]:
    return [
        str(chain.id),
        chain.type_name,
        chain.status.value,
        f"{chain.current_type_name}#{chain.current_index}",
        format_time(chain.created_at),
        format_time(chain.completed_at),
    ]


@dataclasses.dataclass(frozen=True)
class ChainReport:
    """Everything ``chain show`` prints about one chain."""

    chain: Chain[Any, Any]
    jobs: list[Job[Any]]
    #: Per job id, the chains that job declared as blockers, in slot order.
    blockers: dict[uuid.UUID, list[Chain[Any, Any]]]
    #: Jobs of other chains that declared this chain as a blocker.
    dependents: list[Job[Any]]

    def to_data(self) -> dict[str, Any]:
        return {
            "chain": chain_data(self.chain),
            "jobs": [
                {**job_data(job), "blockers": [chain_data(c) for c in self.blockers[job.id]]}
                for job in self.jobs
            ],
            "dependents": [job_data(job) for job in self.dependents],
        }

    def to_lines(self) -> list[str]:
        chain = self.chain
        lines = [f"chain {chain.id}"]
        for key, value in (
            ("type", chain.type_name),
            ("status", chain.status.value),
            ("created", f"{format_time(chain.created_at)} UTC"),
            (
                "completed",
                "-" if chain.completed_at is None else f"{format_time(chain.completed_at)} UTC",
            ),
            ("input", to_json(chain.input, indent=None)),
            ("output", to_json(chain.output, indent=None) if chain.is_completed else "-"),
        ):
            lines.append(f"  {key:<10} {value}")
        lines += ["", f"jobs ({len(self.jobs)}):"]
        lines += format_table(
            (
                "#",
                "JOB ID",
                "TYPE",
                "STATUS",
                "ATTEMPT",
                "SCHEDULED (UTC)",
                "COMPLETED (UTC)",
                "LAST ERROR",
            ),
            [
                [
                    str(job.chain_index),
                    str(job.id),
                    job.type_name,
                    job.status.value,
                    str(job.attempt),
                    format_time(job.scheduled_at),
                    format_time(job.completed_at),
                    error_line(job.last_attempt_error),
                ]
                for job in self.jobs
            ],
        )
        blocker_rows = [
            [
                f"#{job.chain_index}",
                str(slot),
                str(blocker.id),
                blocker.type_name,
                blocker.status.value,
                format_time(blocker.completed_at),
            ]
            for job in self.jobs
            for slot, blocker in enumerate(self.blockers[job.id])
        ]
        if blocker_rows:
            lines += ["", "blockers (chains a job waits or waited for):"]
            lines += format_table(
                ("JOB", "SLOT", "CHAIN ID", "TYPE", "STATUS", "COMPLETED (UTC)"), blocker_rows
            )
        if self.dependents:
            lines += [
                "",
                f"dependents (jobs with this chain as a blocker, {len(self.dependents)}):",
            ]
            lines += format_table(
                ("CHAIN ID", "STEP", "STATUS", "JOB ID"),
                [
                    [
                        str(job.chain_id),
                        f"{job.type_name}#{job.chain_index}",
                        job.status.value,
                        str(job.id),
                    ]
                    for job in self.dependents
                ],
            )
        return lines


def read_chain_report(client: Queuert, chain_id: uuid.UUID, session: Session) -> ChainReport:
    """Read a chain, all its jobs, their blockers and its dependents in ``session``.

    Raises :class:`ChainNotFoundError` for an unknown id.
    """
    chain = client.get_chain(chain_id, session=session)
    jobs: list[Job[Any]] = []
    cursor: str | None = None
    while True:
        page = client.list_chain_jobs(chain_id, cursor=cursor, limit=MAX_PAGE_SIZE, session=session)
        jobs += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    blockers = {job.id: client.get_job_blockers(job.id, session=session) for job in jobs}
    dependents: list[Job[Any]] = []
    cursor = None
    while True:
        blocked = client.list_blocked_jobs(
            chain_id, order="asc", cursor=cursor, limit=MAX_PAGE_SIZE, session=session
        )
        dependents += blocked.items
        if blocked.next_cursor is None:
            break
        cursor = blocked.next_cursor
    return ChainReport(chain, jobs, blockers, dependents)


def missing_chain_message(
    client: Queuert, chain_id: uuid.UUID, where: str, session: Session
) -> str:
    """Why ``chain show`` found nothing; points at the chain when the id is a continuation's."""
    message = f"no chain {chain_id} in {where}."
    try:
        job = client.get_job(chain_id, session=session)
    except JobNotFoundError:
        return message
    return (
        f"{message} {chain_id} is job #{job.chain_index} ({job.type_name}) of chain "
        f"{job.chain_id}; a chain's id is its first job's id. Try: queuert-sa chain show "
        f"{job.chain_id}"
    )


# --- operator commands: the client ------------------------------------------------------


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
