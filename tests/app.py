"""A small application used by the tests: its own models and job types.

Importable by subprocesses (``python -m`` / ``queuert-sa worker tests.app:...``),
which read the database URL from ``QUEUERT_APP_URL``.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import TypedDict

from sqlalchemy import Float, ForeignKey, Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "app_user"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Effect(Base):
    """One row per handler run that committed: the business-row counter of the tests."""

    __tablename__ = "app_effect"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    label: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("app_user.id"), nullable=True)


class Span(Base):
    """When a handler ran (``time.time()`` at its start and end), written with its outcome:
    how many attempts of a type ran at once, read from the rows."""

    __tablename__ = "app_span"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    label: Mapped[str] = mapped_column(String(100))
    started: Mapped[float] = mapped_column(Float)
    ended: Mapped[float] = mapped_column(Float)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans open at one moment (an end before a start at a tie)."""
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


class UserIn(TypedDict):
    user_id: int


class Greeting(TypedDict):
    greeting: str


class WorkIn(TypedDict):
    n: int
    sleep: float


job_types = q.JobTypes()
signup = job_types.entry("signup", input=UserIn, continues_with=["greet"])
greet = job_types.define("greet", input=UserIn, output=Greeting)
work = job_types.entry("work", input=WorkIn, output=int)
staged_work = job_types.entry("staged-work", input=WorkIn, output=int)


def count_effects(session: object, label: str | None = None) -> int:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    stmt = select(func.count()).select_from(Effect)
    if label is not None:
        stmt = stmt.where(Effect.label == label)
    return session.execute(stmt).scalar_one()


def _span_file_observer(path: str) -> q.Observer:
    """An OtelObserver whose spans are appended to ``path`` as each ends (JSON lines)."""
    import json

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from queuert_sa.otel import OtelObserver

    out = open(path, "a", buffering=1)  # noqa: SIM115  # open for the process's life
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=out, formatter=lambda span: json.dumps(json.loads(span.to_json())) + "\n"
            )
        )
    )
    return OtelObserver(tracer_provider=provider)


def build_worker(
    url: str | None = None, *, concurrency: int = 1, sleep_scale: float = 1.0, batch: int = 1
) -> q.Worker:
    """The worker the subprocess tests run: records one Effect per completed job.

    If ``QUEUERT_APP_STARTED_DIR`` is set, each attempt first writes a file
    named after its job id there, so a test knows a handler is in flight.
    ``batch``: group commit of ``work`` jobs (``handler(work, batch=...)``).
    ``QUEUERT_APP_MAX_ATTEMPTS``: the worker's ``max_attempts`` (default: none).
    ``QUEUERT_APP_SPANS``: a file the worker's OpenTelemetry spans are written
    to as they end, one JSON object per line. ``QUEUERT_APP_MAX_RUNNING``: the
    ``max_running`` of ``work``, ``QUEUERT_APP_RATE`` its rate per second (with
    either, each run writes a :class:`Span`).
    ``QUEUERT_APP_SCHEDULE_EVERY``:
    seconds; the worker keeps a schedule "beat" starting a ``work`` chain per tick.
    """
    started_dir = os.environ.get("QUEUERT_APP_STARTED_DIR")
    engine = create_engine(url or os.environ["QUEUERT_APP_URL"])
    client = q.Queuert(engine, job_types)
    spans = os.environ.get("QUEUERT_APP_SPANS")
    if spans:
        client.add_observer(_span_file_observer(spans))
    limit = os.environ.get("QUEUERT_APP_MAX_ATTEMPTS")
    worker = client.worker(
        concurrency=concurrency,
        poll_interval=dt.timedelta(milliseconds=200),
        backoff=q.Backoff(initial=dt.timedelta(milliseconds=100), jitter=0),
        max_attempts=int(limit) if limit else None,
    )

    max_running = os.environ.get("QUEUERT_APP_MAX_RUNNING")
    per_second = os.environ.get("QUEUERT_APP_RATE")
    limited = bool(max_running or per_second)

    @worker.handler(
        work,
        batch=batch,
        max_running=int(max_running) if max_running else None,
        rate=q.Rate(int(per_second), per=1) if per_second else None,
    )
    def do_work(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        began = time.time()
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        attempt.session.flush()
        if started_dir:
            with open(os.path.join(started_dir, str(attempt.job.id)), "w") as f:
                f.write(str(os.getpid()))
        if attempt.input["sleep"] and sleep_scale:
            time.sleep(attempt.input["sleep"] * sleep_scale)
        if limited:
            attempt.session.add(
                Span(job_id=str(attempt.job.id), label="work", started=began, ended=time.time())
            )
        return attempt.complete(attempt.input["n"] * 2)

    every = os.environ.get("QUEUERT_APP_SCHEDULE_EVERY")
    if every:  # a recurring schedule, kept by every process that runs this worker
        worker.recurring("beat", work, every=float(every), input={"n": 1, "sleep": 0.0})

    lease = dt.timedelta(milliseconds=int(os.environ.get("QUEUERT_APP_LEASE_MS", "60000")))

    @worker.handler(staged_work, mode="staged", lease=lease)
    def do_staged_work(attempt: q.Attempt[WorkIn, int]) -> q.Outcome:
        with attempt.prepare():
            pass
        if started_dir:
            with open(os.path.join(started_dir, str(attempt.job.id)), "w") as f:
                f.write(str(os.getpid()))
        if attempt.input["sleep"] and sleep_scale:
            time.sleep(attempt.input["sleep"] * sleep_scale)  # the "external call"
        with attempt.transaction() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="staged-work"))
            return attempt.complete(attempt.input["n"] * 2)

    return worker


def build_async_worker() -> q.AsyncWorker:
    """An asyncio worker for ``work`` jobs (``queuert-sa worker tests.app:build_async_worker``).

    Same effects as :func:`build_worker`, from an ``async def`` handler on an
    ``AsyncSession``; the URL in ``QUEUERT_APP_URL`` is switched to its async
    driver (aiosqlite for SQLite; psycopg serves both). ``QUEUERT_APP_STARTED_DIR``
    and ``QUEUERT_APP_BATCH`` mean what they mean there, and a job's ``sleep``
    is awaited.
    """
    import asyncio

    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    started_dir = os.environ.get("QUEUERT_APP_STARTED_DIR")
    url = make_url(os.environ["QUEUERT_APP_URL"])
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    client = q.AsyncQueuert(create_async_engine(url), job_types)
    worker = client.worker(poll_interval=dt.timedelta(milliseconds=200))

    @worker.handler(work, batch=int(os.environ.get("QUEUERT_APP_BATCH", "1")))
    async def do_work(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        attempt.session.add(Effect(job_id=str(attempt.job.id), label="work"))
        await attempt.session.flush()
        if started_dir:
            with open(os.path.join(started_dir, str(attempt.job.id)), "w") as f:
                f.write(str(os.getpid()))
        if attempt.input["sleep"]:
            await asyncio.sleep(attempt.input["sleep"])
        return attempt.complete(attempt.input["n"] * 2)

    return worker


def build_async_staged_worker() -> q.AsyncWorker:
    """The asyncio twin of :func:`build_worker`'s ``staged-work`` handler, for subprocess tests.

    ``QUEUERT_APP_URL`` (switched to its async driver as in
    :func:`build_async_worker`), ``QUEUERT_APP_STARTED_DIR`` and
    ``QUEUERT_APP_LEASE_MS`` mean what they mean there.
    """
    import asyncio

    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    started_dir = os.environ.get("QUEUERT_APP_STARTED_DIR")
    url = make_url(os.environ["QUEUERT_APP_URL"])
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    client = q.AsyncQueuert(create_async_engine(url), job_types)
    worker = client.worker(
        poll_interval=dt.timedelta(milliseconds=200),
        backoff=q.Backoff(initial=dt.timedelta(milliseconds=100), jitter=0),
    )
    lease = dt.timedelta(milliseconds=int(os.environ.get("QUEUERT_APP_LEASE_MS", "60000")))

    @worker.handler(staged_work, mode="staged", lease=lease)
    async def do_staged_work(attempt: q.AsyncAttempt[WorkIn, int]) -> q.Outcome:
        async with attempt.prepare():
            pass
        if started_dir:
            with open(os.path.join(started_dir, str(attempt.job.id)), "w") as f:
                f.write(str(os.getpid()))
        if attempt.input["sleep"]:
            await asyncio.sleep(attempt.input["sleep"])  # the "external call"
        async with attempt.transaction() as s:
            s.add(Effect(job_id=str(attempt.job.id), label="staged-work"))
            return attempt.complete(attempt.input["n"] * 2)

    return worker


def worker_from_env() -> q.Worker:
    return build_worker(
        concurrency=int(os.environ.get("QUEUERT_APP_CONCURRENCY", "1")),
        batch=int(os.environ.get("QUEUERT_APP_BATCH", "1")),
    )


def run_from_env() -> None:
    """Entry point of worker subprocesses: run until SIGTERM."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    worker_from_env().run()


def run_async_atomic_from_env() -> None:
    """Entry point of asyncio worker subprocesses (``work`` jobs): run until SIGTERM."""
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    asyncio.run(build_async_worker().run())


def run_async_from_env() -> None:
    """Entry point of asyncio worker subprocesses (staged-work jobs): run until SIGTERM."""
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(message)s")
    asyncio.run(build_async_staged_worker().run())


# ``queuert-sa worker tests.app:worker`` imports this attribute; it is built
# lazily so importing the module does not need a database.
def __getattr__(name: str) -> object:
    if name == "worker":
        return worker_from_env()
    raise AttributeError(name)
