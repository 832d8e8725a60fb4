"""Validated inputs and outputs: pydantic models as a job type's input= and output=.

    pip install 'queuert_sa[pydantic]'
    python examples/validated_inputs.py

Two webhook deliveries arrive as JSON. The first fits the ``OrderIn`` model and
starts an ``import-order`` chain; the second has a bad field and is refused with
a ``JobInputError`` naming it, before anything is written. The worker's handlers
get ``OrderIn`` and ``ShipIn`` instances (``UUID`` and ``datetime`` fields
included) and return a ``Label``, which the chain's output gives back as a
``Label``. Runs on a SQLite file in a temporary directory; no server needed.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pydantic
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import Job


class Address(pydantic.BaseModel):
    street: str
    city: str


class OrderIn(pydantic.BaseModel):
    order_id: uuid.UUID
    placed_at: dt.datetime
    ship_to: Address
    items: list[str]


class ShipIn(pydantic.BaseModel):
    order_id: uuid.UUID
    ship_to: Address
    parcels: int


class Label(pydantic.BaseModel):
    tracking: str
    printed_at: dt.datetime


job_types = q.JobTypes()
import_order = job_types.entry("import-order", input=OrderIn, continues_with=["ship-order"])
ship_order = job_types.define("ship-order", input=ShipIn, output=Label)

ORDER_ID = uuid.UUID("0193a5b6-0000-7000-8000-000000000001")
GOOD = json.dumps(
    {
        "order_id": str(ORDER_ID),
        "placed_at": "2026-12-01T09:30:00Z",
        "ship_to": {"street": "1 Main St", "city": "Springfield"},
        "items": ["kettle", "mug"],
    }
)
BAD = json.dumps(
    {
        "order_id": str(uuid.UUID(int=2)),
        "placed_at": "2026-12-01T09:31:00Z",
        "ship_to": {"street": "2 Side St"},  # no city
        "items": ["teapot"],
    }
)


def receive_webhook(queuert: q.Queuert, engine: Any, body: str) -> None:
    """A webhook endpoint: the payload is untyped JSON, so queuert checks it against the model."""
    payload: Any = json.loads(body)
    with Session(engine) as session:
        try:
            with session.begin():
                chain = queuert.start_chain(session, import_order, payload)
        except q.JobInputError as error:
            print(f"refused: {error}")
            print(f"  the field: {error.path}; nothing was written")
            return
    print(f"accepted: chain {chain.id} ({chain.status})")


def main() -> None:
    engine = create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'validated_inputs.db'}")
    queuert = q.Queuert(engine, job_types)
    q.metadata.create_all(engine)

    receive_webhook(queuert, engine, GOOD)
    receive_webhook(queuert, engine, BAD)

    worker = queuert.worker()

    @worker.handler(import_order)
    def handle_import(attempt: q.Attempt[OrderIn, None]) -> q.Outcome:
        order = attempt.input  # an OrderIn: typed fields, a UUID and an aware datetime
        print(f"import-order: {type(order).__name__} {order.order_id}, placed {order.placed_at}")
        return attempt.continue_with(
            ship_order, ShipIn(order_id=order.order_id, ship_to=order.ship_to, parcels=2)
        )

    @worker.handler(ship_order)
    def handle_ship(attempt: q.Attempt[ShipIn, Label]) -> q.Outcome:
        city = attempt.input.ship_to.city
        printed = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
        label = Label(tracking=f"SPR-{attempt.input.order_id.hex[-4:]}", printed_at=printed)
        print(f"ship-order: {attempt.input.parcels} parcels to {city}")
        return attempt.complete(label)

    processed = worker.drain()
    with Session(engine) as session:
        chain_id = session.scalars(select(Job.chain_id)).first()
        stored = session.scalars(select(Job.output).where(Job.type_name == "ship-order")).one()
    assert chain_id is not None
    done = queuert.get_chain(chain_id, import_order)
    print(f"processed {processed} jobs; chain {done.status}")
    print(f"output: {done.output!r}")
    print(f"stored as JSON: {json.dumps(stored, sort_keys=True)}")
    engine.dispose()


if __name__ == "__main__":
    main()
