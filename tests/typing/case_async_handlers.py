"""AsyncWorker.handler: the handler's AsyncAttempt[In, Out] must match the job type, as for Worker.handler.

Checked like the thread worker's registration (case_handlers.py). Plain
``def`` handlers (run on ``thread_engine=``) get an ``Attempt[In, Out]`` and
are checked the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypedDict, assert_type

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class OtherIn(TypedDict):
    name: str


class PaymentOut(TypedDict):
    payment_id: str


class ReceiptIn(TypedDict):
    receipt_id: str


job_types = q.JobTypes()
reserve = job_types.entry("reserve", input=OrderIn, continues_with=["charge"])
charge = job_types.define("charge", input=OrderIn, output=PaymentOut, continues_with=["receipt"])
receipt = job_types.define("receipt", input=ReceiptIn)


def register(worker: q.AsyncWorker) -> None:
    @worker.handler(reserve)
    async def handle_reserve(attempt: q.AsyncAttempt[OrderIn, None]) -> q.Outcome:
        assert_type(attempt.input, OrderIn)
        assert_type(attempt.job, q.Job[OrderIn])
        return attempt.continue_with(charge, {"order_id": attempt.input["order_id"]})

    @worker.handler(charge, mode="staged", lease=dt.timedelta(seconds=30))
    async def handle_charge(attempt: q.AsyncAttempt[OrderIn, PaymentOut]) -> q.Outcome:
        async with attempt.prepare():
            pass
        # The signal is awaited, never a blocking event: a bare call is a coroutine.
        assert_type(attempt.signal, q.AsyncAttemptSignal)
        assert_type(await attempt.signal.wait(), bool)
        assert_type(await attempt.signal.wait(0.5), bool)
        assert_type(attempt.signal.reason, str | None)
        assert_type(attempt.signal.is_set(), bool)
        lost: bool = attempt.signal.wait()  # expect-error
        del lost
        async with attempt.transaction():
            return attempt.complete({"payment_id": f"p-{attempt.input['order_id']}"})

    @worker.handler(receipt, backoff=q.Backoff(initial=dt.timedelta(seconds=1)))
    async def handle_receipt(attempt: q.AsyncAttempt[ReceiptIn, None]) -> q.Outcome:
        return attempt.complete(None)

    # A loosely typed handler is accepted.
    @worker.handler(charge)
    async def handle_any(attempt: q.AsyncAttempt[Any, Any]) -> q.Outcome:
        return attempt.complete({"anything": 1})

    # A plain def handler gets an Attempt (it runs on the thread engine).
    @worker.handler(reserve)
    def plain_reserve(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.continue_with(charge, {"order_id": attempt.input["order_id"]})

    # The registered function's attempt must match the job type.
    @worker.handler(reserve)  # expect-error
    async def wrong_input(attempt: q.AsyncAttempt[OtherIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(charge)  # expect-error
    async def wrong_output(attempt: q.AsyncAttempt[OrderIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    async def returns_nothing(attempt: q.AsyncAttempt[OrderIn, None]) -> None:
        attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    async def two_parameters(attempt: q.AsyncAttempt[OrderIn, None], extra: int) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    def plain_wrong_input(attempt: q.Attempt[OtherIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    async def async_with_a_sync_attempt(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.complete(None)

    async def other_handler(attempt: q.AsyncAttempt[OtherIn, None]) -> q.Outcome:
        return attempt.complete(None)

    worker.handler(reserve)(handle_reserve)
    worker.handler(reserve)(other_handler)  # expect-error
    worker.handler("reserve")  # expect-error
    worker.handler(reserve, mode="threaded")  # expect-error


def attempt_api(worker: q.AsyncWorker) -> None:
    @worker.handler(charge)
    async def misuse(attempt: q.AsyncAttempt[OrderIn, PaymentOut]) -> q.Outcome:
        attempt.complete({"payment_id": 1})  # expect-error
        attempt.continue_with(receipt, {"receipt_id": 1})  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r"}, priority=2)
        attempt.continue_with(receipt, {"receipt_id": "r"}, priority=2.0)  # expect-error
        _other: OtherIn = attempt.input  # expect-error
        return attempt.complete({"payment_id": "p"})
