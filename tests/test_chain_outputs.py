"""Typed chain outputs at run time: ``entry(..., chain_output=T)`` on both engines and clients.

The declaration is for type checkers (tests/typing/case_chain_outputs.py); here:
the entry is an ``EntryType`` that works as any entry type, ``await_chain``
returns a ``CompletedChain`` carrying the output of the job that ended the
chain, and ``blocker_outputs`` of such a blocker gives its chains' final outputs.
"""

from __future__ import annotations

from typing import Any, TypedDict

from sqlalchemy.orm import Session

import queuert_sa as q

from .conftest import Db
from .test_async import environment, in_event_loop


class OrderIn(TypedDict):
    order_id: int


class ReceiptOut(TypedDict):
    receipt_id: str


class ReportIn(TypedDict):
    title: str


types = q.JobTypes()
order = types.entry(
    "co-order", input=OrderIn, chain_output=ReceiptOut, continues_with=["co-receipt"]
)
receipt = types.define("co-receipt", input=OrderIn, output=ReceiptOut)
report = types.entry("co-report", input=ReportIn, output=list, blockers=q.many(order))


def handlers(worker: q.Worker) -> None:
    worker.handler(order)(lambda a: a.continue_with(receipt, {"order_id": a.input["order_id"]}))
    worker.handler(receipt)(lambda a: a.complete({"receipt_id": f"r-{a.input['order_id']}"}))

    @worker.handler(report)
    def handle(attempt: q.Attempt[ReportIn, list[Any]]) -> q.Outcome:
        return attempt.complete([r["receipt_id"] for r in attempt.blocker_outputs(order)])


def test_await_chain_gives_the_declared_final_output(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    assert isinstance(order, q.EntryType)
    assert order.chain_output_type is ReceiptOut
    with Session(db.engine) as session, session.begin():
        chains = [client.start_chain(session, order, {"order_id": n}) for n in (1, 2)]
        summary = client.start_chain(session, report, {"title": "t"}, blockers=chains)
    worker = client.worker()
    handlers(worker)
    assert worker.drain() == 5

    done = client.await_chain(chains[0].id, order, timeout=5)
    assert isinstance(done, q.CompletedChain)
    assert isinstance(done, q.Chain)
    assert done.output == {"receipt_id": "r-1"}
    assert done.current_type_name == "co-receipt"
    assert client.get_chain(chains[1].id, order).output == {"receipt_id": "r-2"}
    assert client.await_chain(summary.id, timeout=5).output == ["r-1", "r-2"]


@in_event_loop
async def test_the_async_client_awaits_a_completed_chain(db: Db) -> None:
    async with environment(db) as env:
        client = q.AsyncQueuert(env.engine, types, notify=env.notify)
        async with env.write_session() as session, session.begin():
            chain = await client.start_chain(session, order, {"order_id": 3})
        worker = client.worker()
        worker.handler(order)(
            _async(lambda a: a.continue_with(receipt, {"order_id": a.input["order_id"]}))
        )
        worker.handler(receipt)(_async(lambda a: a.complete({"receipt_id": "r-3"})))
        assert await worker.drain() == 2
        done = await client.await_chain(chain.id, order, timeout=5)
        assert isinstance(done, q.CompletedChain)
        assert done.output == {"receipt_id": "r-3"}


def _async(fn: Any) -> Any:
    async def handler(attempt: q.AsyncAttempt[Any, Any]) -> q.Outcome:
        return fn(attempt)  # type: ignore[no-any-return]

    return handler
