"""Quickstart: an order is charged, then a receipt is sent — as a two-step job chain.

Run it:  python examples/quickstart.py   (writes quickstart.db in the current directory)
"""

from typing import TypedDict

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class Order(Base):  # your own business table
    __tablename__ = "quickstart_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    payment_id: Mapped[str | None] = mapped_column(String(64))


class OrderIn(TypedDict):
    order_id: int


class ReceiptOut(TypedDict):
    sent_to: str


# 1. Job types: what each step takes and returns, and what may follow it.
job_types = q.JobTypes()
charge = job_types.entry("charge-order", input=OrderIn, continues_with=["send-receipt"])
receipt = job_types.define("send-receipt", input=OrderIn, output=ReceiptOut)

# 2. A client on your engine, and the tables (use Alembic in production).
engine = create_engine("sqlite:///quickstart.db")
queuert = q.Queuert(engine, job_types)
q.metadata.create_all(engine)
Base.metadata.create_all(engine)

# 3. Handlers. Writes through attempt.session commit together with the step.
worker = queuert.worker()


@worker.handler(charge)
def charge_order(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
    order = attempt.session.get_one(Order, attempt.input["order_id"])
    order.payment_id = f"pay-{attempt.job.id.hex[-8:]}"
    return attempt.continue_with(receipt, {"order_id": order.id})


@worker.handler(receipt)
def send_receipt(attempt: q.Attempt[OrderIn, ReceiptOut]) -> q.Outcome:
    order = attempt.session.get_one(Order, attempt.input["order_id"])
    print(f"sending a receipt for payment {order.payment_id} to {order.email}")
    return attempt.complete({"sent_to": order.email})


# 4. Start the chain in the same transaction as the order: both commit, or neither.
with Session(engine) as session, session.begin():
    order = Order(email="ada@example.com")
    session.add(order)
    session.flush()
    chain = queuert.start_chain(session, charge, {"order_id": order.id})

# 5. Process every due job in this thread (a service would run worker.run() instead).
worker.drain()
done = queuert.get_chain(chain.id)
print(f"chain {done.id}: {done.status}, output {done.output}")
engine.dispose()
