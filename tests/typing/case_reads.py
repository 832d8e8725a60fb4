"""get_chain/get_job: passing the job type types the input; the chain's output is Any."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict, assert_type

from sqlalchemy.orm import Session

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class PaymentOut(TypedDict):
    payment_id: str


job_types = q.JobTypes()
reserve = job_types.entry("reserve", input=OrderIn, continues_with=["charge"])
charge = job_types.define("charge", input=OrderIn, output=PaymentOut)


def read(queuert: q.Queuert, session: Session, chain_id: uuid.UUID) -> None:
    chain = queuert.get_chain(chain_id, reserve)
    assert_type(chain, q.Chain[OrderIn, Any])
    assert_type(chain.input, OrderIn)
    assert_type(chain.input["order_id"], int)
    # The output is the *last* job's output, whatever its type: typed Any.
    assert_type(chain.output, Any | None)
    assert_type(queuert.get_chain(str(chain_id), reserve, session=session).input, OrderIn)
    assert_type(queuert.get_chain(chain_id), q.Chain[Any, Any])

    job = queuert.get_job(chain_id, charge)
    assert_type(job, q.Job[OrderIn])
    assert_type(job.input, OrderIn)
    assert_type(queuert.get_job(chain_id, charge, session=session).input, OrderIn)
    assert_type(queuert.get_job(chain_id), q.Job[Any])

    # The typed input is not something else.
    _in: PaymentOut = queuert.get_chain(chain_id, reserve).input  # expect-error
    _job_in: str = queuert.get_job(chain_id, charge).input  # expect-error
    _chain: q.Chain[PaymentOut, Any] = queuert.get_chain(chain_id, reserve)  # expect-error
    _job: q.Job[int] = queuert.get_job(chain_id, charge)  # expect-error
    _key: str = chain.input["order_id"]  # expect-error
    _missing = chain.input["missing"]  # expect-error

    # Wrong arguments.
    queuert.get_chain(chain_id, "reserve")  # expect-error
    queuert.get_chain(42)  # expect-error
    queuert.get_chain(chain_id, reserve, session)  # expect-error
    queuert.get_job(chain_id, charge, session=42)  # expect-error

    # Snapshots are immutable.
    chain.status = q.JobStatus.COMPLETED  # expect-error
    job.input = {"order_id": 2}  # expect-error
