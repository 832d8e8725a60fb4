"""Bad input is refused with a typed error naming the type, before any SQL is sent."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.models import create_models

from .app import greet, job_types, work
from .conftest import Db


@pytest.fixture
def statements(db: Db) -> Iterator[list[str]]:
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    yield sent
    event.remove(db.engine, "before_cursor_execute", record)


def test_unknown_type_is_refused_before_sql(
    db: Db, client: q.Queuert, statements: list[str]
) -> None:
    other = q.JobTypes()
    stray = other.entry("send-invoice", input=dict)
    with Session(db.engine) as s:
        with pytest.raises(q.UnknownJobTypeError) as info:
            client.start_chain(s, stray, {})
        assert not s.in_transaction()
    assert info.value.type_name == "send-invoice"
    assert "send-invoice" in str(info.value)
    assert "signup" in str(info.value)
    assert statements == []


def test_non_entry_type_cannot_start_a_chain(
    db: Db, client: q.Queuert, statements: list[str]
) -> None:
    with Session(db.engine) as s, pytest.raises(q.NotAnEntryTypeError) as info:
        client.start_chain(s, greet, {"user_id": 1})
    assert info.value.type_name == "greet"
    assert "'greet' is not an entry type" in str(info.value)
    assert statements == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"n": dt.datetime(2026, 1, 1), "sleep": 0}, "input['n'] of job type 'work' is a datetime"),
        ({"n": decimal.Decimal("1.5"), "sleep": 0}, "Decimal"),
        ({"n": 1, "sleep": float("inf")}, "JSON cannot represent"),
        ({"n": 1, "sleep": 0, "tags": {1: "x"}}, "keys must be strings"),
        ({"n": 1, "sleep": 0, "who": uuid.uuid4()}, "UUID"),
        ({"n": 1, "sleep": 0, "raw": b"bytes"}, "bytes"),
        ({"n": 1, "sleep": 0, "deep": [[{"x": object()}]]}, "input['deep'][0][0]['x']"),
        ({"n": 1, "sleep": 0, "note": "a\x00b"}, "NUL character"),
        ({"n": 1, "sleep": 0, "a\x00": 1}, "NUL character"),
        ({"n": 1, "sleep": 0, "note": "\ud800"}, "lone surrogate"),
    ],
    ids=[
        "datetime",
        "decimal",
        "inf",
        "int-key",
        "uuid",
        "bytes",
        "nested",
        "nul",
        "nul-key",
        "surrogate",
    ],
)
def test_non_json_input_is_refused_with_its_path(
    db: Db, client: q.Queuert, statements: list[str], value: Any, fragment: str
) -> None:
    with Session(db.engine) as s, pytest.raises(q.JobInputError) as info:
        client.start_chain(s, work, value)
    assert info.value.type_name == "work"
    assert fragment in str(info.value)
    assert statements == []


def test_one_bad_start_refuses_the_whole_batch(
    db: Db, client: q.Queuert, statements: list[str]
) -> None:
    with Session(db.engine) as s, pytest.raises(q.JobInputError):
        client.start_chains(
            s,
            [
                q.ChainStart(work, {"n": 1, "sleep": 0}),
                q.ChainStart(work, {"n": {1, 2}, "sleep": 0}),  # type: ignore[dict-item]
            ],
        )
    assert statements == []


def test_invalid_id_is_refused(db: Db, client: q.Queuert, statements: list[str]) -> None:
    with Session(db.engine) as s, pytest.raises(q.InvalidJobIdError):
        client.start_chain(s, work, {"n": 1, "sleep": 0}, id="not-a-uuid")
    assert statements == []


def test_continuation_to_undeclared_type_is_refused_before_sql() -> None:
    # The worker-side check, driven through a real attempt in test_worker;
    # here the rule itself: only names in continues_with are allowed.
    with pytest.raises(q.InvalidContinuationError) as info:
        work.require_continuation(greet)
    assert (info.value.type_name, info.value.target) == ("work", "greet")
    assert "continues_with" in str(info.value)


def test_dangling_continues_with_fails_when_bound(db: Db) -> None:
    types = q.JobTypes()
    types.entry("a", input=dict, continues_with=["b-typo"])
    with pytest.raises(q.InvalidJobTypesError, match="'b-typo'"):
        q.Queuert(db.engine, types)


def test_registry_rejects_duplicates_and_string_continues_with() -> None:
    types = q.JobTypes()
    types.entry("a", input=dict)
    with pytest.raises(q.DuplicateJobTypeError):
        types.define("a", input=dict)
    with pytest.raises(q.InvalidJobTypesError, match=r"continues_with=\['b'\]"):
        types.entry("c", input=dict, continues_with="b")
    with pytest.raises(q.InvalidJobTypesError):
        types.entry("", input=dict)


def test_wrong_session_kinds_are_refused(db: Db, client: q.Queuert, statements: list[str]) -> None:
    with pytest.raises(q.SessionRequiredError, match="Session"):
        client.start_chain(db.engine, work, {"n": 1, "sleep": 0})  # type: ignore[arg-type]
    with db.engine.connect() as conn, pytest.raises(q.SessionRequiredError):
        client.start_chain(conn, work, {"n": 1, "sleep": 0})  # type: ignore[arg-type]
    assert statements == []


def test_session_of_another_database_kind_is_refused(
    client: q.Queuert, db: Db, tmp_path: object
) -> None:
    other_kind = (
        create_engine("sqlite://")
        if db.kind == "postgresql"
        else create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    )
    with Session(other_kind) as s, pytest.raises(q.EngineMismatchError):
        client.start_chain(s, work, {"n": 1, "sleep": 0})
    other_kind.dispose()


def test_missing_tables_give_a_schema_error(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/empty.db")
    client = q.Queuert(engine, job_types)
    with Session(engine) as s, pytest.raises(q.SchemaMissingError, match="alembic upgrade heads"):
        client.start_chain(s, work, {"n": 1, "sleep": 0})
    engine.dispose()


def test_a_missing_table_is_one_line_that_names_it_on_both_engines(db: Db) -> None:
    """PostgreSQL's ``LINE 2: ... ^`` context is not carried into the message."""
    models = create_models(table_prefix="never_created_")
    client = q.Queuert(db.engine, job_types, models=models)
    with Session(db.engine) as s, pytest.raises(q.SchemaMissingError) as info:
        client.start_chain(s, work, {"n": 1, "sleep": 0})
    message = str(info.value)
    assert "\n" not in message, message
    assert "never_created_job" in message
    assert "LINE" not in message
    assert "^" not in message
    assert message.endswith("or queuert_sa.metadata.create_all()."), message


def test_dead_database_gives_an_unavailable_error() -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    client = q.Queuert(engine, job_types)
    with Session(engine) as s, pytest.raises(q.DatabaseUnavailableError) as info:
        client.start_chain(s, work, {"n": 1, "sleep": 0})
    assert info.value.__cause__ is not None
    engine.dispose()


class PointIn(TypedDict):
    x: int


@dataclass
class Address:
    city: str


@dataclass
class Customer:
    name: str
    addresses: list[Address]


def test_dataclass_inputs_round_trip(db: Db) -> None:
    types = q.JobTypes()
    onboard = types.entry("onboard", input=Customer, output=Address)
    client = q.Queuert(db.engine, types)
    customer = Customer(name="ada", addresses=[Address("london")])
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, onboard, customer)
    assert client.get_job(chain.id).input == customer
    with Session(db.engine) as s, pytest.raises(q.JobInputError, match="must be a Customer"):
        client.start_chain(s, onboard, {"name": "ada"})  # type: ignore[arg-type]

    worker = client.worker()

    @worker.handler(onboard)
    def handle(attempt: q.Attempt[Customer, Address]) -> q.Outcome:
        assert isinstance(attempt.input.addresses[0], Address)
        return attempt.complete(attempt.input.addresses[0])

    assert worker.drain() == 1
    assert client.get_chain(chain.id, onboard).output == Address("london")


def test_bad_schedules_are_typed_errors_before_sql(
    db: Db, client: q.Queuert, statements: list[str]
) -> None:
    naive = dt.datetime(2030, 1, 1)
    with Session(db.engine) as s:
        with pytest.raises(q.InvalidScheduleError, match=r"'work'.*naive") as info:
            client.start_chain(s, work, {"n": 1, "sleep": 0}, run_at=naive)
        assert info.value.type_name == "work"
        with pytest.raises(q.InvalidScheduleError, match="not both"):
            client.start_chain(
                s,
                work,
                {"n": 1, "sleep": 0},
                run_at=dt.datetime.now(dt.UTC),
                run_in=dt.timedelta(1),
            )
    assert statements == []


def test_scoped_session_stands_for_its_current_session(db: Db, client: q.Queuert) -> None:
    from sqlalchemy.orm import scoped_session, sessionmaker

    scoped = scoped_session(sessionmaker(db.engine))
    chain = client.start_chain(scoped, work, {"n": 1, "sleep": 0})
    assert client.get_chain(chain.id, session=scoped).status == "pending"
    scoped.rollback()
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(chain.id)
    chain = client.start_chain(scoped, work, {"n": 2, "sleep": 0})
    scoped.commit()
    scoped.remove()
    assert client.get_chain(chain.id).input == {"n": 2, "sleep": 0}


def test_immediate_engine_takes_the_sqlite_write_lock_up_front(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/imm.db")
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, st, *a: sent.append(st))
    immediate = q.immediate_engine(engine)
    with Session(immediate) as s, s.begin():
        s.execute(select_one())
    with Session(engine) as s, s.begin():
        s.execute(select_one())
    assert [st for st in sent if st.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN"]
    engine.dispose()
    pg = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert q.immediate_engine(pg) is pg


def select_one() -> Any:
    from sqlalchemy import text

    return text("SELECT 1")


@dataclass
class Shipment:
    primary: Address | None
    by_label: dict[str, Address]


def test_dataclass_optional_and_dict_fields_are_rebuilt(db: Db) -> None:
    types = q.JobTypes()
    ship = types.entry("ship", input=Shipment)
    client = q.Queuert(db.engine, types)
    value = Shipment(primary=Address("paris"), by_label={"home": Address("rome")})
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, ship, value)
    assert client.get_job(chain.id).input == value
    empty = Shipment(primary=None, by_label={})
    with Session(db.engine) as s, s.begin():
        chain = client.start_chain(s, ship, empty)
    assert client.get_job(chain.id).input == empty


def test_immediate_engine_sessions_start_and_complete_chains(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/imm2.db")
    client = q.Queuert(engine, job_types)
    q.metadata.create_all(engine)
    immediate = q.immediate_engine(engine)
    with Session(immediate) as s, s.begin():
        chain = client.start_chain(s, work, {"n": 1, "sleep": 0})
    other = q.Queuert(immediate, job_types)
    with Session(immediate) as s, s.begin():
        other.start_chain(s, work, {"n": 2, "sleep": 0})
    assert client.get_chain(chain.id).status == "pending"
    engine.dispose()


def test_an_output_that_cannot_be_stored_is_an_output_error_not_an_input_error() -> None:
    """``complete(output)`` with a value JSON cannot hold names the output, and its own error."""
    with pytest.raises(q.JobOutputError, match="output of job type 'work'") as info:
        work.encode_output(float("nan"))
    assert (info.value.type_name, info.value.path) == ("work", "output")
    assert not isinstance(info.value, q.JobInputError)
    with pytest.raises(q.JobInputError):
        work.encode_input({"n": float("nan"), "sleep": 0})  # inputs keep theirs
