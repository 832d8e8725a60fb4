"""JobTypes.entry/define: the overloads give JobType[In, Out]; Out is None without output=."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, assert_type

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class PaymentOut(TypedDict):
    payment_id: str


@dataclass
class Shipment:
    order_id: int
    carrier: str


job_types = q.JobTypes()

# entry(): may start a chain.
reserve = job_types.entry("reserve", input=OrderIn, continues_with=["charge"])
assert_type(reserve, q.JobType[OrderIn, None])
quote = job_types.entry("quote", input=OrderIn, output=PaymentOut)
assert_type(quote, q.JobType[OrderIn, PaymentOut])
explicit_none = job_types.entry("explicit-none", input=OrderIn, output=None)
assert_type(explicit_none, q.JobType[OrderIn, None])

# define(): reachable only through continue_with; typed the same way.
charge = job_types.define("charge", input=OrderIn, output=PaymentOut, continues_with=["ship"])
assert_type(charge, q.JobType[OrderIn, PaymentOut])
notify = job_types.define("notify", input=OrderIn)
assert_type(notify, q.JobType[OrderIn, None])

# Dataclasses and plain JSON classes.
ship = job_types.define("ship", input=Shipment, output=str)
assert_type(ship, q.JobType[Shipment, str])
count = job_types.entry("count", input=int, output=float)
assert_type(count, q.JobType[int, float])
tags = job_types.entry("tags", input=list[str], output=dict[str, int])
assert_type(tags, q.JobType[list[str], dict[str, int]])

# Annotations that are not classes fall back to JobType[Any, Any] (documented).
maybe = job_types.entry("maybe", input=int | None)
assert_type(maybe, q.JobType[Any, Any])
choice = job_types.define("choice", input=Literal["a", "b"], output=int | None)
assert_type(choice, q.JobType[Any, Any])

# Options.
slow = job_types.entry("slow", input=OrderIn, backoff=q.Backoff(initial=dt.timedelta(seconds=1)))
assert_type(slow, q.JobType[OrderIn, None])

# What the declarations refuse.
job_types.entry("no-input")  # expect-error
job_types.define("no-input-either", output=int)  # expect-error
job_types.entry("positional-input", OrderIn)  # expect-error
job_types.entry("typo", inputs=OrderIn)  # expect-error
job_types.entry(1, input=OrderIn)  # expect-error
job_types.entry("bad-backoff", input=OrderIn, backoff=5)  # expect-error
job_types.entry("objects-not-names", input=OrderIn, continues_with=[charge])  # expect-error

# The declared types stick: JobType is invariant in In and Out.
_wrong_in: q.JobType[PaymentOut, None] = reserve  # expect-error
_wrong_out: q.JobType[OrderIn, int] = charge  # expect-error
_no_output: q.JobType[OrderIn, PaymentOut] = reserve  # expect-error
_dataclass: q.JobType[OrderIn, str] = ship  # expect-error
