"""start_chain: the arguments after the job type are checked against calling that type."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NotRequired, TypedDict, assert_type

from sqlalchemy.orm import Session, scoped_session

import queuert_sa as q


class OrderIn(TypedDict):
    order_id: int


class NoteIn(TypedDict):
    text: str
    author: NotRequired[str]


job_types = q.JobTypes()
reserve = job_types.entry("reserve", input=OrderIn)
note = job_types.entry("note", input=NoteIn)
count = job_types.entry("count", input=int, output=int)


def start(queuert: q.Queuert, session: Session, scoped: scoped_session[Session]) -> None:
    chain = queuert.start_chain(session, reserve, {"order_id": 1})
    assert_type(chain, q.Chain[OrderIn, Any])
    assert_type(chain.input, OrderIn)

    # Keyword options, alone and together; the input by keyword; a scoped_session.
    queuert.start_chain(session, reserve, {"order_id": 1}, run_in=dt.timedelta(seconds=5))
    queuert.start_chain(session, reserve, {"order_id": 1}, run_at=dt.datetime.now(dt.UTC))
    queuert.start_chain(session, reserve, {"order_id": 1}, id=uuid.uuid4(), run_in=None)
    queuert.start_chain(
        session, reserve, {"order_id": 1}, id="0190a6b0-0000-7000-8000-000000000000"
    )
    queuert.start_chain(session, reserve, input={"order_id": 1})
    queuert.start_chain(scoped, reserve, {"order_id": 2})

    # Other input shapes.
    queuert.start_chain(session, note, {"text": "hi"})
    queuert.start_chain(session, note, {"text": "hi", "author": "ada"})
    queuert.start_chain(session, count, 3)
    order: OrderIn = {"order_id": 3}
    queuert.start_chain(session, reserve, order)

    # Wrong input: missing key, wrong value type, extra key, wrong shape.
    queuert.start_chain(session, reserve, {})  # expect-error
    queuert.start_chain(session, reserve, {"order_id": "1"})  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1, "note": "x"})  # expect-error
    queuert.start_chain(session, reserve, {"orderid": 1})  # expect-error
    queuert.start_chain(session, reserve, [1])  # expect-error
    queuert.start_chain(session, reserve, None)  # expect-error
    queuert.start_chain(session, note, {"author": "ada"})  # expect-error
    queuert.start_chain(session, count, "3")  # expect-error
    plain: dict[str, int] = {"order_id": 1}
    queuert.start_chain(session, reserve, plain)  # expect-error

    # Wrong arity.
    queuert.start_chain(session, reserve)  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, {"order_id": 2})  # expect-error

    # Wrong options: wrong types, unknown names.
    queuert.start_chain(session, reserve, {"order_id": 1}, run_at=1)  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, run_in=5)  # seconds: accepted
    queuert.start_chain(session, reserve, {"order_id": 1}, run_in="5")  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, id=42)  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, priority=5)
    queuert.start_chain(session, reserve, {"order_id": 1}, priority=-3, run_in=5)
    queuert.start_chain(session, reserve, {"order_id": 1}, priority=None)
    queuert.start_chain(session, reserve, {"order_id": 1}, priority="5")  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, priority=1.5)  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, foo=1)  # expect-error
    queuert.start_chain(session, reserve, {"order_id": 1}, delay=dt.timedelta(1))  # expect-error

    # Wrong job type or session.
    queuert.start_chain(session, "reserve", {"order_id": 1})  # expect-error
    queuert.start_chain(None, reserve, {"order_id": 1})  # expect-error

    # The result keeps the input type.
    _chain: q.Chain[int, Any] = chain  # expect-error
