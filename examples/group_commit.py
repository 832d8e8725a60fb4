"""Group commit: many small jobs, a transaction per group instead of per job.

Run it:  python examples/group_commit.py            (a SQLite file in a temporary directory)
         python examples/group_commit.py --db URL   (e.g. a fresh PostgreSQL database)

Two kinds of small jobs, started 300 and 120 at a time in one transaction each:

* ``count-view`` (``@worker.handler(count_view, batch=50)``): each attempt adds
  one ``PageView`` row through its own ``attempt.session`` and completes. Up to
  50 run in one transaction: each handler's writes sit in a SAVEPOINT of its
  own, the completions are written together, one COMMIT. One job has a page
  name the handler refuses: it alone is rolled back and rescheduled, the rest
  of its group completes.
* ``index-document`` (``@worker.batch_handler(index_document, size=40)``): the
  function gets the whole group and inserts its ``SearchRow`` rows with one
  bulk INSERT, then completes every attempt.

``worker.drain()`` runs what is due; the script prints how many jobs each type
completed, in how many transactions (the completions of a group share their
``completed_at``), the refused job's state, and the business rows written.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Engine, String, create_engine, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q
from queuert_sa.models import Job


class Base(DeclarativeBase):
    pass


class PageView(Base):  # your own business tables
    __tablename__ = "group_commit_page_view"
    id: Mapped[int] = mapped_column(primary_key=True)
    page: Mapped[str] = mapped_column(String(100))


class SearchRow(Base):
    __tablename__ = "group_commit_search_row"
    id: Mapped[int] = mapped_column(primary_key=True)
    doc_id: Mapped[int]


class ViewIn(TypedDict):
    page: str


class DocIn(TypedDict):
    doc_id: int


job_types = q.JobTypes()
count_view = job_types.entry("count-view", input=ViewIn, output=None)
index_document = job_types.entry("index-document", input=DocIn, output=None)


def build_worker(queuert: q.Queuert) -> q.Worker:
    worker = queuert.worker()

    @worker.handler(count_view, batch=50)
    def count(attempt: q.Attempt[ViewIn, None]) -> q.Outcome:
        page = attempt.input["page"]
        if not page.startswith("/"):
            raise ValueError(f"not a page: {page!r}")  # this attempt alone is undone
        attempt.session.add(PageView(page=page))
        return attempt.complete(None)

    @worker.batch_handler(index_document, size=40)
    def index(attempts: list[q.Attempt[DocIn, None]]) -> list[q.Outcome]:
        rows = [{"doc_id": attempt.input["doc_id"]} for attempt in attempts]
        attempts[0].session.execute(insert(SearchRow), rows)  # one bulk INSERT for the group
        return [attempt.complete(None) for attempt in attempts]

    return worker


def transactions_of(session: Session, job_type: q.JobType[object, object]) -> tuple[int, int]:
    """(completed jobs of the type, distinct completion times: one per committed group)."""
    done = (Job.type_name == job_type.name, Job.status == "completed")
    jobs = session.scalar(select(func.count()).select_from(Job).where(*done)) or 0
    groups = session.scalar(select(func.count(func.distinct(Job.completed_at))).where(*done)) or 0
    return jobs, groups


def main(engine: Engine) -> None:
    q.metadata.create_all(engine)
    Base.metadata.create_all(engine)
    queuert = q.Queuert(engine, job_types)
    pages = [f"/articles/{i % 7}" for i in range(299)]
    with Session(engine) as session, session.begin():
        queuert.start_chains(session, [q.ChainStart(count_view, {"page": p}) for p in pages])
        refused = queuert.start_chain(session, count_view, {"page": "oops"})  # refused
        queuert.start_chains(
            session, [q.ChainStart(index_document, {"doc_id": i}) for i in range(120)]
        )

    worker = build_worker(queuert)
    print(f"worker ran {worker.drain()} attempts ({worker.failed} failed)")
    with Session(engine) as session:
        for job_type in (count_view, index_document):
            jobs, groups = transactions_of(session, job_type)
            print(f"{job_type.name}: {jobs} completed in {groups} transactions")
        views = session.scalar(select(func.count()).select_from(PageView))
        searched = session.scalar(select(func.count()).select_from(SearchRow))
        print(f"business rows: {views} page views, {searched} search rows")
    job = queuert.get_job(refused.id)
    error = (job.last_attempt_error or "").strip().splitlines()[-1]
    print(f"refused job: {job.status}, attempt {job.attempt}, {error}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    if args.db:
        main(create_engine(args.db))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'group_commit.db'}")
            try:
                main(engine)
            finally:
                engine.dispose()
