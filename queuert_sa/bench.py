"""``queuert-sa bench``: throughput of this library on your database, beside the database's own.

Phases (each on ``chains`` single-job chains of a no-op type):

* **start single** — one ``start_chain`` per transaction (chains/s);
* **start batched** — ``start_chains`` with 100 per transaction (chains/s);
* **atomic** / **staged** — one worker with ``concurrency`` slots drains a
  queue of ``chains`` due jobs (jobs/s); staged runs an empty ``prepare()``
  then completes in ``transaction()``;
* **atomic-batch** — atomic with ``handler(noop, batch=B)``: a slot acquires up
  to ``batch`` due jobs in one transaction, runs the handler on each and
  completes them all with one statement and one COMMIT ("group commit");
* **batch-handler** — the same transaction shape, with
  ``batch_handler(noop, size=B)``: one call handles the whole list;
* **atomic-session** — atomic, with a handler that reads ``attempt.session``
  (so its SAVEPOINT opens, as for any handler that writes through it);
* **async-atomic** / **async-atomic-batch** / **async-staged** — the same with
  the asyncio worker.

Each phase is printed beside a reference: the same SQL driven without
Python, so the report reads "x % of what this database does".

* processing: acquire + complete, one transaction per job — ``pgbench`` with
  ``concurrency`` clients on PostgreSQL (when ``pgbench`` is installed), a raw
  ``sqlite3`` loop on SQLite;
* batched processing (the batched phases): ``batch`` jobs per transaction,
  each acquired by one ``UPDATE ... WHERE id IN (SELECT ... LIMIT batch)``
  and completed by one multi-row ``UPDATE`` writing each job's own output —
  ``pgbench`` with ``concurrency`` clients, or the same ``sqlite3`` loop;
* starts: the same job rows inserted one (or 100) per transaction from one
  client — ``pgbench`` with server-generated rows, or ``sqlite3`` with rows
  prepared before the clock starts.

With ``history`` and ``blocked``, the table is not empty when a phase starts:
it holds ``history`` completed jobs and ``blocked`` jobs waiting on a chain
that never completes (all of the phases' type), inserted once by the server
before the first phase and kept across phases and references. This is how
throughput moves as the table grows.

Everything runs in a schema (PostgreSQL) or file (SQLite) of its own, removed
at the end; the application's tables are never touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy import Engine, Table, bindparam, create_engine, func, make_url, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from ._attempt import Attempt, Outcome
from ._client import Queuert
from ._ids import new_id
from ._job_types import JobTypes
from .cli._bench_phases import BATCHED_PHASES as BATCHED_PHASES
from .cli._bench_phases import PHASES as PHASES
from .models import Models, create_models
from .observers import Observer

_BATCH = 100

#: Jobs a batched phase's worker takes per transaction, unless ``batch=`` says otherwise.
DEFAULT_BATCH = 100


class _NoopIn(TypedDict):
    i: int


@dataclass(frozen=True)
class Figure:
    """One measured phase."""

    phase: str
    count: int
    seconds: float
    unit: str

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("inf")


#: Reference kinds, and the phases each one is the reference of.
REFERENCES = {
    "start-single": ("start-single",),
    "start-batched": ("start-batched",),
    "process": ("atomic", "atomic-session", "staged", "async-atomic", "async-staged"),
    "process-batched": BATCHED_PHASES,
}


@dataclass(frozen=True)
class Reference:
    """What the database does with the same SQL and no Python, for some phases."""

    kind: str
    figure: Figure | None
    note: str


@dataclass(frozen=True)
class Report:
    """What ``run_bench`` measured."""

    database: str
    chains: int
    concurrency: int
    figures: list[Figure]
    references: list[Reference]
    #: Jobs per transaction of the batched phases (and of their reference).
    batch: int = DEFAULT_BATCH
    #: Completed jobs already in the table during every phase.
    history: int = 0
    #: Blocked jobs (waiting on a chain that never completes) in the table during every phase.
    blocked: int = 0
    #: Measured with an OpenTelemetry observer on (SDK, exporting nowhere).
    otel: bool = False

    @property
    def reference(self) -> Figure | None:
        """The processing reference (acquire + complete, one transaction per job)."""
        return self._reference_for("atomic")

    def _reference_for(self, phase: str) -> Figure | None:
        for ref in self.references:
            if phase in REFERENCES[ref.kind]:
                return ref.figure
        return None

    def as_json(self) -> dict[str, Any]:
        def figure(f: Figure | None) -> dict[str, Any] | None:
            return None if f is None else {**asdict(f), "rate": round(f.rate, 1)}

        figures: list[dict[str, Any]] = []
        for f in self.figures:
            ref = self._reference_for(f.phase)
            share = round(f.rate / ref.rate, 3) if ref is not None and ref.rate > 0 else None
            figures.append({**asdict(f), "rate": round(f.rate, 1), "of_reference": share})
        return {
            "database": self.database,
            "chains": self.chains,
            "concurrency": self.concurrency,
            "batch": self.batch,
            "history": self.history,
            "blocked": self.blocked,
            "otel": self.otel,
            "figures": figures,
            "reference": figure(self.reference),
            "references": [
                {"kind": r.kind, "figure": figure(r.figure), "note": r.note}
                for r in self.references
            ],
        }

    def table(self) -> str:
        batched = any(f.phase in BATCHED_PHASES for f in self.figures)
        lines = [
            f"database: {self.database}",
            f"{self.chains} chains per phase, worker concurrency {self.concurrency}"
            + (f", up to {self.batch} jobs per transaction when batched" if batched else ""),
            f"already in the table during each phase: {self.history:,} completed jobs, "
            f"{self.blocked:,} blocked jobs",
            "observers: " + ("OtelObserver (SDK, exporting nowhere)" if self.otel else "none"),
            "",
            f"{'phase':<26} {'rate':>10}  {'unit':<9} {'seconds':>8}  {'of reference':>12}",
        ]
        for f in self.figures:
            ref = self._reference_for(f.phase)
            share = f"{100 * f.rate / ref.rate:>11.0f}%" if ref and ref.rate > 0 else f"{'':>12}"
            lines.append(f"{f.phase:<26} {f.rate:>10,.0f}  {f.unit:<9} {f.seconds:>8.2f}  {share}")
        for r in self.references:
            if r.figure is not None:
                f = r.figure
                lines.append(
                    f"{'reference ' + r.kind:<26} {f.rate:>10,.0f}  {f.unit:<9} "
                    f"{f.seconds:>8.2f}  {'100%':>12}"
                )
        for r in self.references:
            lines.append(f"reference {r.kind}: {r.note}")
        return "\n".join(lines)


# --- the isolated schema ------------------------------------------------------------


@contextmanager
def _bench_database(url: str | None) -> Generator[tuple[Engine, Models, str]]:
    """An engine and a set of tables of the bench's own; dropped afterwards."""
    tmpdir: str | None = None
    if url is None:
        tmpdir = tempfile.mkdtemp(prefix="queuert-bench-")
        url = f"sqlite:///{Path(tmpdir) / 'bench.db'}"
    parsed = make_url(url)
    schema: str | None = None
    if parsed.get_backend_name() == "postgresql":
        schema = f"queuert_bench_{uuid.uuid4().hex[:8]}"
        models = create_models(schema=schema)
    else:
        models = create_models(table_prefix=f"queuert_bench_{uuid.uuid4().hex[:6]}_")
    engine = create_engine(url, pool_size=20, max_overflow=10)
    try:
        with engine.begin() as conn:
            if schema is not None:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            models.metadata.create_all(conn)
        yield engine, models, parsed.render_as_string(hide_password=True)
    finally:
        try:
            with engine.begin() as conn:
                if schema is not None:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                else:
                    models.metadata.drop_all(conn)
        finally:
            engine.dispose()
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


def _client(
    engine: Engine, models: Models, observers: Sequence[Observer] = ()
) -> tuple[Queuert, Any]:
    job_types = JobTypes()
    noop = job_types.entry("noop", input=_NoopIn, output=int)
    return Queuert(engine, job_types, models=models, observers=observers), noop


def otel_observers() -> list[Observer]:
    """An :class:`~queuert_sa.otel.OtelObserver` on the OpenTelemetry SDK whose exporters drop
    everything: the cost of recording metrics and spans, without the cost of shipping them."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from .otel import OtelObserver

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Dropped()))
    # Never collected: instruments aggregate as they would for any reader.
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return [OtelObserver(tracer_provider, meter_provider)]


#: When the background rows (``history`` and ``blocked``) were created: long
#: before anything a phase creates, so telling them apart is one index range.
_BACKGROUND_AT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_BACKGROUND_BEFORE = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)

#: ``completed_by`` of the history rows.
_HISTORY_WORKER = "bench-history"


def _clear(engine: Engine, models: Models) -> None:
    """Remove what phases and references created; keep the background rows.

    Keeping them (rather than inserting them again before each phase) costs one
    insert per run, not one per phase: a million rows take seconds to insert.
    """
    table = models.job_table
    blocker = models.job_blocker_table
    created = table.c.created_at >= _BACKGROUND_BEFORE
    with engine.begin() as conn:
        conn.execute(
            blocker.delete().where(blocker.c.job_id.in_(select(table.c.id).where(created)))
        )
        conn.execute(table.delete().where(created))


def _insert_background(client: Queuert, models: Models, history: int, blocked: int) -> None:
    """``history`` completed jobs and ``blocked`` blocked ones, generated by the server.

    All are single-job chains of the phases' type (``noop``), created at
    ``_BACKGROUND_AT``. The blocked jobs all wait on one chain of a type no
    worker handles (``bench-blocker``, pending), so none is ever unblocked.
    Ids are UUIDv7-shaped, the millisecond of ``_BACKGROUND_AT`` then a
    counter: ordered, and before every id a phase creates.
    """
    postgres = client.capabilities.skip_locked
    table = _table_name(models)
    blocker = _quoted(models.job_blocker_table)
    ms = int(_BACKGROUND_AT.timestamp() * 1000)

    def job_id(n: str) -> str:
        if postgres:
            return (
                f"(lpad(to_hex({ms}::bigint), 12, '0') "
                f"|| lpad(to_hex(({n})::bigint), 20, '0'))::uuid"
            )
        return f"printf('%012x%020x', {ms}, {n})"

    def series(first: int, last: int) -> str:
        """A FROM clause of the integers ``first..last``, as column ``n``."""
        if postgres:
            return f"generate_series({first}, {last}) AS series(n)"
        return (
            f"(WITH RECURSIVE series(n) AS (SELECT {first} UNION ALL "
            f"SELECT n + 1 FROM series WHERE n < {last}) SELECT n FROM series) AS series"
        )

    input_of = "jsonb_build_object('i', n)" if postgres else "json_object('i', n)"
    output_of = "to_jsonb(n)" if postgres else "n"
    columns = (
        "id, type_name, chain_id, chain_type_name, chain_index, input, output, status, "
        "created_at, scheduled_at, completed_at, completed_by, attempt, last_attempt_at"
    )
    statements: list[str] = []
    if history:
        statements.append(
            f"INSERT INTO {table} ({columns}) SELECT {job_id('n')}, 'noop', {job_id('n')}, "
            f"'noop', 0, {input_of}, {output_of}, 'completed', :at, :at, :at, "
            f"'{_HISTORY_WORKER}', 1, :at FROM {series(1, history)}"
        )
    if blocked:
        first, last = history + 1, history + blocked
        statements += [
            f"INSERT INTO {table} ({columns}) VALUES ({job_id('0')}, 'bench-blocker', "
            f"{job_id('0')}, 'bench-blocker', 0, NULL, NULL, 'pending', :at, :at, NULL, NULL, "
            "0, NULL)",
            f"INSERT INTO {table} ({columns}) SELECT {job_id('n')}, 'noop', {job_id('n')}, "
            f"'noop', 0, {input_of}, NULL, 'blocked', :at, :at, NULL, NULL, 0, NULL "
            f"FROM {series(first, last)}",
            f'INSERT INTO {blocker} (job_id, blocked_by_chain_id, "index") '
            f"SELECT {job_id('n')}, {job_id('0')}, 0 FROM {series(first, last)}",
        ]
    at = bindparam("at", _BACKGROUND_AT, type_=models.job_table.c.created_at.type)
    with client.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement).bindparams(at) if ":at" in statement else text(statement))
    if postgres and statements:
        # As a table that grew over time would be: vacuumed and analyzed. Else
        # autovacuum would start on the new rows in the middle of a phase.
        with client.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {table}, {blocker}"))


def _fill(client: Queuert, noop: Any, chains: int) -> None:
    with Session(client.engine) as session, session.begin():
        for offset in range(0, chains, 1000):
            client.start_chains(
                session, [noop({"i": i}) for i in range(offset, min(offset + 1000, chains))]
            )


# --- phases ----------------------------------------------------------------------


def _start_single(client: Queuert, noop: Any, chains: int) -> float:
    started = time.perf_counter()
    for i in range(chains):
        with Session(client.engine) as session, session.begin():
            client.start_chain(session, noop, {"i": i})
    return time.perf_counter() - started


def _start_batched(client: Queuert, noop: Any, chains: int) -> float:
    started = time.perf_counter()
    for offset in range(0, chains, _BATCH):
        with Session(client.engine) as session, session.begin():
            client.start_chains(
                session, [noop({"i": i}) for i in range(offset, min(offset + _BATCH, chains))]
            )
    return time.perf_counter() - started


def _process_sync(
    client: Queuert, noop: Any, chains: int, concurrency: int, phase: str, batch: int
) -> float:
    worker = client.worker(
        concurrency=concurrency,
        poll_interval=dt.timedelta(milliseconds=100),
        handle_signals="never",
    )
    if phase == "staged":

        @worker.handler(noop, mode="staged")
        def handle_staged(attempt: Attempt[_NoopIn, int]) -> Outcome:
            with attempt.prepare():
                pass
            with attempt.transaction():
                return attempt.complete(attempt.input["i"])

    elif phase == "atomic-batch":

        @worker.handler(noop, batch=batch)
        def handle_each(attempt: Attempt[_NoopIn, int]) -> Outcome:
            return attempt.complete(attempt.input["i"])

    elif phase == "batch-handler":

        @worker.batch_handler(noop, size=batch)
        def handle_all(attempts: list[Attempt[_NoopIn, int]]) -> list[Outcome]:
            return [attempt.complete(attempt.input["i"]) for attempt in attempts]

    else:
        session = phase == "atomic-session"

        @worker.handler(noop)
        def handle(attempt: Attempt[_NoopIn, int]) -> Outcome:
            if session:
                attempt.session.info["bench"] = True  # first use: the SAVEPOINT opens
            return attempt.complete(attempt.input["i"])

    started = time.perf_counter()
    worker.start()
    try:
        while worker.completed < chains:
            time.sleep(0.002)
        return time.perf_counter() - started
    finally:
        worker.stop()


def _async_url(url: URL) -> URL:
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    return url.set(drivername="postgresql+psycopg")


def _process_async(
    engine: Engine,
    models: Models,
    chains: int,
    concurrency: int,
    staged: bool,
    batch: int | None = None,
    observers: Sequence[Observer] = (),
) -> float:
    """Drain the queue with an :class:`AsyncWorker`; with ``batch``, ``batch`` jobs per commit."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ._async_client import AsyncQueuert
    from ._attempt import AsyncAttempt

    async def main() -> float:
        aengine = create_async_engine(_async_url(engine.url), pool_size=concurrency + 5)
        job_types = JobTypes()
        noop = job_types.entry("noop", input=_NoopIn, output=int)
        client = AsyncQueuert(aengine, job_types, models=models, observers=observers)
        worker = client.worker(
            concurrency=concurrency,
            poll_interval=dt.timedelta(milliseconds=100),
            handle_signals="never",
        )
        if staged:

            @worker.handler(noop, mode="staged")
            async def handle_staged(attempt: AsyncAttempt[_NoopIn, int]) -> Outcome:
                async with attempt.prepare():
                    pass
                async with attempt.transaction():
                    return attempt.complete(attempt.input["i"])

        elif batch is not None:

            @worker.handler(noop, batch=batch)
            async def handle_each(attempt: AsyncAttempt[_NoopIn, int]) -> Outcome:
                return attempt.complete(attempt.input["i"])

        else:

            @worker.handler(noop)
            async def handle(attempt: AsyncAttempt[_NoopIn, int]) -> Outcome:
                return attempt.complete(attempt.input["i"])

        started = time.perf_counter()
        await worker.start()
        try:
            while worker.completed < chains:
                await asyncio.sleep(0.002)
            return time.perf_counter() - started
        finally:
            await worker.stop()
            await aengine.dispose()

    return asyncio.run(main())


# --- the references ----------------------------------------------------------------------


def _table_name(models: Models) -> str:
    return _quoted(models.job_table)


def _quoted(table: Table) -> str:
    return f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'


_PG_ROW = "id, 'noop', id, 'noop', 0, '{\"i\": 1}'::jsonb, 'pending', now(), now(), 0"

#: A time-ordered id, like queuert's UUIDv7: the millisecond clock in the first
#: six bytes of a random UUID (random ids would split index pages all over).
_PG_ORDERED_ID = (
    "encode(overlay(uuid_send(gen_random_uuid()) placing "
    "substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) "
    "from 1 for 6), 'hex')::uuid"
)
_COLUMNS = (
    "id, type_name, chain_id, chain_type_name, chain_index, input, status, created_at, "
    "scheduled_at, attempt"
)


def _pgbench(
    engine: Engine, script: str, clients: int, transactions: int
) -> tuple[float | None, str]:
    """Transactions per second of ``script`` run by pgbench (prepared statements)."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None, "pgbench is not installed (PostgreSQL client tools); no reference figure"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        url = engine.url.set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        result = subprocess.run(
            [pgbench, "-n", "-M", "prepared", "-c", str(clients),
             "-j", str(min(clients, os.cpu_count() or 1)), "-t", str(transactions),
             "-f", str(path), conninfo],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )  # fmt: skip
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if result.returncode != 0 or match is None:
        return None, f"pgbench failed: {(result.stderr or result.stdout).strip()[:200]}"
    return float(match.group(1)), ""


def _pg_process_reference(
    engine: Engine, models: Models, chains: int, concurrency: int
) -> Reference:
    name = _table_name(models)
    script = (
        "BEGIN;\n"
        f"WITH taken AS (UPDATE {name} SET status = 'running', attempt = attempt + 1, "
        "last_attempt_at = now(), leased_by = 'pgbench', leased_until = now() + interval '5 min' "
        f"WHERE id = (SELECT id FROM {name} WHERE type_name = 'noop' AND status = 'pending' "
        "AND scheduled_at <= now() ORDER BY priority DESC, scheduled_at, id LIMIT 1 "
        "FOR NO KEY UPDATE SKIP LOCKED) RETURNING id) "
        "SELECT coalesce(max(id::text), '00000000-0000-0000-0000-000000000000') AS job "
        "FROM taken \\gset\n"
        f"UPDATE {name} SET status = 'completed', output = '1', completed_at = now(), "
        "completed_by = 'pgbench', leased_by = NULL, leased_until = NULL "
        "WHERE id = :job::uuid;\n"
        "END;\n"
    )
    per_client = max(chains // concurrency, 1)
    tps, error = _pgbench(engine, script, concurrency, per_client)
    if tps is None:
        return Reference("process", None, error)
    jobs = per_client * concurrency
    return Reference(
        "process",
        Figure("reference-process", jobs, jobs / tps, "jobs/s"),
        f"pgbench, {concurrency} clients, one transaction per acquire + complete",
    )


def _pg_batched_process_reference(
    engine: Engine, models: Models, chains: int, concurrency: int, batch: int
) -> Reference:
    """``concurrency`` pgbench clients, each transaction taking and completing ``batch`` jobs.

    The statements a batching worker needs: one acquire of up to ``batch``
    rows (all their columns, as the worker reads them), one completion
    writing each job's own output (the handler's ``input["i"]``), and one look
    for the jobs waiting on any of their chains.
    """
    name = _table_name(models)
    blocker = _quoted(models.job_blocker_table)
    script = (
        "BEGIN;\n"
        f"WITH taken AS (UPDATE {name} SET status = 'running', attempt = attempt + 1, "
        "last_attempt_at = now(), leased_by = 'pgbench', leased_until = now() + interval '5 min' "
        f"WHERE id IN (SELECT id FROM {name} WHERE type_name = 'noop' AND status = 'pending' "
        f"AND scheduled_at <= now() ORDER BY priority DESC, scheduled_at, id LIMIT {batch} "
        "FOR NO KEY UPDATE SKIP LOCKED) RETURNING *) "
        "SELECT coalesce(array_agg(id), '{}')::text AS ids, "
        "coalesce(array_agg(input -> 'i'), '{}')::text AS outputs, "
        "coalesce(array_agg(chain_id), '{}')::text AS chains FROM taken \\gset\n"
        f"UPDATE {name} AS job SET status = 'completed', output = done.output, "
        "completed_at = now(), completed_by = 'pgbench', leased_by = NULL, leased_until = NULL, "
        "last_attempt_error = NULL "
        "FROM unnest(:ids::uuid[], :outputs::jsonb[]) AS done(id, output) WHERE job.id = done.id;\n"
        f"SELECT job_id FROM {blocker} WHERE blocked_by_chain_id = ANY (:chains::uuid[]);\n"
        "END;\n"
    )
    # Enough transactions for every job; the last ones may find fewer (or none).
    per_client = max(-(-chains // (concurrency * batch)), 1)
    tps, error = _pgbench(engine, script, concurrency, per_client)
    if tps is None:
        return Reference("process-batched", None, error)
    jobs = _completed_by(engine, models, "pgbench")
    return Reference(
        "process-batched",
        Figure("reference-process-batched", jobs, per_client * concurrency / tps, "jobs/s"),
        f"pgbench, {concurrency} clients, one transaction per {batch} jobs: one UPDATE ... "
        "LIMIT n FOR NO KEY UPDATE SKIP LOCKED acquires them, one UPDATE ... FROM unnest() "
        "completes them, one SELECT looks for their dependents",
    )


def _completed_by(engine: Engine, models: Models, who: str) -> int:
    """How many jobs ``who`` completed (a reference counts what it did, not what it tried)."""
    table = models.job_table
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count()).where(
                table.c.status == "completed",
                table.c.created_at >= _BACKGROUND_BEFORE,  # not the history: an index range
                table.c.completed_by == who,
            )
        ).scalar_one()
    return int(count)


def _pg_start_references(engine: Engine, models: Models, chains: int) -> list[Reference]:
    name = _table_name(models)
    single = (
        "BEGIN;\n"
        f"INSERT INTO {name} ({_COLUMNS}) SELECT {_PG_ROW} FROM (SELECT {_PG_ORDERED_ID} AS id) g;\n"
        "END;\n"
    )
    batched = (
        "BEGIN;\n"
        f"INSERT INTO {name} ({_COLUMNS}) SELECT {_PG_ROW} "
        f"FROM (SELECT {_PG_ORDERED_ID} AS id FROM generate_series(1, {_BATCH})) g;\n"
        "END;\n"
    )
    references: list[Reference] = []
    for kind, script, per_tx in (("start-single", single, 1), ("start-batched", batched, _BATCH)):
        _clear(engine, models)
        transactions = max(chains // per_tx, 1)
        tps, error = _pgbench(engine, script, 1, transactions)
        if tps is None:
            references.append(Reference(kind, None, error))
            continue
        rows = transactions * per_tx
        references.append(
            Reference(
                kind,
                Figure(f"reference-{kind}", rows, transactions / tps, "chains/s"),
                f"pgbench, 1 client, {per_tx} row(s) generated by the server per INSERT "
                "and transaction",
            )
        )
    return references


def _sqlite_connect(engine: Engine) -> sqlite3.Connection:
    conn = sqlite3.connect(engine.url.database or "", isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def _sqlite_start_references(engine: Engine, models: Models, chains: int) -> list[Reference]:
    table = f'"{models.job_table.name}"'
    insert = (
        f"INSERT INTO {table} ({_COLUMNS}) VALUES (?, 'noop', ?, 'noop', 0, ?, 'pending', ?, ?, 0)"
    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    # Time-ordered ids, as queuert's own (UUIDv7), stored as SQLAlchemy stores a UUID.
    ids = [new_id().hex for _ in range(chains)]
    rows = [(i, i, json.dumps({"i": n}), now, now) for n, i in enumerate(ids)]
    references: list[Reference] = []
    for kind, per_tx in (("start-single", 1), ("start-batched", _BATCH)):
        _clear(engine, models)
        conn = _sqlite_connect(engine)
        try:
            started = time.perf_counter()
            for offset in range(0, chains, per_tx):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, rows[offset : offset + per_tx])
                conn.execute("COMMIT")
            seconds = time.perf_counter() - started
        finally:
            conn.close()
        references.append(
            Reference(
                kind,
                Figure(f"reference-{kind}", chains, seconds, "chains/s"),
                f"Python's sqlite3 with no ORM, {per_tx} prepared row(s) per transaction",
            )
        )
    return references


def _sqlite_process_reference(engine: Engine, models: Models) -> Reference:
    table = f'"{models.job_table.name}"'
    conn = _sqlite_connect(engine)
    try:
        acquire = (
            f"UPDATE {table} SET status = 'running', attempt = attempt + 1, "
            "last_attempt_at = ?, leased_by = 'raw', leased_until = ? "
            f"WHERE id = (SELECT id FROM {table} WHERE type_name = 'noop' AND "
            "status = 'pending' AND scheduled_at <= ? "
            "ORDER BY priority DESC, scheduled_at, id LIMIT 1) "
            "RETURNING id"
        )
        complete = (
            f"UPDATE {table} SET status = 'completed', output = '1', completed_at = ?, "
            "completed_by = 'raw', leased_by = NULL, leased_until = NULL WHERE id = ?"
        )
        done = 0
        started = time.perf_counter()
        while True:
            # The text SQLAlchemy stores for a UTC datetime on SQLite.
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(acquire, (now, now, now)).fetchone()
            if row is None:
                conn.execute("COMMIT")
                break
            conn.execute(complete, (now, row[0]))
            conn.execute("COMMIT")
            done += 1
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Reference(
        "process",
        Figure("reference-process", done, seconds, "jobs/s"),
        "Python's sqlite3 with no ORM, one BEGIN IMMEDIATE transaction per acquire + complete",
    )


def _sqlite_batched_process_reference(engine: Engine, models: Models, batch: int) -> Reference:
    """One ``BEGIN IMMEDIATE`` per ``batch`` jobs: one statement acquires them, one completes.

    As :func:`_pg_batched_process_reference`: the acquire returns every column,
    the completion writes each job's own output (passed as one JSON parameter
    of ``[id, output]`` pairs), one SELECT looks for the jobs waiting on their chains.
    """
    table = f'"{models.job_table.name}"'
    blocker = f'"{models.job_blocker_table.name}"'
    conn = _sqlite_connect(engine)
    try:
        acquire = (
            f"UPDATE {table} SET status = 'running', attempt = attempt + 1, "
            "last_attempt_at = ?, leased_by = 'raw', leased_until = ? "
            f"WHERE id IN (SELECT id FROM {table} WHERE type_name = 'noop' AND "
            "status = 'pending' AND scheduled_at <= ? "
            f"ORDER BY priority DESC, scheduled_at, id LIMIT {batch}) "
            "RETURNING *"
        )
        complete = (
            f"UPDATE {table} SET status = 'completed', "
            "output = json_extract(done.value, '$[1]'), completed_at = ?, completed_by = 'raw', "
            "leased_by = NULL, leased_until = NULL, last_attempt_error = NULL "
            f"FROM json_each(?) AS done WHERE {table}.id = json_extract(done.value, '$[0]')"
        )
        dependents = (
            f"SELECT job_id FROM {blocker} "
            "WHERE blocked_by_chain_id IN (SELECT value FROM json_each(?))"
        )
        done = 0
        started = time.perf_counter()
        while True:
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute(acquire, (now, now, now))
            names = [column[0] for column in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            if not rows:
                conn.execute("COMMIT")
                break
            # What the handler returns, input["i"]: the one piece of Python per job.
            outputs = [[row["id"], json.loads(row["input"])["i"]] for row in rows]
            conn.execute(complete, (now, json.dumps(outputs)))
            conn.execute(dependents, (json.dumps([row["chain_id"] for row in rows]),)).fetchall()
            conn.execute("COMMIT")
            done += len(rows)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return Reference(
        "process-batched",
        Figure("reference-process-batched", done, seconds, "jobs/s"),
        f"Python's sqlite3 with no ORM, one BEGIN IMMEDIATE transaction per {batch} jobs: "
        "one UPDATE ... LIMIT n acquires them, one UPDATE ... FROM json_each() completes them, "
        "one SELECT looks for their dependents",
    )


def _process_reference(client: Queuert, models: Models, chains: int, concurrency: int) -> Reference:
    """The unbatched phases' reference on ``client``'s database (queued jobs: ``_fill`` first)."""
    if client.capabilities.skip_locked:
        return _pg_process_reference(client.engine, models, chains, concurrency)
    return _sqlite_process_reference(client.engine, models)


def _batched_process_reference(
    client: Queuert, models: Models, chains: int, concurrency: int, batch: int
) -> Reference:
    """The batched phases' reference on ``client``'s database (queued jobs: ``_fill`` first)."""
    if client.capabilities.skip_locked:
        return _pg_batched_process_reference(client.engine, models, chains, concurrency, batch)
    return _sqlite_batched_process_reference(client.engine, models, batch)


# --- the whole run ----------------------------------------------------------------------


def run_bench(
    url: str | None = None,
    *,
    chains: int = 5000,
    concurrency: int = 10,
    phases: Sequence[str] = PHASES,
    reference: bool = True,
    batch: int = DEFAULT_BATCH,
    history: int = 0,
    blocked: int = 0,
    progress: Callable[[str], None] | None = None,
    otel: bool = False,
) -> Report:
    """Run the phases on ``url`` (default: a temporary SQLite file); the figures.

    ``batch``: jobs per transaction of the batched phases (``BATCHED_PHASES``)
    and of their reference; defaults to 100. ``history`` completed jobs and
    ``blocked`` blocked jobs are in the table during every phase and
    reference; default none. ``otel``: every client has an OpenTelemetry
    observer on the SDK, exporting nowhere (:func:`otel_observers`): its cost.
    """
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, not {batch}")
    if history < 0 or blocked < 0:
        raise ValueError(f"history and blocked must not be negative, not {history}, {blocked}")

    def say(line: str) -> None:
        if progress is not None:
            progress(line)

    figures: list[Figure] = []
    references: list[Reference] = []
    with _bench_database(url) as (engine, models, shown):
        observers = otel_observers() if otel else []
        client, noop = _client(engine, models, observers)
        if history or blocked:
            say(f"inserting {history:,} completed and {blocked:,} blocked jobs ...")
            _insert_background(client, models, history, blocked)
        for phase in phases:
            say(f"{phase} ...")
            _clear(engine, models)
            if phase == "start-single":
                figures.append(
                    Figure(phase, chains, _start_single(client, noop, chains), "chains/s")
                )
                continue
            if phase == "start-batched":
                figures.append(
                    Figure(phase, chains, _start_batched(client, noop, chains), "chains/s")
                )
                continue
            _fill(client, noop, chains)
            if phase.startswith("async"):
                seconds = _process_async(
                    engine,
                    models,
                    chains,
                    concurrency,
                    staged=phase.endswith("staged"),
                    batch=batch if phase in BATCHED_PHASES else None,
                    observers=observers,
                )
            else:
                seconds = _process_sync(client, noop, chains, concurrency, phase, batch)
            figures.append(Figure(phase, chains, seconds, "jobs/s"))
        if reference:
            say("reference ...")
            wanted = {kind for kind, covered in REFERENCES.items() if set(covered) & set(phases)}
            postgres = client.capabilities.skip_locked
            if wanted & {"start-single", "start-batched"}:
                starts = (
                    _pg_start_references(engine, models, chains)
                    if postgres
                    else _sqlite_start_references(engine, models, chains)
                )
                references.extend(r for r in starts if r.kind in wanted)
            if "process" in wanted:
                _clear(engine, models)
                _fill(client, noop, chains)
                references.append(_process_reference(client, models, chains, concurrency))
            if "process-batched" in wanted:
                _clear(engine, models)
                _fill(client, noop, chains)
                references.append(
                    _batched_process_reference(client, models, chains, concurrency, batch)
                )
    return Report(
        shown,
        chains,
        concurrency,
        figures,
        references,
        batch=batch,
        history=history,
        blocked=blocked,
        otel=otel,
    )


def report_json(report: Report) -> str:
    return json.dumps(report.as_json(), indent=2)
