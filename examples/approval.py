"""Approval: a chain that waits for a person, completed from application code.

Run it:  python examples/approval.py   (needs no database server; leaves no file behind)

A refund request is a chain ``request-refund`` -> ``issue-refund``. Nobody
handles ``request-refund``: its job simply waits until a person decides. The
approve/reject button of your app calls ``queuert.complete_chain(...)`` in the
same transaction that records the decision:

* approve: ``completion.continue_with(issue_refund, ...)`` -- a worker takes over;
* reject: ``completion.complete({...})`` -- the chain ends there.

This script plays the approver. A worker runs in a background thread, and
``queuert.await_chain(...)`` blocks until each chain is complete.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Engine, ForeignKey, Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class RefundRequest(Base):  # your own business tables
    __tablename__ = "approval_refund_request"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    chain_id: Mapped[uuid.UUID | None]  # the chain that decides it
    refund_id: Mapped[str | None] = mapped_column(String(64))


class Decision(Base):
    __tablename__ = "approval_decision"
    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("approval_refund_request.id"))
    approver: Mapped[str] = mapped_column(String(64))
    approved: Mapped[bool]


class RefundIn(TypedDict):
    request_id: int


class RefundOut(TypedDict):
    approved: bool
    refund_id: str | None


job_types = q.JobTypes()
# The first step may end the chain (rejected) or continue it (approved).
request_refund = job_types.entry(
    "request-refund", input=RefundIn, output=RefundOut, continues_with=["issue-refund"]
)
issue_refund = job_types.define("issue-refund", input=RefundIn, output=RefundOut)


def register_handlers(worker: q.Worker) -> None:
    # No handler for request-refund: a person completes that step.
    @worker.handler(issue_refund)
    def do_issue_refund(attempt: q.Attempt[RefundIn, RefundOut]) -> q.Outcome:
        request = attempt.session.get_one(RefundRequest, attempt.input["request_id"])
        request.refund_id = f"re_{request.id:04d}"
        return attempt.complete({"approved": True, "refund_id": request.refund_id})


class AlreadyDecided(Exception):
    pass


def decide(engine: Engine, queuert: q.Queuert, request_id: int, *, approver: str, ok: bool) -> None:
    """What the approve/reject button does: the decision row and the chain, one transaction."""
    with Session(engine) as session, session.begin():
        # Write first. On SQLite the INSERT takes the database's write lock, so
        # nothing read after it can change before COMMIT (a read-then-write
        # transaction could fail with "database is locked").
        session.add(Decision(request_id=request_id, approver=approver, approved=ok))
        session.flush()
        request = session.get_one(RefundRequest, request_id)
        assert request.chain_id is not None

        def record(completion: q.Attempt[RefundIn, RefundOut]) -> q.Outcome:
            # completion.job is the chain's current job, locked until COMMIT.
            if completion.job.type_name != request_refund.name:
                raise AlreadyDecided(f"request {request_id} is at {completion.job.type_name}")
            if ok:
                return completion.continue_with(issue_refund, {"request_id": request_id})
            return completion.complete({"approved": False, "refund_id": None})

        queuert.complete_chain(session, request.chain_id, request_refund, record)
    # COMMIT: the decision row, the completed job and (if approved) the
    # issue-refund job appear together; then the in-process worker is woken.


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'approval.db'}")
        worker: q.Worker | None = None
        try:
            queuert = q.Queuert(engine, job_types)
            q.metadata.create_all(engine)
            Base.metadata.create_all(engine)
            worker = queuert.worker()
            register_handlers(worker)
            worker.start()  # background threads; a service would run `queuert-sa worker`

            with Session(engine) as session, session.begin():
                requests = [RefundRequest(amount_cents=1500), RefundRequest(amount_cents=99_000)]
                session.add_all(requests)
                session.flush()
                chains = queuert.start_chains(
                    session, [request_refund({"request_id": r.id}) for r in requests]
                )
                for request, chain in zip(requests, chains, strict=True):
                    request.chain_id = chain.id
                first, second = (r.id for r in requests)
            first_chain, second_chain = (c.id for c in chains)

            # Nobody has decided yet: the worker has no handler for request-refund.
            try:
                queuert.await_chain(first_chain, timeout=dt.timedelta(milliseconds=500))
            except q.WaitChainTimeoutError:
                waiting = queuert.get_chain(first_chain)
                print(
                    f"request {first}: waiting for a person ({waiting.current_type_name} pending)"
                )

            decide(engine, queuert, first, approver="grace", ok=True)
            started = time.monotonic()
            done = queuert.await_chain(first_chain, request_refund)
            waited = time.monotonic() - started
            print(f"request {first}: approved; the worker finished the chain {waited:.2f} s later")
            print(
                f"request {first}: {done.status} at {done.current_type_name}, output {done.output}"
            )

            decide(engine, queuert, second, approver="grace", ok=False)
            done = queuert.await_chain(second_chain, request_refund)
            print(
                f"request {second}: {done.status} at {done.current_type_name}, output {done.output}"
            )
            human_step = queuert.get_job(second_chain)
            print(f"completed_by of a step a person completed: {human_step.completed_by}")

            try:  # a second click on the same button
                decide(engine, queuert, first, approver="alan", ok=False)
            except (AlreadyDecided, q.JobAlreadyCompletedError) as exc:
                # Raised inside the transaction: the second Decision row rolled back too.
                print(f"second decision refused: {type(exc).__name__}")
            with Session(engine) as session:
                decisions = session.scalar(select(func.count()).select_from(Decision))
            print(f"decisions recorded: {decisions}")
            return 0
        finally:
            if worker is not None:
                worker.stop()
            engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
