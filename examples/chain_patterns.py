"""Chain patterns: linear, branch, loop and go-to, on a SQLite file in a temporary directory.

Run it:  python examples/chain_patterns.py   (needs no database server; leaves no file behind)

A chain is its first job; each handler either completes the chain with an
output or hands it on with ``attempt.continue_with(next_type, input)``. The
script starts one chain of each pattern in one transaction, processes them with
``worker.drain()`` and prints each chain's jobs and final output.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import TypedDict

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job


class UrlIn(TypedDict):
    url: str


class PageIn(TypedDict):
    url: str
    text: str


class Stored(TypedDict):
    url: str
    words: int


class AmountIn(TypedDict):
    amount: int


class Approval(TypedDict):
    amount: int
    approved_by: str


class ExportIn(TypedDict):
    export_id: str
    polls: int


class ExportReady(TypedDict):
    export_id: str
    polls: int


class DraftIn(TypedDict):
    revision: int


class Accepted(TypedDict):
    accepted_revision: int


job_types = q.JobTypes()

# Linear: fetch -> parse -> store -> done.
fetch = job_types.entry("fetch", input=UrlIn, continues_with=["parse"])
parse = job_types.define("parse", input=PageIn, continues_with=["store"])
store = job_types.define("store", input=PageIn, output=Stored)

# Branch: check-amount -> auto-approve (small amounts) | manual-review (the rest).
check = job_types.entry(
    "check-amount", input=AmountIn, continues_with=["auto-approve", "manual-review"]
)
auto_approve = job_types.define("auto-approve", input=AmountIn, output=Approval)
manual_review = job_types.define("manual-review", input=AmountIn, output=Approval)

# Loop: poll-export continues with itself until the export is ready.
poll = job_types.entry(
    "poll-export", input=ExportIn, output=ExportReady, continues_with=["poll-export"]
)

# Go-to: write-draft -> review-draft -> (back to write-draft | done).
write = job_types.entry("write-draft", input=DraftIn, continues_with=["review-draft"])
review = job_types.define(
    "review-draft", input=DraftIn, output=Accepted, continues_with=["write-draft"]
)

#: Polls after which the (simulated) export is ready.
READY_AFTER_POLLS = 3
#: Revision the reviewer accepts; earlier ones are sent back.
ACCEPTED_REVISION = 2


def register_handlers(worker: q.Worker) -> None:
    @worker.handler(fetch)
    def do_fetch(attempt: q.Attempt[UrlIn, None]) -> q.Outcome:
        page = "Hello chains, hello world"  # a real handler would download it
        return attempt.continue_with(parse, {"url": attempt.input["url"], "text": page})

    @worker.handler(parse)
    def do_parse(attempt: q.Attempt[PageIn, None]) -> q.Outcome:
        words = attempt.input["text"].lower().replace(",", "")
        return attempt.continue_with(store, {"url": attempt.input["url"], "text": words})

    @worker.handler(store)
    def do_store(attempt: q.Attempt[PageIn, Stored]) -> q.Outcome:
        return attempt.complete(
            {"url": attempt.input["url"], "words": len(attempt.input["text"].split())}
        )

    @worker.handler(check)
    def do_check(attempt: q.Attempt[AmountIn, None]) -> q.Outcome:
        target = auto_approve if attempt.input["amount"] < 100 else manual_review
        return attempt.continue_with(target, attempt.input)

    @worker.handler(auto_approve)
    def do_auto_approve(attempt: q.Attempt[AmountIn, Approval]) -> q.Outcome:
        return attempt.complete({"amount": attempt.input["amount"], "approved_by": "policy"})

    @worker.handler(manual_review)
    def do_manual_review(attempt: q.Attempt[AmountIn, Approval]) -> q.Outcome:
        return attempt.complete({"amount": attempt.input["amount"], "approved_by": "reviewer"})

    @worker.handler(poll)
    def do_poll(attempt: q.Attempt[ExportIn, ExportReady]) -> q.Outcome:
        polls = attempt.input["polls"] + 1
        if polls < READY_AFTER_POLLS:
            # A real poller would wait between looks: continue_with(..., run_in=timedelta(seconds=30)).
            return attempt.continue_with(
                poll, {"export_id": attempt.input["export_id"], "polls": polls}
            )
        return attempt.complete({"export_id": attempt.input["export_id"], "polls": polls})

    @worker.handler(write)
    def do_write(attempt: q.Attempt[DraftIn, None]) -> q.Outcome:
        return attempt.continue_with(review, attempt.input)

    @worker.handler(review)
    def do_review(attempt: q.Attempt[DraftIn, Accepted]) -> q.Outcome:
        revision = attempt.input["revision"]
        if revision < ACCEPTED_REVISION:
            return attempt.continue_with(write, {"revision": revision + 1})  # jump back
        return attempt.complete({"accepted_revision": revision})


def describe(session: Session, queuert: q.Queuert, name: str, chain_id: uuid.UUID) -> str:
    """One line: the chain's jobs in ``chain_index`` order, its status and its output."""
    types = session.scalars(
        select(Job.type_name).where(Job.chain_id == chain_id).order_by(Job.chain_index)
    ).all()
    chain = queuert.get_chain(chain_id, session=session)
    output = json.dumps(chain.output, sort_keys=True)
    return f"{name}: {' -> '.join(types)} => {chain.status}, output {output}"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'chains.db'}")
        try:
            queuert = q.Queuert(engine, job_types)
            q.metadata.create_all(engine)
            worker = queuert.worker()
            register_handlers(worker)

            # One transaction, one INSERT: four chains, each its first job.
            with Session(engine) as session, session.begin():
                chains = queuert.start_chains(
                    session,
                    [
                        fetch({"url": "https://example.com/"}),
                        check({"amount": 250}),
                        poll({"export_id": "exp-1", "polls": 0}),
                        write({"revision": 1}),
                    ],
                )

            print(f"processed {worker.drain()} jobs")
            names = ["linear", "branch", "loop", "go-to"]
            with Session(engine) as session:
                lines = [
                    describe(session, queuert, name, chain.id)
                    for name, chain in zip(names, chains, strict=True)
                ]
                done = all(queuert.get_chain(c.id, session=session).is_completed for c in chains)
            print("\n".join(lines))
            return 0 if done else 1
        finally:
            engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
