"""Typed chain outputs: ``entry(..., chain_output=T)`` types what reads of the chain give.

``get_chain``/``await_chain`` (both clients) and ``attempt.blocker_outputs``
given such an entry type know the chain's final output; ``await_chain``
returns a ``CompletedChain``, whose output is set, so ``.output["field"]`` is
checked. Entry types without ``chain_output`` keep ``Any``.
"""

from __future__ import annotations

import uuid
from typing import Any, TypedDict, assert_type

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class PaymentOut(TypedDict):
    payment_id: str


class ReceiptOut(TypedDict):
    receipt_id: str
    total_cents: int


class ReportIn(TypedDict):
    title: str


class ReportOut(TypedDict):
    total: int


job_types = q.JobTypes()
# The chain reserve -> charge -> receipt ends with a ReceiptOut.
reserve = job_types.entry(
    "reserve", input=OrderIn, chain_output=ReceiptOut, continues_with=["charge"]
)
charge = job_types.define("charge", input=OrderIn, output=PaymentOut, continues_with=["receipt"])
receipt = job_types.define("receipt", input=OrderIn, output=ReceiptOut)
# An entry with an output of its own and a different chain output.
quote = job_types.entry(
    "quote", input=OrderIn, output=PaymentOut, chain_output=ReceiptOut, continues_with=["receipt"]
)
untyped = job_types.entry("untyped", input=OrderIn, continues_with=["charge"])
report = job_types.entry("report", input=ReportIn, output=ReportOut, blockers=q.many(reserve))

assert_type(reserve, q.EntryType[OrderIn, None, ReceiptOut])
assert_type(quote, q.EntryType[OrderIn, PaymentOut, ReceiptOut])


def read(queuert: q.Queuert, chain_id: uuid.UUID) -> None:
    done = queuert.await_chain(chain_id, reserve)
    assert_type(done, q.CompletedChain[OrderIn, ReceiptOut])
    assert_type(done.output, ReceiptOut)
    assert_type(done.output["total_cents"], int)
    assert_type(done.input["order_id"], int)
    print(done.output["receipt_id"].upper())
    done.output["payment_id"]  # expect-error
    total: str = done.output["total_cents"]  # expect-error
    del total

    chain = queuert.get_chain(chain_id, reserve)
    assert_type(chain, q.Chain[OrderIn, ReceiptOut])
    assert_type(chain.output, ReceiptOut | None)
    if chain.output is not None:
        assert_type(chain.output["receipt_id"], str)
    chain.output["receipt_id"]  # expect-error

    assert_type(queuert.await_chain(chain_id, quote).output, ReceiptOut)
    # Without chain_output the output stays Any; without a type, input and output are Any.
    assert_type(queuert.await_chain(chain_id, untyped), q.CompletedChain[OrderIn, Any])
    assert_type(queuert.await_chain(chain_id).output, Any)
    assert_type(queuert.get_chain(chain_id, untyped).output, Any | None)
    # A completed chain is a chain.
    as_chain: q.Chain[OrderIn, ReceiptOut] = done
    del as_chain


async def read_async(queuert: q.AsyncQueuert, chain_id: uuid.UUID) -> None:
    done = await queuert.await_chain(chain_id, reserve)
    assert_type(done.output["receipt_id"], str)
    done.output["nope"]  # expect-error
    chain = await queuert.get_chain(chain_id, reserve)
    assert_type(chain.output, ReceiptOut | None)


def register(worker: q.Worker) -> None:
    @worker.handler(report)
    def handle(attempt: q.Attempt[ReportIn, ReportOut]) -> q.Outcome:
        receipts = attempt.blocker_outputs(reserve)
        assert_type(receipts, list[ReceiptOut])
        totals = [r["total_cents"] for r in receipts]
        missing = [r["payment_id"] for r in receipts]  # expect-error
        del missing
        return attempt.complete({"total": sum(totals)})
