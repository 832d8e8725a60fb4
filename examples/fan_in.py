"""Fan-in: three fetch chains run, then a merge job that was blocked on them.

    python examples/fan_in.py

Runs on a SQLite file in a temporary directory; no server needed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TypedDict

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import queuert_sa as q


class SourceIn(TypedDict):
    url: str


class Rows(TypedDict):
    rows: int


class MergeIn(TypedDict):
    name: str


class Merged(TypedDict):
    name: str
    total: int
    sources: list[str]


job_types = q.JobTypes()
fetch = job_types.entry("fetch-source", input=SourceIn, output=Rows)
merge = job_types.entry("merge", input=MergeIn, output=Merged, blockers=q.many(fetch))


def main() -> None:
    engine = create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'fan_in.db'}")
    queuert = q.Queuert(engine, job_types)
    q.metadata.create_all(engine)

    with Session(engine) as session, session.begin():
        sources = [
            queuert.start_chain(session, fetch, {"url": url})
            for url in ("https://a.example", "https://bb.example", "https://ccc.example")
        ]
        merged = queuert.start_chain(session, merge, {"name": "daily"}, blockers=sources)
    print(f"merge chain {merged.id} starts {merged.status}")

    worker = queuert.worker()

    @worker.handler(fetch)
    def fetch_source(attempt: q.Attempt[SourceIn, Rows]) -> q.Outcome:
        rows = len(attempt.input["url"])  # a real app downloads here
        print(f"fetched {attempt.input['url']}: {rows} rows")
        return attempt.complete({"rows": rows})

    @worker.handler(merge)
    def merge_sources(attempt: q.Attempt[MergeIn, Merged]) -> q.Outcome:
        outputs = attempt.blocker_outputs(fetch)
        return attempt.complete(
            {
                "name": attempt.input["name"],
                "total": sum(o["rows"] for o in outputs),
                "sources": [chain.input["url"] for chain in attempt.blockers],
            }
        )

    processed = worker.drain()
    done = queuert.get_chain(merged.id, merge)
    print(f"processed {processed} jobs; merge chain {done.status}: {done.output}")
    engine.dispose()


if __name__ == "__main__":
    main()
