"""What the pages and the API show, read in one transaction each, in a bounded number of queries.

A chain's page reads the chain, its jobs, every blocker of those jobs and the
jobs it blocks in five statements, whatever the number of jobs; the
statistics in three (counts by type and status, the backlog, jobs ended per
minute).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from queuert_sa._client import Queuert
from queuert_sa._entities import Chain, Job, Page
from queuert_sa._schedule_report import ScheduleState, schedule_states
from queuert_sa._schedules import Schedule
from queuert_sa._snapshots import chain_from_rows, job_from_row
from queuert_sa.models import JobStatus
from queuert_sa.state import overview, queries

from ._params import Listing

#: The most jobs of one chain, and of the jobs it blocks, that a chain's page shows.
CHAIN_JOBS_SHOWN = 1000

#: How far back the throughput chart looks, in minutes.
THROUGHPUT_MINUTES = 60


@dataclass(frozen=True)
class ChainDetail:
    chain: Chain[Any, Any]
    jobs: list[Job[Any]]
    more_jobs: bool
    job_blockers: dict[uuid.UUID, list[Chain[Any, Any]]]
    blocking: list[Job[Any]]


@dataclass(frozen=True)
class JobDetail:
    job: Job[Any]
    chain: Chain[Any, Any]
    continuation: Job[Any] | None
    blockers: list[Chain[Any, Any]]


def _job(client: Queuert, row: Any) -> Job[Any]:
    name = row["type_name"]
    return job_from_row(row, client.job_types.get(name) if name in client.job_types else None)


def listing_page(client: Queuert, session: Session, wanted: Listing) -> Page[Any]:
    """The page of chains or jobs that ``wanted`` (parsed from a query string) asks for."""
    read = client.list_chains if wanted.kind == "chains" else client.list_jobs
    return read(cursor=wanted.cursor, limit=wanted.limit, session=session, **wanted.filters())


def chain_detail(client: Queuert, session: Session, chain_id: uuid.UUID) -> ChainDetail:
    """A chain with its jobs in order, their blockers, and the jobs that wait for it."""
    chain = client.get_chain(chain_id, session=session)
    jobs = client.list_chain_jobs(chain_id, limit=CHAIN_JOBS_SHOWN, session=session)
    blocker_ids = overview.blockers_of_jobs(session, client.models, [job.id for job in jobs])
    wanted = {chain for chains in blocker_ids.values() for chain in chains}
    rows = overview.chains_by_id(session, client.models, wanted)
    chains = {cid: chain_from_rows(client.job_types, *pair) for cid, pair in rows.items()}
    job_blockers = {
        job_id: [chains[cid] for cid in ids if cid in chains] for job_id, ids in blocker_ids.items()
    }
    blocking = client.list_blocked_jobs(chain_id, limit=CHAIN_JOBS_SHOWN, session=session)
    return ChainDetail(
        chain=chain,
        jobs=jobs.items,
        more_jobs=jobs.next_cursor is not None,
        job_blockers=job_blockers,
        blocking=blocking.items,
    )


def job_detail(client: Queuert, session: Session, job_id: uuid.UUID) -> JobDetail:
    """A job with its chain, the job that continued it, and the chains it waits for."""
    job = client.get_job(job_id, session=session)
    chain = client.get_chain(job.chain_id, session=session)
    after = queries.list_chain_jobs(
        session, client.models, chain_id=job.chain_id, order="asc", after=job.chain_index, limit=1
    )
    continuation = _job(client, after[0]) if after else None
    blockers = client.get_job_blockers(job_id, session=session)
    return JobDetail(job=job, chain=chain, continuation=continuation, blockers=blockers)


@dataclass(frozen=True)
class Stats:
    now: dt.datetime
    counts: dict[str, dict[str, int]]
    """``{type name: {status: count}}``, every status present."""
    ready: dict[str, tuple[int, float]]
    """``{type name: (jobs ready, seconds the oldest has waited)}``, types with ready jobs."""
    minutes: list[dt.datetime]
    """The start of each minute of the throughput chart, oldest first."""
    ended: dict[str, list[int]]
    """``{"completed": [...], "failed": [...]}``: jobs ended in each of ``minutes``."""

    @property
    def totals(self) -> dict[str, int]:
        """Jobs in each status, over all types."""
        return {s.value: sum(by[s.value] for by in self.counts.values()) for s in JobStatus}

    @property
    def oldest_ready_age(self) -> float | None:
        """Seconds the longest-waiting ready job has waited; None when nothing is ready."""
        return max((age for _, age in self.ready.values()), default=None)


def schedules(
    client: Queuert, session: Session, wanted: Sequence[Schedule], now: dt.datetime
) -> list[ScheduleState]:
    """Each schedule's next tick and its latest tick's chain."""
    return schedule_states(session, client.ctx, wanted, now)


def stats(client: Queuert, session: Session, now: dt.datetime) -> Stats:
    """Counts by type and status, the ready backlog, and the jobs ended per minute."""
    counts: dict[str, dict[str, int]] = {}
    for row in overview.status_counts(session, client.models):
        by_status = counts.setdefault(row["type_name"], {s.value: 0 for s in JobStatus})
        by_status[JobStatus(row["status"]).value] = int(row["count"])
    ready: dict[str, tuple[int, float]] = {}
    for row in queries.backlog(session, client.models, now=now):
        if row["state"] == "ready":
            age = max(0.0, (now - row["oldest"]).total_seconds())
            ready[row["type_name"]] = (int(row["count"]), age)
    first = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=THROUGHPUT_MINUTES - 1)
    minutes = [first + dt.timedelta(minutes=i) for i in range(THROUGHPUT_MINUTES)]
    dialect = client.engine.dialect.name
    ended = overview.ended_per_minute(session, client.models, since=first, dialect=dialect)
    first_minute = int(first.timestamp() // 60)
    series = {
        status: [ended.get(status, {}).get(first_minute + i, 0) for i in range(len(minutes))]
        for status in (JobStatus.COMPLETED.value, JobStatus.FAILED.value)
    }
    return Stats(now=now, counts=counts, ready=ready, minutes=minutes, ended=series)
