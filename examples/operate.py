"""Operating a queue: dedup, scheduling, trigger, listings, deletion, cleanup and cancel.

Run it:  python examples/operate.py            (a SQLite file in a temporary directory)
         python examples/operate.py --db URL   (e.g. a fresh PostgreSQL database)

The script starts a handful of chains -- two account syncs, one of them
started twice with the same dedup key; two reports scheduled for later; two
fan-ins (``merge`` jobs blocked on ``fetch-source`` chains) -- and processes
what is due with ``worker.drain()``. Then it does what an operator or an admin
page does: triggers a scheduled job now, pages through the chains, shows one
chain's jobs and a fan-in's blockers, tries to delete a chain that another
chain still needs (refused), deletes it together with its dependent, runs
the retention cleanup, and cancels a chain that a fan-in waits for (first
alone, then with its dependent). Chains are printed by name rather than by id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

import queuert_sa as q


class AccountIn(TypedDict):
    account_id: int


class Synced(TypedDict):
    account_id: int
    records: int


class ReportIn(TypedDict):
    report: str


class Sent(TypedDict):
    report: str
    sent: bool


class SourceIn(TypedDict):
    source: str


class Rows(TypedDict):
    rows: int


class MergeIn(TypedDict):
    name: str


class Merged(TypedDict):
    total: int


job_types = q.JobTypes()
sync = job_types.entry("sync-account", input=AccountIn, continues_with=["record-sync"])
record = job_types.define("record-sync", input=AccountIn, output=Synced)
report = job_types.entry("send-report", input=ReportIn, output=Sent)
fetch = job_types.entry("fetch-source", input=SourceIn, output=Rows)
merge = job_types.entry("merge", input=MergeIn, output=Merged, blockers=q.many(fetch))


def register_handlers(worker: q.Worker) -> None:
    @worker.handler(sync)
    def do_sync(attempt: q.Attempt[AccountIn, None]) -> q.Outcome:
        return attempt.continue_with(record, attempt.input)

    @worker.handler(record)
    def do_record(attempt: q.Attempt[AccountIn, Synced]) -> q.Outcome:
        return attempt.complete({"account_id": attempt.input["account_id"], "records": 3})

    @worker.handler(report)
    def do_report(attempt: q.Attempt[ReportIn, Sent]) -> q.Outcome:
        return attempt.complete({"report": attempt.input["report"], "sent": True})

    @worker.handler(fetch)
    def do_fetch(attempt: q.Attempt[SourceIn, Rows]) -> q.Outcome:
        return attempt.complete({"rows": len(attempt.input["source"])})

    @worker.handler(merge)
    def do_merge(attempt: q.Attempt[MergeIn, Merged]) -> q.Outcome:
        return attempt.complete({"total": sum(r["rows"] for r in attempt.blocker_outputs(fetch))})


#: Readable names of the chains, by id (ids are UUIDv7s that look alike in a demo).
names: dict[uuid.UUID, str] = {}


def name(chain_or_id: q.Chain[Any, Any] | uuid.UUID) -> str:
    chain_id = chain_or_id if isinstance(chain_or_id, uuid.UUID) else chain_or_id.id
    return names.get(chain_id, str(chain_id))


def state(chain: q.Chain[Any, Any]) -> str:
    return f"{name(chain)} ({chain.status})"


def minutes(delay: dt.timedelta) -> str:
    return f"{max(delay, dt.timedelta(0)).total_seconds() / 60:.0f} min"


def run(url: str) -> int:
    engine = create_engine(url)
    try:
        return operate(engine)
    finally:
        engine.dispose()


def operate(engine: Engine) -> int:
    queuert = q.Queuert(engine, job_types)
    q.metadata.create_all(engine)
    worker = queuert.worker()
    register_handlers(worker)
    later = dt.timedelta(hours=1)

    print("== start chains (one transaction)")
    syncs: dict[int, q.Chain[AccountIn, Any]] = {}
    with Session(engine) as session, session.begin():
        # The second start of account 7 finds the first (open) chain and returns
        # it with deduplicated=True; it writes nothing.
        for account_id in (7, 7, 8):
            chain = queuert.start_chain(
                session, sync, {"account_id": account_id}, dedup=q.Dedup(f"account:{account_id}")
            )
            if chain.deduplicated:
                print(f"sync account {account_id}: deduplicated, returned {state(chain)}")
            else:
                syncs[account_id] = chain
                names[chain.id] = f"sync {account_id}"
                print(f"sync account {account_id}: started {state(chain)}")
        weekly = queuert.start_chain(session, report, {"report": "weekly"}, run_in=later)
        monthly = queuert.start_chain(session, report, {"report": "monthly"}, run_in=later * 24)
        names[weekly.id], names[monthly.id] = "weekly report", "monthly report"
        print(f"reports scheduled: {state(weekly)} in 1 h, {state(monthly)} in 24 h")
        a, b, d = (queuert.start_chain(session, fetch, {"source": s}) for s in ("a", "bb", "dddd"))
        c = queuert.start_chain(session, fetch, {"source": "ccc"}, run_in=later * 24)
        daily = queuert.start_chain(session, merge, {"name": "daily"}, blockers=[a, b])
        nightly = queuert.start_chain(session, merge, {"name": "nightly"}, blockers=[c, d])
        for source, label in ((a, "a"), (b, "b"), (c, "c"), (d, "d")):
            names[source.id] = f"fetch {label}"
        names[daily.id], names[nightly.id] = "merge daily", "merge nightly"
        print(f"fan-ins: {state(daily)} waits for fetch a, b; {state(nightly)} for fetch c, d")
        print("(fetch c is scheduled in 24 h)")

    # drain() runs what is due: not the scheduled reports, not fetch c, nor
    # merge nightly, which waits for fetch c.
    print(f"\n== drain: processed {worker.drain()} jobs (what is due)")
    # scope="any" also matches a completed chain (started within the window).
    with Session(engine) as session, session.begin():
        again = queuert.start_chain(
            session,
            sync,
            {"account_id": 7},
            dedup=q.Dedup("account:7", scope="any", window=dt.timedelta(hours=1)),
        )
    print(
        f"sync account 7 again, scope='any' within 1 h: deduplicated={again.deduplicated}, "
        f"returned {state(again)}"
    )

    print("\n== trigger the weekly report now")
    # An operator's "run now": the job becomes due at once, workers are woken
    # after COMMIT. Only a pending job can be triggered.
    with Session(engine) as session, session.begin():
        before = queuert.get_job(weekly.current_job_id, session=session).scheduled_at
        job = queuert.trigger_job(session, weekly.current_job_id)
        now = dt.datetime.now(dt.UTC)
        print(
            f"{name(weekly)}: was due in {minutes(before - now)}, now due in "
            f"{minutes(job.scheduled_at - now)} ({job.status})"
        )
    processed = worker.drain()
    output = queuert.get_chain(weekly.id, report).output
    print(
        f"drain: processed {processed} job; weekly report output {json.dumps(output, sort_keys=True)}"
    )
    try:
        with Session(engine) as session, session.begin():
            queuert.trigger_job(session, weekly.current_job_id)
    except q.JobNotTriggerableError as exc:
        print(f"trigger again refused: {type(exc).__name__} (status {exc.status})")

    print("\n== list chains, 4 per page, newest first")
    # Keyset pagination: pass next_cursor back, with the same filters and order.
    cursor: str | None = None
    page_number = 0
    while True:
        page = queuert.list_chains(limit=4, cursor=cursor)
        page_number += 1
        print(f"page {page_number}: " + ", ".join(state(chain) for chain in page))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    open_page = queuert.list_chains(statuses=["blocked", "pending", "running"], order="asc")
    print("open chains: " + ", ".join(state(chain) for chain in open_page))
    desc_cursor = queuert.list_chains(limit=4).next_cursor
    try:
        queuert.list_chains(limit=4, cursor=desc_cursor, order="asc")
    except q.InvalidCursorError as exc:
        print(f"a 'desc' cursor with order='asc': {type(exc).__name__}")

    print("\n== one chain's jobs, and a fan-in's blockers")
    for step in queuert.list_chain_jobs(syncs[7].id):
        output = json.dumps(step.output, sort_keys=True)
        print(f"sync 7 #{step.chain_index}: {step.type_name} {step.status}, output {output}")
    blockers = queuert.get_job_blockers(daily.id)
    print(f"merge daily waits for: {', '.join(state(chain) for chain in blockers)}")
    waiting = queuert.list_blocked_jobs(a.id)
    print(f"jobs blocked by fetch a: {', '.join(name(job.chain_id) for job in waiting)}")

    # merge daily declared fetch a as a blocker: deleting fetch a alone is
    # refused (all or nothing); deleting both in one call is fine.
    print("\n== delete")
    try:
        with Session(engine) as session, session.begin():
            queuert.delete_chains(session, [a.id])
    except q.BlockerReferenceError as exc:
        message = str(exc)
        for chain_id, label in names.items():
            message = message.replace(str(chain_id), label)
        print(f"delete fetch a refused: {type(exc).__name__}: {message}")
    with Session(engine) as session, session.begin():
        deleted = queuert.delete_chains(session, [a.id, daily.id])
    print(f"delete fetch a with its dependent: deleted {', '.join(map(name, deleted))}")

    # Retention. A real application keeps completed chains for a while
    # (older_than=timedelta(days=30)); 0 makes every completed chain old enough.
    # Open chains, and completed ones an open chain still needs, are kept.
    print("\n== cleanup(older_than=0, batch_size=2): every chain completed before now")
    removed = queuert.cleanup(older_than=dt.timedelta(0), batch_size=2)
    print(f"deleted {removed} completed chains")
    left = queuert.list_chains(order="asc")
    print("kept: " + ", ".join(state(chain) for chain in left))
    print("(fetch d is completed but kept: merge nightly, still open, needs its output)")
    expected = {"monthly report", "fetch c", "fetch d", "merge nightly"}
    kept = {name(chain) for chain in left} == expected

    # Cancel: source c will never come. A cancelled chain ends (await_chain
    # raises at once); the jobs blocked on it stay blocked unless cascade=True.
    print("\n== cancel fetch c")
    with Session(engine) as session, session.begin():
        cancelled = queuert.cancel_chain(session, c.id, reason="source c retired")
    print(f"cancelled: {', '.join(map(name, cancelled))}")
    stuck = [job for job in queuert.list_blocked_jobs(c.id) if job.status == "blocked"]
    print(f"still blocked on fetch c: {', '.join(name(job.chain_id) for job in stuck)}")
    try:
        queuert.await_chain(c.id, timeout=dt.timedelta(seconds=5))
    except q.ChainCancelledError as exc:
        print(f"await fetch c: {type(exc).__name__} (reason {exc.reason!r})")
    with Session(engine) as session, session.begin():
        cascaded = queuert.cancel_chain(session, c.id, reason="source c retired", cascade=True)
    print(f"cancel fetch c again, cascade=True: cancelled {', '.join(map(name, cascaded))}")
    print(f"now: {state(queuert.get_chain(nightly.id))}, {state(queuert.get_chain(c.id))}")
    return 0 if kept else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Operate a queue: dedup, trigger, list, delete.")
    parser.add_argument(
        "--db", metavar="URL", help="database URL (default: a SQLite file in a temp directory)"
    )
    args = parser.parse_args(argv)
    if args.db:
        return run(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        return run(f"sqlite:///{Path(tmp) / 'operate.db'}")


if __name__ == "__main__":
    raise SystemExit(main())
