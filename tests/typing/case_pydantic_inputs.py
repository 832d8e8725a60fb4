"""pydantic model inputs and outputs: attributes are typed, the wrong model is refused."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import assert_type

import pydantic
from sqlalchemy.orm import Session

import queuert_sa as q


class Address(pydantic.BaseModel):
    street: str
    city: str


class OrderIn(pydantic.BaseModel):
    order_id: uuid.UUID
    placed_at: dt.datetime
    ship_to: Address
    lines: list[Address] = []


class Label(pydantic.BaseModel):
    tracking: str


job_types = q.JobTypes()
ship = job_types.entry("ship", input=OrderIn, output=Label, continues_with=["archive"])
archive = job_types.define("archive", input=Label)
assert_type(ship, q.JobType[OrderIn, Label])
assert_type(archive, q.JobType[Label, None])


def produce(queuert: q.Queuert, session: Session, chain_id: uuid.UUID) -> None:
    placed = OrderIn(
        order_id=uuid.uuid4(),
        placed_at=dt.datetime.now(dt.UTC),
        ship_to=Address(street="Main St", city="Springfield"),
    )
    chain = queuert.start_chain(session, ship, placed)
    assert_type(chain.input, OrderIn)
    assert_type(queuert.get_chain(chain_id, ship).input.ship_to, Address)
    assert_type(queuert.get_job(chain_id, ship).input.placed_at, dt.datetime)
    queuert.start_chains(session, [ship(placed), ship(placed, run_in=dt.timedelta(seconds=5))])

    queuert.start_chain(session, ship, Label(tracking="t"))  # expect-error
    queuert.start_chains(session, [ship(Address(street="a", city="b"))])  # expect-error
    _city: int = queuert.get_chain(chain_id, ship).input.ship_to.city  # expect-error


def register(worker: q.Worker) -> None:
    @worker.handler(ship)
    def handle_ship(attempt: q.Attempt[OrderIn, Label]) -> q.Outcome:
        assert_type(attempt.input.order_id, uuid.UUID)
        assert_type(attempt.input.lines, list[Address])
        assert_type(attempt.input.ship_to.city, str)
        _missing = attempt.input.missing  # expect-error
        if not attempt.input.lines:
            return attempt.continue_with(archive, Label(tracking="none"))
        return attempt.complete(Label(tracking=f"T-{attempt.input.order_id}"))

    @worker.handler(archive)
    def handle_archive(attempt: q.Attempt[Label, None]) -> q.Outcome:
        _number: int = attempt.input.tracking  # expect-error
        attempt.continue_with(archive, Address(street="a", city="b"))  # expect-error
        return attempt.complete(None)

    @worker.handler(ship)
    def handle_wrong_output(attempt: q.Attempt[OrderIn, Label]) -> q.Outcome:
        return attempt.complete(Address(street="a", city="b"))  # expect-error

    @worker.handler(ship)  # expect-error
    def handle_as_label(attempt: q.Attempt[Label, Label]) -> q.Outcome:
        return attempt.complete(attempt.input)
