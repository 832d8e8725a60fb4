"""Staged mode: charge an order through a payment gateway without holding a transaction open.

Run it:  python examples/staged_payment.py   (needs no database server; leaves no file behind)

The ``charge-order`` handler is registered with ``mode="staged"``:

1. ``with attempt.prepare() as s:`` -- a short transaction that reads the order
   and commits the job as ``running`` with a lease;
2. the gateway call, with no transaction open (the worker renews the lease
   meanwhile), using the job id as the idempotency key;
3. ``with attempt.transaction() as s:`` -- a new transaction that re-checks that
   this attempt still owns the job, then stores the payment id and continues
   the chain, all in one COMMIT.

The fake gateway loses its first response (the charge went through, the reply
did not arrive), so the first attempt fails and is retried; the retry sends the
same idempotency key and gets the same payment back: one charge, not two.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class Order(Base):  # your own business table
    __tablename__ = "staged_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount_cents: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="new")
    payment_id: Mapped[str | None] = mapped_column(String(64))


class OrderIn(TypedDict):
    order_id: int


class ReceiptOut(TypedDict):
    order_id: int
    payment_id: str


class FakeGateway:
    """Stands in for a payment API that honours idempotency keys.

    A real gateway (Stripe, Adyen, ...) remembers the key of each request and
    answers a repeated key with the original payment instead of charging again.
    """

    def __init__(self, *, lose_first_response: bool) -> None:
        self.payments: dict[str, str] = {}  # idempotency key -> payment id
        self.calls = 0
        self._lose_next_response = lose_first_response

    def charge(self, *, amount_cents: int, idempotency_key: str) -> str:
        self.calls += 1
        payment_id = self.payments.get(idempotency_key)
        if payment_id is None:  # a new key: charge the card
            payment_id = f"pay_{len(self.payments) + 1:04d}_{amount_cents}"
            self.payments[idempotency_key] = payment_id
        if self._lose_next_response:
            self._lose_next_response = False
            raise TimeoutError("gateway timed out (the charge went through, the reply was lost)")
        return payment_id


job_types = q.JobTypes()
charge = job_types.entry("charge-order", input=OrderIn, continues_with=["send-receipt"])
receipt = job_types.define("send-receipt", input=OrderIn, output=ReceiptOut)

#: A short retry delay so that the example finishes quickly (the default starts at 10 s).
RETRY_AFTER = dt.timedelta(milliseconds=200)


def register_handlers(worker: q.Worker, gateway: FakeGateway) -> None:
    @worker.handler(
        charge,
        mode="staged",
        lease=dt.timedelta(seconds=60),  # the default; renewed every 30 s while we work
        backoff=q.Backoff(initial=RETRY_AFTER, jitter=0),
    )
    def charge_order(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        # 1. Short transaction: read what the call needs. Its writes commit with
        #    the job's lease and are kept even if the call fails: keep them idempotent.
        with attempt.prepare() as s:
            order = s.get_one(Order, attempt.input["order_id"])
            amount_cents = order.amount_cents
            order.status = "charging"

        # 2. The external call, no transaction open. The job id is the same on
        #    every attempt at this job, so a retry cannot charge twice.
        payment_id = gateway.charge(amount_cents=amount_cents, idempotency_key=str(attempt.job.id))

        # 3. Closing transaction: refuses (JobTakenByAnotherWorkerError, ...) and
        #    writes nothing if the job was lost meanwhile; otherwise the order's
        #    update and the continuation commit together.
        with attempt.transaction() as s:
            order = s.get_one(Order, attempt.input["order_id"])
            order.payment_id = payment_id
            order.status = "paid"
            return attempt.continue_with(receipt, {"order_id": order.id})

    @worker.handler(receipt)  # atomic (the default): database work only
    def send_receipt(attempt: q.Attempt[OrderIn, ReceiptOut]) -> q.Outcome:
        order = attempt.session.get_one(Order, attempt.input["order_id"])
        assert order.payment_id is not None
        return attempt.complete({"order_id": order.id, "payment_id": order.payment_id})


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'payments.db'}")
        try:
            queuert = q.Queuert(engine, job_types)
            q.metadata.create_all(engine)
            Base.metadata.create_all(engine)
            gateway = FakeGateway(lose_first_response=True)
            worker = queuert.worker()
            register_handlers(worker, gateway)

            with Session(engine) as session, session.begin():
                order = Order(amount_cents=4200)
                session.add(order)
                session.flush()
                chain = queuert.start_chain(session, charge, {"order_id": order.id})
                order_id = order.id

            # First pass: the gateway's reply is lost, the attempt fails and the
            # job is rescheduled with backoff; prepare()'s write is kept.
            worker.drain()
            job = queuert.get_job(chain.id)
            error = (job.last_attempt_error or "").strip().splitlines()[-1]
            with Session(engine) as session:
                status = session.get_one(Order, order_id).status
            print(f"attempt {job.attempt} failed: {error}")
            print(f"job {job.status}, order status {status!r} (written by prepare, kept)")

            # Second pass, once the retry is due: same idempotency key, same payment.
            time.sleep(RETRY_AFTER.total_seconds() * 1.5)
            worker.drain()
            done = queuert.get_chain(chain.id)
            with Session(engine) as session:
                order = session.get_one(Order, order_id)
                print(f"order {order.id}: {order.status}, payment id {order.payment_id}")
            print(f"gateway calls: {gateway.calls}, charges: {len(gateway.payments)}")
            print(f"chain {done.id}: {done.status}, output {done.output}")
            ok = done.is_completed and len(gateway.payments) == 1
            return 0 if ok else 1
        finally:
            engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
