"""Retry limits and failing: max_attempts, fail_on, q.Fail, and cleanup's retention of failures."""

from __future__ import annotations

import datetime as dt
from typing import TypedDict

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class CardDeclined(Exception):
    pass


job_types = q.JobTypes()
charge = job_types.entry("charge", input=OrderIn, max_attempts=5)
refund = job_types.define("refund", input=OrderIn, max_attempts=None)
job_types.entry("bad-limit", input=OrderIn, max_attempts="5")  # expect-error


def register(queuert: q.Queuert, aqueuert: q.AsyncQueuert) -> None:
    worker = queuert.worker(max_attempts=20)
    queuert.worker(max_attempts="20")  # expect-error
    aqueuert.worker(max_attempts=3)

    @worker.handler(charge, max_attempts=3, fail_on=(CardDeclined, KeyError))
    def charge_card(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        if attempt.input["order_id"] < 0:
            raise q.Fail("no such order")
        if attempt.input["order_id"] == 0:
            raise q.Fail()
        raise q.Fail(reason=1)  # expect-error

    @worker.batch_handler(refund, max_attempts=2, fail_on=CardDeclined)
    def refund_all(attempts: list[q.Attempt[OrderIn, None]]) -> list[q.Outcome]:
        return [a.complete(None) for a in attempts]

    worker.handler(charge, fail_on="KeyError")  # expect-error
    worker.handler(charge, max_attempts=1.5)  # expect-error

    queuert.cleanup(older_than=dt.timedelta(days=7), failed_older_than=30 * 86400)
    queuert.cleanup(
        older_than=7 * 86400, failed_older_than=None, cancelled_older_than=dt.timedelta(days=1)
    )
    queuert.cleanup(older_than=1, failed_older_than="30d")  # expect-error
