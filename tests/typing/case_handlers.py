"""Worker.handler and Attempt: the handler's Attempt[In, Out] must match the job type."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
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


def register(worker: q.Worker) -> None:
    @worker.handler(reserve)
    def handle_reserve(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        assert_type(attempt.input, OrderIn)
        assert_type(attempt.job, q.Job[OrderIn])
        assert_type(attempt.job_type, q.JobType[OrderIn, None])
        return attempt.continue_with(charge, {"order_id": attempt.input["order_id"]})

    assert_type(handle_reserve, Callable[[q.Attempt[OrderIn, None]], q.Outcome])

    @worker.handler(charge, backoff=q.Backoff(initial=dt.timedelta(seconds=1)))
    def handle_charge(attempt: q.Attempt[OrderIn, PaymentOut]) -> q.Outcome:
        if attempt.input["order_id"] < 0:
            later = dt.timedelta(seconds=30)
            return attempt.continue_with(
                receipt, {"receipt_id": "r"}, run_in=later, id=uuid.uuid4()
            )
        # A def handler's signal blocks: wait() is a plain call returning bool.
        assert_type(attempt.signal, q.AttemptSignal)
        assert_type(attempt.signal.wait(0.5), bool)
        outcome = attempt.complete({"payment_id": f"p-{attempt.input['order_id']}"})
        assert_type(outcome, q.Outcome)
        return outcome

    @worker.handler(receipt, mode="atomic")
    def handle_receipt(attempt: q.Attempt[ReceiptIn, None]) -> q.Outcome:
        if not attempt.input["receipt_id"]:
            raise q.Reschedule(run_in=dt.timedelta(minutes=1), reason="no receipt yet")
        return attempt.complete(None)

    # A loosely typed handler is accepted.
    @worker.handler(charge)
    def handle_any(attempt: q.Attempt[Any, Any]) -> q.Outcome:
        return attempt.complete({"anything": 1})

    # The registered function's Attempt must match the job type.
    @worker.handler(reserve)  # expect-error
    def wrong_input(attempt: q.Attempt[OtherIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(charge)  # expect-error
    def wrong_output(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    def returns_nothing(attempt: q.Attempt[OrderIn, None]) -> None:
        attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    async def async_handler(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        return attempt.complete(None)

    @worker.handler(reserve)  # expect-error
    def two_parameters(attempt: q.Attempt[OrderIn, None], extra: int) -> q.Outcome:
        return attempt.complete(None)

    def other_handler(attempt: q.Attempt[OtherIn, None]) -> q.Outcome:
        return attempt.complete(None)

    worker.handler(reserve)(handle_reserve)
    worker.handler(reserve)(other_handler)  # expect-error
    worker.handler("reserve")  # expect-error
    worker.handler(reserve, mode="threaded")  # expect-error


def attempt_api(worker: q.Worker) -> None:
    @worker.handler(charge)
    def misuse(attempt: q.Attempt[OrderIn, PaymentOut]) -> q.Outcome:
        # complete(): the output must be the type's output.
        attempt.complete({"payment_id": 1})  # expect-error
        attempt.complete({})  # expect-error
        attempt.complete(None)  # expect-error
        attempt.complete()  # expect-error
        # continue_with(): the input is checked against the target type, and the options.
        attempt.continue_with(receipt, {"receipt_id": 1})  # expect-error
        attempt.continue_with(receipt, {"order_id": 1})  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r", "extra": 1})  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r"}, run_at=1)  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r"}, run_in=30)  # seconds: accepted
        attempt.continue_with(receipt, {"receipt_id": "r"}, run_in="30")  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r"}, priority=3)  # overrides the inherited
        attempt.continue_with(receipt, {"receipt_id": "r"}, priority=None)  # inherits
        attempt.continue_with(receipt, {"receipt_id": "r"}, priority="3")  # expect-error
        attempt.continue_with(receipt, {"receipt_id": "r"}, foo=1)  # expect-error
        attempt.continue_with(receipt)  # expect-error
        attempt.continue_with("receipt", {"receipt_id": "r"})  # expect-error
        # The input is the type's input.
        _other: OtherIn = attempt.input  # expect-error
        _id: str = attempt.input["order_id"]  # expect-error
        return attempt.complete({"payment_id": "p"})

    @worker.handler(reserve)
    def no_output(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        attempt.complete({"payment_id": "p"})  # expect-error
        return attempt.complete(None)

    @worker.handler(receipt)
    def reschedule(attempt: q.Attempt[ReceiptIn, None]) -> q.Outcome:
        if attempt.input["receipt_id"] == "a":
            raise q.Reschedule(run_in=30)  # seconds: accepted
        if attempt.input["receipt_id"] == "c":
            raise q.Reschedule(run_in="30")  # expect-error
        if attempt.input["receipt_id"] == "b":
            raise q.Reschedule(dt.timedelta(seconds=30))  # expect-error
        return attempt.complete(None)
