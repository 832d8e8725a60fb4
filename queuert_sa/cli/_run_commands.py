"""The commands that run jobs: ``demo`` (an embedded SQLite file), ``worker``
(the application's worker, until a signal) and ``bench`` (throughput on your
database); and the logging set-up of ``demo`` and ``worker``.

``queuert_sa.demo`` and ``queuert_sa.bench`` are imported only when their command
runs. Imports click.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING

import click

from queuert_sa._errors import QueuertError
from queuert_sa._logs import JsonFormatter, get_logger
from queuert_sa._worker._config import MAX_BATCH
from queuert_sa._worker._threads import Worker

from ._app import AppPathError, import_worker
from ._bench_phases import PHASES
from ._format import to_json

if TYPE_CHECKING:
    from queuert_sa._worker._asyncio import AsyncWorker

# The name the docs show in the worker's log lines; not __name__ (queuert_sa.cli._run_commands).
log = get_logger("queuert_sa.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


async def _run_async(worker: AsyncWorker) -> bool:
    try:
        return await worker.run()
    finally:
        await worker.client.engine.dispose()


async def _drain_async(worker: AsyncWorker) -> int:
    try:
        return await worker.drain()
    finally:
        await worker.client.engine.dispose()


def _only_types(worker: Worker | AsyncWorker, names: list[str]) -> None:
    """``--types``: keep the handlers of these types only (on both halves of an AsyncWorker)."""
    threads = getattr(worker, "_sync_worker", None)
    halves = [worker, *([threads] if isinstance(threads, Worker) else [])]
    known = sorted({name for half in halves for name in half.handlers})
    unknown = [name for name in names if name not in known]
    if unknown:
        raise click.BadParameter(
            f"the worker has no handler for {', '.join(map(repr, unknown))}; its types are "
            f"{', '.join(known)}.",
            param_hint="'--types'",
        )
    for half in halves:
        half.handlers = {n: r for n, r in half.handlers.items() if n in names}


def _set_concurrency(worker: Worker | AsyncWorker, concurrency: int) -> None:
    """``--concurrency``: the loaded worker's slots (and its thread worker's, on asyncio)."""
    worker.concurrency = concurrency
    threads = getattr(worker, "_sync_worker", None)
    if isinstance(threads, Worker):
        threads.concurrency = concurrency


def _configure_logging(level: str, log_format: str = "text") -> None:
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


@click.command()
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
    # Imported here: the demo declares its own tables, which only this command needs.
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


@click.command()
@click.argument("app_path", metavar="APP_PATH")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging level of the root logger (written to stderr).",
)
@click.option(
    "--log-format",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with job_id, chain_id, type_name, attempt and "
    "worker_id where a record has them.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Attempts running at once, overriding the worker's own concurrency.",
)
@click.option(
    "--burst",
    is_flag=True,
    help="Run the jobs that are due (and those they make due), then exit 0: for cron-driven "
    "deployments and tests.",
)
@click.option(
    "--types",
    metavar="A,B",
    default=None,
    help="Run only the handlers of these job types (comma-separated), e.g. to give a busy "
    "type a process of its own.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    default=None,
    help="Serve the worker's OpenTelemetry metrics for Prometheus on this port (/metrics); "
    "needs the 'prometheus' extra.",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",
    show_default=True,
    help="The address --metrics-port listens on.",
)
def worker(
    app_path: str,
    log_level: str,
    log_format: str,
    concurrency: int | None,
    burst: bool,
    types: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run the worker named by APP_PATH until SIGINT/SIGTERM (or, with --burst, until idle).

    APP_PATH is module:attribute, e.g. myapp.jobs:worker, naming a
    queuert_sa.Worker or a function that returns one (myapp.jobs:create_worker).
    The current directory is put first on sys.path, so run it from your
    project's root.

    On SIGINT or SIGTERM the worker stops taking jobs, lets in-flight attempts
    finish (up to its shutdown_grace) and exits 0; a second signal exits at once,
    leaving in-flight jobs to be retried. With --burst it runs what is due on
    this process's thread (one attempt at a time, as Worker.drain() does),
    logs how many jobs ran and exits 0.
    """
    _configure_logging(log_level, log_format)
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
    if types is not None:
        _only_types(loaded, [name.strip() for name in types.split(",") if name.strip()])
    if concurrency is not None:
        _set_concurrency(loaded, concurrency)
    if metrics_port is not None:
        from ._metrics import serve_metrics

        serve_metrics(loaded.client, metrics_host, metrics_port)
    engine_url = loaded.client.engine.url.render_as_string(hide_password=True)
    log.info("running %s from %s on %s", loaded, app_path, engine_url)
    if burst:
        try:
            ran = (
                loaded.drain() if isinstance(loaded, Worker) else asyncio.run(_drain_async(loaded))
            )
        except QueuertError as exc:
            raise click.ClickException(str(exc)) from exc
        log.info("queuert-sa worker %s: burst done, %d job(s) ran", loaded.worker_id, ran)
        return
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


@click.command()
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
@click.option(
    "--batch",
    default=100,
    show_default=True,
    type=click.IntRange(1, MAX_BATCH),
    metavar="B",
    help="Jobs per transaction in the batched phases (atomic-batch, batch-handler, "
    "async-atomic-batch) and their reference.",
)
@click.option(
    "--history",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    metavar="N",
    help="Completed jobs already in the table during every phase (inserted once, by the "
    "server, before the first): throughput as the table grows.",
)
@click.option(
    "--blocked",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    metavar="M",
    help="Blocked jobs (waiting on a chain that never completes) in the table during "
    "every phase, as --history.",
)
@click.option("--no-reference", is_flag=True, help="Skip the raw-SQL reference figure.")
@click.option(
    "--otel",
    is_flag=True,
    help="Measure with an OpenTelemetry observer (metrics and spans on the SDK, exported "
    "nowhere): compare with a run without it for its overhead. Needs opentelemetry-sdk.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(
    db_url: str | None,
    chains: int,
    concurrency: int,
    modes: tuple[str, ...],
    batch: int,
    history: int,
    blocked: int,
    no_reference: bool,
    otel: bool,
    as_json: bool,
) -> None:
    """Measure throughput on your database: starts, atomic, batched and staged processing.

    Prints chains/s and jobs/s beside what the database does with the same
    acquire + complete SQL and no Python (pgbench on PostgreSQL when
    installed; raw sqlite3 on SQLite), one job per transaction or, for the
    batched phases, --batch jobs per transaction.
    """
    from queuert_sa.bench import run_bench  # here, not at the top: see _bench_phases

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
            batch=batch,
            history=history,
            blocked=blocked,
            progress=progress,
            otel=otel,
        )
    except QueuertError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(to_json(report.as_json()) if as_json else report.table())
