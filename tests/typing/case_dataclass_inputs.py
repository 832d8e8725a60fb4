"""Dataclass inputs and outputs: instances are required, attributes are typed."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, assert_type

from sqlalchemy.orm import Session

import queuert_sa as q


@dataclass
class Address:
    street: str
    city: str


@dataclass
class ShipIn:
    order_id: int
    address: Address
    tags: list[str] = field(default_factory=list[str])


@dataclass(frozen=True)
class Label:
    tracking: str


job_types = q.JobTypes()
ship = job_types.entry("ship", input=ShipIn, output=Label, continues_with=["archive"])
archive = job_types.define("archive", input=Label)
assert_type(ship, q.JobType[ShipIn, Label])
assert_type(archive, q.JobType[Label, None])


def produce(queuert: q.Queuert, session: Session, chain_id: uuid.UUID) -> None:
    shipment = ShipIn(order_id=1, address=Address(street="Main St", city="Springfield"))
    chain = queuert.start_chain(session, ship, shipment, run_in=dt.timedelta(seconds=5))
    assert_type(chain.input, ShipIn)
    assert_type(queuert.get_chain(chain_id, ship).input.address, Address)
    assert_type(queuert.get_job(chain_id, ship).input.tags, list[str])
    queuert.start_chains(session, [ship(shipment), ship(shipment, id=uuid.uuid4())])

    # A dict where a dataclass is declared, or the wrong dataclass.
    queuert.start_chain(session, ship, {"order_id": 1, "address": {}})  # expect-error
    queuert.start_chain(session, ship, Address(street="a", city="b"))  # expect-error
    queuert.start_chains(session, [ship(Label(tracking="t"))])  # expect-error
    _city: int = queuert.get_chain(chain_id, ship).input.address.city  # expect-error


def register(worker: q.Worker) -> None:
    @worker.handler(ship)
    def handle_ship(attempt: q.Attempt[ShipIn, Label]) -> q.Outcome:
        assert_type(attempt.input.address.city, str)
        if not attempt.input.tags:
            return attempt.continue_with(archive, Label(tracking="none"))
        return attempt.complete(Label(tracking=f"T-{attempt.input.order_id}"))

    @worker.handler(archive)
    def handle_archive(attempt: q.Attempt[Label, None]) -> q.Outcome:
        _missing = attempt.input.missing  # expect-error
        attempt.complete(Label(tracking="t"))  # expect-error
        attempt.continue_with(archive, {"tracking": "t"})  # expect-error
        return attempt.complete(None)

    @worker.handler(ship)
    def handle_wrong_output(attempt: q.Attempt[ShipIn, Label]) -> q.Outcome:
        return attempt.complete({"tracking": "t"})  # expect-error

    @worker.handler(ship)  # expect-error
    def handle_as_dict(attempt: q.Attempt[dict[str, Any], Label]) -> q.Outcome:
        return attempt.complete(Label(tracking="t"))
