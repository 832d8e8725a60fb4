"""When work cannot succeed: a retry limit, ``q.Fail``, then an operator's retry and cancel.

Run it:  python examples/failures.py            (a SQLite file in a temporary directory)
         python examples/failures.py --db URL   (e.g. a fresh PostgreSQL database)

Three ``charge-card`` chains, each charging one order through a pretend card
gateway, and a ``ship-order`` job per order that waits for its charge (a
blocker):

* order 1's card is declined twice, then goes through: retried with backoff,
  it completes on its third attempt (``max_attempts=3``) and its order ships;
* order 2's gateway is down for good: the third failure makes the job
  ``failed`` (terminal, its error and attempt count kept, none of its writes),
  and its shipping job stays blocked behind it. The gateway comes back; an
  operator ``retry_job``s it, the charge completes and the order ships;
* order 3 was deleted: the handler raises ``q.Fail``, which fails the job at
  once. The operator cancels its chain with ``cascade=True``, which cancels the
  shipping job waiting on it too.

``worker.drain()`` runs what is due; the backoff is zero so each drain takes the
next attempt. The script prints every attempt and each chain's end state.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TypedDict

from sqlalchemy import Engine, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import queuert_sa as q


class Base(DeclarativeBase):
    pass


class Payment(Base):  # your own business table: written in the charge's transaction
    __tablename__ = "failures_payment"
    order_id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(50))


class OrderIn(TypedDict):
    order_id: int


class CardDeclined(Exception):
    """The card gateway said no, this time."""


job_types = q.JobTypes()
charge_card = job_types.entry("charge-card", input=OrderIn, output=str, max_attempts=3)
ship_order = job_types.entry("ship-order", input=OrderIn, blockers=[charge_card])

#: The pretend gateway: declines order 1 twice, is down for order 2 until `gateway_up`.
declines = {1: 2}
gateway_up = False
deleted_orders = {3}


def build_worker(queuert: q.Queuert) -> q.Worker:
    worker = queuert.worker(backoff=q.Backoff(initial=0, jitter=0))

    @worker.handler(charge_card)
    def charge(attempt: q.Attempt[OrderIn, str]) -> q.Outcome:
        order_id = attempt.input["order_id"]
        print(f"  charge order {order_id}: attempt {attempt.job.attempt}")
        if order_id in deleted_orders:
            raise q.Fail(f"order {order_id} was deleted")  # no retry can help
        attempt.session.add(Payment(order_id=order_id, reference=f"pay-{order_id}"))
        attempt.session.flush()  # rolled back below if the gateway refuses
        if declines.get(order_id, 0) > 0:
            declines[order_id] -= 1
            raise CardDeclined("declined, try again later")
        if order_id == 2 and not gateway_up:
            raise ConnectionError("card gateway unreachable")
        return attempt.complete(f"pay-{order_id}")

    @worker.handler(ship_order)
    def ship(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        print(f"  ship order {attempt.input['order_id']}")
        return attempt.complete(None)

    return worker


def describe(queuert: q.Queuert, chain_id: object, label: str) -> str:
    chain = queuert.get_chain(str(chain_id))
    job = queuert.get_job(chain.current_job_id)
    detail = ""
    if chain.status == "failed":
        last = (job.last_attempt_error or "").strip().splitlines()[-1]
        detail = f" after {job.attempt} attempt{'s' if job.attempt > 1 else ''}: {last}"
    elif chain.status == "cancelled":
        detail = f": {job.cancel_reason}"
    return f"{label}: {chain.status}{detail}"


def main(engine: Engine) -> None:
    global gateway_up
    Base.metadata.create_all(engine)
    q.metadata.create_all(engine)
    queuert = q.Queuert(engine, job_types)
    worker = build_worker(queuert)

    with Session(engine) as s, s.begin():
        charges = [queuert.start_chain(s, charge_card, {"order_id": n}) for n in (1, 2, 3)]
        ships = [
            queuert.start_chain(s, ship_order, {"order_id": n}, blockers=[c])
            for n, c in zip((1, 2, 3), charges, strict=True)
        ]
    for round_ in range(1, 5):
        print(f"drain {round_}:")
        worker.drain()
    for n in (1, 2, 3):
        print(describe(queuert, charges[n - 1].id, f"charge {n}"))
        print(describe(queuert, ships[n - 1].id, f"ship {n}"))

    print("the gateway is back: retry order 2's charge; cancel order 3")
    gateway_up = True
    with Session(engine) as s, s.begin():
        queuert.retry_job(s, charges[1].id)
        cancelled = queuert.cancel_chain(
            s, charges[2].id, reason="order deleted by the customer", cascade=True
        )
    print(f"cancelled {len(cancelled)} chains")
    print("drain 5:")
    worker.drain()
    for n in (2, 3):
        print(describe(queuert, charges[n - 1].id, f"charge {n}"))
        print(describe(queuert, ships[n - 1].id, f"ship {n}"))
    with Session(engine) as s:
        print(f"payments: {sorted(p.order_id for p in s.query(Payment))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    url = args.db or f"sqlite:///{Path(tempfile.mkdtemp()) / 'failures.db'}"
    main(create_engine(url))
