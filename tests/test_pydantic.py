"""pydantic models as ``input=``/``output=``: validated before any SQL, decoded in the handler.

What a user relies on: a model (nested models, ``datetime`` and ``UUID`` fields
included) goes in at ``start_chain`` and comes back as the same model in the
handler and from every read; a value of the wrong shape is a ``JobInputError``
(``JobOutputError`` for ``complete``) naming the field, raised before anything
is sent, so the session stays usable; a handler's bad output or continuation
fails its attempt like any other bad output. Every scenario runs on SQLite and
PostgreSQL, the worker ones on ``Worker`` and ``AsyncWorker``. pydantic stays
optional: the core imports without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pydantic
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.dashboard import Dashboard
from queuert_sa.models import Job

from .conftest import Db
from .workers import Kit


class Address(pydantic.BaseModel):
    street: str
    city: str


class OrderIn(pydantic.BaseModel):
    order_id: uuid.UUID
    placed_at: dt.datetime
    ship_to: Address
    lines: list[Address] = []
    note: str | None = None


class Label(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, frozen=True)

    tracking: str
    printed_at: dt.datetime


types = q.JobTypes()
ship = types.entry("ship-order", input=OrderIn, output=Label, continues_with=["print-label"])
print_label = types.entry("print-label", input=Label, output=Label)

PLACED = dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)


def order(**changes: Any) -> OrderIn:
    fields: dict[str, Any] = {
        "order_id": uuid.UUID(int=7),
        "placed_at": PLACED,
        "ship_to": Address(street="1 Main St", city="Springfield"),
        "lines": [Address(street="a", city="b")],
    }
    return OrderIn(**(fields | changes))


@pytest.fixture
def client(db: Db) -> q.Queuert:
    return q.Queuert(db.engine, types)


@pytest.fixture
def statements(db: Db) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield sent
    event.remove(db.engine, "before_cursor_execute", record)


def jobs_in_db(db: Db) -> int:
    with Session(db.engine) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def test_a_model_goes_through_a_chain_and_comes_back_as_the_model(kit: Kit) -> None:
    kit = kit.using(job_types=types)
    with Session(kit.db.engine) as s, s.begin():
        chain = kit.client.start_chain(s, ship, order())
    seen: list[object] = []
    worker = kit.worker()

    @worker.handler(ship)
    def handle_ship(attempt: Any) -> q.Outcome:
        seen.append(attempt.input)
        label = Label(tracking=f"T-{attempt.input.order_id.int}", printed_at=PLACED)
        return attempt.continue_with(print_label, label)

    @worker.handler(print_label)
    def handle_print(attempt: Any) -> q.Outcome:
        seen.append(attempt.input)
        return attempt.complete(attempt.input.model_copy(update={"tracking": "T-7-printed"}))

    assert worker.drain() == 2
    assert seen == [order(), Label(tracking="T-7", printed_at=PLACED)]
    received = seen[0]
    assert isinstance(received, OrderIn)
    assert isinstance(received.ship_to, Address)
    assert isinstance(received.lines[0], Address)
    assert received.order_id == uuid.UUID(int=7)
    assert received.placed_at == PLACED
    done = kit.client.get_chain(chain.id, ship)
    assert done.status == "completed"
    assert done.input == order()
    assert done.output == Label(tracking="T-7-printed", printed_at=PLACED)
    assert isinstance(done.output, Label)
    jobs = kit.client.list_chain_jobs(chain.id).items
    assert [type(job.input) for job in jobs] == [OrderIn, Label]
    # Stored as the model's JSON: what another language, or the dashboard, reads.
    with Session(kit.db.engine) as s:
        stored = s.scalars(select(Job.input).where(Job.chain_id == chain.id)).all()
    assert order().model_dump(mode="json") in stored


def test_a_mapping_of_the_fields_is_validated_and_stored_as_the_model(
    db: Db, client: q.Queuert
) -> None:
    """Callers without the static types (the CLI, untyped code) may pass the fields."""
    fields = order().model_dump(mode="json")
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, ship, fields)  # type: ignore[arg-type]
    assert client.get_chain(chain.id, ship).input == order()
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, print_label, {"tracking": "t", "printed_at": PLACED})  # type: ignore[arg-type]
    assert client.get_job(chain.id).input == Label(tracking="t", printed_at=PLACED)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ({"order_id": "x"}, "input['order_id']", "valid UUID"),
        (
            {**order().model_dump(mode="json"), "ship_to": {"street": "s", "city": 5}},
            "input['ship_to']['city']",
            "valid string",
        ),
        (
            {**order().model_dump(mode="json"), "lines": [{"street": "s"}]},
            "input['lines'][0]['city']",
            "Field required",
        ),
        (
            order().model_copy(update={"placed_at": "soon"}),  # copies skip validation
            "input['placed_at']",
            "datetime",
        ),
        (order(note="a\x00b"), "input['note']", "NUL character"),
        (Address(street="s", city="c"), "input", "must be a OrderIn instance"),
    ],
    ids=[
        "uuid",
        "nested-field",
        "list-item",
        "constructed-without-validation",
        "nul",
        "wrong-model",
    ],
)
def test_a_wrong_input_is_refused_naming_the_field_before_any_sql(
    db: Db, client: q.Queuert, statements: list[str], value: Any, path: str, fragment: str
) -> None:
    with Session(db.engine) as s:
        with pytest.raises(q.JobInputError) as info:
            client.start_chain(s, ship, value)
        with pytest.raises(q.JobInputError):
            client.start_chains(s, [ship(order()), ship(value)])
        assert statements == []
        assert not s.in_transaction()
        # The session is still usable: the next, valid start commits.
        client.start_chain(s, ship, order())
        s.commit()
    assert (info.value.type_name, info.value.path) == ("ship-order", path)
    assert fragment in str(info.value)
    assert "of job type 'ship-order' " in str(info.value)
    assert jobs_in_db(db) == 1


def test_a_wrong_output_or_continuation_fails_the_attempt_and_is_retried(kit: Kit) -> None:
    kit = kit.using(job_types=types)
    with Session(kit.db.engine) as s, s.begin():
        first = kit.client.start_chain(s, ship, order())
        second = kit.client.start_chain(s, print_label, Label(tracking="t", printed_at=PLACED))
    worker = kit.worker()

    @worker.handler(ship)
    def continue_badly(attempt: Any) -> q.Outcome:
        return attempt.continue_with(print_label, {"tracking": 5, "printed_at": PLACED})

    @worker.handler(print_label)
    def complete_badly(attempt: Any) -> q.Outcome:
        return attempt.complete(Label.model_construct(tracking=None, printed_at=PLACED))

    assert worker.drain() == 2
    assert (worker.completed, worker.failed) == (0, 2)
    continued = kit.client.get_job(first.id)
    assert continued.status == "pending"
    assert continued.last_attempt_error is not None
    assert "JobInputError" in continued.last_attempt_error
    assert "input['tracking']: Input should be a valid string" in continued.last_attempt_error
    completed = kit.client.get_job(second.id)
    assert completed.status == "pending"
    assert completed.last_attempt_error is not None
    assert "JobOutputError" in completed.last_attempt_error
    assert "output of job type 'print-label' does not fit Label" in completed.last_attempt_error
    assert "output['tracking']" in completed.last_attempt_error
    assert len(kit.client.list_chain_jobs(first.id).items) == 1  # no continuation written


def test_a_stored_value_that_no_longer_fits_its_model_is_a_typed_error(kit: Kit) -> None:
    """A model changed under stored rows: the attempt fails with the field named (and
    is retried, for a deployment that fixes the model), and a read says what to do."""
    before = q.JobTypes()
    old_ship = before.entry("ship-order", input=dict[str, Any])
    with Session(kit.db.engine) as s, s.begin():
        chain = q.Queuert(kit.db.engine, before).start_chain(s, old_ship, {"order_id": 7})
    kit = kit.using(job_types=types)
    worker = kit.worker()
    worker.handler(ship)(lambda attempt: attempt.complete(None))

    assert worker.drain() == 1
    with pytest.raises(q.JobInputError) as info:
        kit.client.get_job(chain.id)
    assert info.value.path == "input['order_id']"
    assert "The stored input of job type 'ship-order' does not fit OrderIn" in str(info.value)
    assert "Give new fields defaults" in str(info.value)
    stored = q.Queuert(kit.db.engine, before).get_job(chain.id)
    assert stored.status == "pending"
    assert stored.last_attempt_error is not None
    assert "JobInputError" in stored.last_attempt_error
    assert "input['order_id']" in stored.last_attempt_error


def test_the_output_error_names_the_field_and_is_not_an_input_error() -> None:
    with pytest.raises(q.JobOutputError) as info:
        ship.encode_output({"tracking": "t", "printed_at": "not a date"})  # type: ignore[arg-type]
    assert (info.value.type_name, info.value.path) == ("ship-order", "output['printed_at']")
    assert not isinstance(info.value, q.JobInputError)


def test_a_value_the_model_cannot_write_as_json_is_refused() -> None:
    class Opaque:
        pass

    class Blob(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        data: bytes = b""
        thing: Opaque | None = None

    blob = q.JobTypes().entry("blob", input=Blob)
    for value in (Blob(thing=Opaque()), Blob(data=b"\xff")):
        with pytest.raises(q.JobInputError, match=r"cannot be written as JSON by \S*Blob"):
            blob.encode_input(value)
    assert blob.decode_input(blob.encode_input(Blob(data=b"text"))) == Blob(data=b"text")


def test_typed_dict_inputs_are_not_validated_at_run_time() -> None:
    """A TypedDict is a static contract only: any JSON object of any keys is stored."""

    class Plain(TypedDict):
        n: int

    plain = q.JobTypes().entry("plain", input=Plain)
    wrong: Any = {"wrong": "keys"}
    assert plain.encode_input(wrong) == {"wrong": "keys"}


def test_the_core_imports_and_runs_without_pydantic(tmp_path: Any) -> None:
    """pydantic is an optional extra: nothing imports it unless the app's own models do."""
    script = tmp_path / "no_pydantic.py"
    script.write_text(
        "import sys\n"
        "sys.modules['pydantic'] = None  # import pydantic now raises ImportError\n"
        "from dataclasses import dataclass\n"
        "import queuert_sa as q\n"
        "from queuert_sa import cli, observers, models  # noqa: F401\n"
        "@dataclass\n"
        "class In:\n"
        "    n: int\n"
        "types = q.JobTypes()\n"
        "job = types.entry('job', input=In)\n"
        "assert job.decode_input(job.encode_input(In(1))) == In(1)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, queuert_sa; print('pydantic' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert loaded.stdout.strip() == "False"


def test_the_validated_inputs_example_runs_as_its_docstring_says() -> None:
    """``python examples/validated_inputs.py``, from the repository root, warnings as errors."""
    root = Path(__file__).resolve().parent.parent
    before = set(root.glob("*.db")) | set((root / "examples").glob("*.db"))
    result = subprocess.run(
        [sys.executable, "-W", "error", "examples/validated_inputs.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("accepted: chain ")
    assert lines[1] == (
        "refused: input of job type 'import-order' does not fit OrderIn: "
        "input['ship_to']['city']: Field required."
    )
    assert lines[2] == "  the field: input['ship_to']['city']; nothing was written"
    assert lines[3] == (
        "import-order: OrderIn 0193a5b6-0000-7000-8000-000000000001, "
        "placed 2026-12-01 09:30:00+00:00"
    )
    assert lines[4] == "ship-order: 2 parcels to Springfield"
    assert lines[5] == "processed 2 jobs; chain completed"
    assert lines[6].startswith("output: Label(tracking='SPR-0001', printed_at=datetime.datetime(")
    assert (
        lines[7] == 'stored as JSON: {"printed_at": "2026-12-01T10:00:00Z", "tracking": "SPR-0001"}'
    )
    assert set(root.glob("*.db")) | set((root / "examples").glob("*.db")) == before


def test_the_dashboard_shows_a_model_as_its_stored_fields(db: Db, client: q.Queuert) -> None:
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, ship, order())
    expected = order().model_dump(mode="json")

    async def scenario() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=Dashboard(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
            response = await http.get(f"/api/chains/{chain.id}")
            page = await http.get(f"/chains/{chain.id}")
        assert page.status_code == 200
        assert "Springfield" in page.text
        assert "OrderIn(" not in page.text  # the fields, not the repr
        body: dict[str, Any] = response.json()
        return body

    body = asyncio.run(scenario())
    assert body["chain"]["input"] == expected
    assert [job["input"] for job in body["jobs"]] == [expected]
