"""Calling a job type builds a typed ChainStart; start_chains takes a sequence of them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypedDict, assert_type

from sqlalchemy.orm import Session

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class PaymentOut(TypedDict):
    payment_id: str


job_types = q.JobTypes()
reserve = job_types.entry("reserve", input=OrderIn)
quote = job_types.entry("quote", input=OrderIn, output=PaymentOut)


def start_many(queuert: q.Queuert, session: Session, orders: list[OrderIn]) -> None:
    first = reserve({"order_id": 1})
    assert_type(first, q.ChainStart[OrderIn, None])
    later = quote({"order_id": 2}, run_in=dt.timedelta(minutes=1), id=uuid.uuid4())
    assert_type(later, q.ChainStart[OrderIn, PaymentOut])
    at = reserve({"order_id": 3}, run_at=dt.datetime.now(dt.UTC))
    urgent = reserve({"order_id": 4}, priority=10)
    assert_type(urgent.priority, int | None)
    direct = q.ChainStart(reserve, orders[0], priority=-1)
    assert_type(direct, q.ChainStart[OrderIn, None])
    queuert.start_chains(session, [urgent, direct])

    chains = queuert.start_chains(session, [first, later, at])
    assert_type(chains, list[q.Chain[Any, Any]])
    queuert.start_chains(session, [reserve(order) for order in orders])
    queuert.start_chains(session, (first, later))
    queuert.start_chains(session, [])

    # A wrong input or option inside the list is still checked.
    queuert.start_chains(session, [reserve({"order_id": "x"})])  # expect-error
    queuert.start_chains(session, [first, quote({})])  # expect-error
    queuert.start_chains(session, [reserve({"order_id": 1}, run_at=1)])  # expect-error
    queuert.start_chains(session, [reserve({"order_id": 1}, foo=1)])  # expect-error
    queuert.start_chains(session, [reserve({"order_id": 1}, priority="high")])  # expect-error
    q.ChainStart(reserve, orders[0], priority=0.5)  # expect-error
    reserve({"order_id": 1, "extra": True})  # expect-error

    # Not a sequence of ChainStart.
    queuert.start_chains(session, first)  # expect-error
    queuert.start_chains(session, [{"order_id": 1}])  # expect-error
    queuert.start_chains(session, [reserve])  # expect-error
    queuert.start_chains(session, (reserve(order) for order in orders))  # expect-error

    # A ChainStart keeps its types.
    _start: q.ChainStart[PaymentOut, None] = reserve({"order_id": 1})  # expect-error
    _output: q.ChainStart[OrderIn, None] = quote({"order_id": 1})  # expect-error
