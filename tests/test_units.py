"""Pure decisions and small mechanisms, without a database."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import inspect
import logging
import pickle
import random
import re
import time
import traceback
import typing
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa._ids import new_id, new_ids
from queuert_sa._json import check_json
from queuert_sa._retry import MAX_ERROR_CHARS, backoff_delay, describe_error, retry_decision

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_default_backoff_sequence_without_jitter() -> None:
    backoff = q.Backoff(jitter=0)
    delays = [backoff_delay(n, backoff).total_seconds() for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff_delay(10_000, backoff).total_seconds() == 300


def test_default_backoff_jitter_stays_within_ten_percent() -> None:
    rng = random.Random(7)
    samples = [backoff_delay(1, q.Backoff(), rng).total_seconds() for _ in range(2000)]
    assert 9.0 <= min(samples) < 9.2
    assert 10.8 < max(samples) <= 11.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="jitter"):
        q.Backoff(jitter=2)
    with pytest.raises(ValueError, match="multiplier"):
        q.Backoff(multiplier=0.5)


def test_retry_decision_backoff_and_reschedule() -> None:
    at, text = retry_decision(KeyError("x"), attempt=2, backoff=q.Backoff(jitter=0), now=NOW)
    assert at == NOW + dt.timedelta(seconds=20)
    assert "KeyError" in text

    at, text = retry_decision(
        q.Reschedule(run_at=NOW - dt.timedelta(days=1), reason="later"),
        attempt=1,
        backoff=q.Backoff(),
        now=NOW,
    )
    assert at == NOW  # clamped: a past time never jumps the queue
    assert text == "Reschedule: later"
    with pytest.raises(ValueError, match="exactly one"):
        q.Reschedule()


def test_error_text_is_bounded() -> None:
    text = describe_error(RuntimeError("x" * 50_000))
    assert len(text) == MAX_ERROR_CHARS
    assert text.endswith("[truncated]")


def test_ids_are_uuid7_and_monotonic() -> None:
    ids = [new_id() for _ in range(5000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert isinstance(ids[0], uuid.UUID)


def test_ids_drawn_for_a_batch_are_uuid7_and_monotonic_with_single_ones() -> None:
    # A batch of 5,000 uses up a millisecond's 4,096 counter values: it rolls over.
    before = time.time_ns() // 1_000_000
    ids = [new_id(), *new_ids(3), new_id(), *new_ids(5000), *new_ids(1), *new_ids(0), new_id()]
    assert len(ids) == 3 + 3 + 5000 + 1
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert before <= ids[0].int >> 80 <= time.time_ns() // 1_000_000 + 2
    assert len({i.int & ((1 << 62) - 1) for i in ids}) == len(ids)  # random bits differ


def test_json_checks_accept_what_they_accepted_and_refuse_what_they_refused() -> None:
    # The quick look leaves subclasses of the JSON types and deep trees to the walk.
    class Size(enum.IntEnum):
        LARGE = 3

    class Name(str):
        pass

    def nested(levels: int) -> object:
        value: object = 0
        for _ in range(levels):
            value = [value]
        return value

    accepted: list[object] = [
        {"size": Size.LARGE, "name": Name("x"), Name("key"): 1},
        collections.OrderedDict(a=1, b=[1.5, None, True]),
        {"text": "naïve ✓ 雪", "tuple": (1, "two")},
        nested(200),
        {"a": nested(199)},
    ]
    for value in accepted:
        check_json(value, type_name="t", what="input")
    refused: list[tuple[object, str]] = [
        (nested(201), "deeper than 200"),
        ({"a": [1, {"b": float("nan")}]}, "input['a'][1]['b'] of job type 't' is nan"),
        ({"ok": 1, Name("k\x00"): 1}, "NUL character"),
        ([collections.OrderedDict(x="\ud800")], "input[0]['x'] of job type 't' contains a lone"),
        ({"a": {1: 2}}, "has key 1 (int)"),
        ({"a": [Size.LARGE, 1.5, b"x"]}, "input['a'][2] of job type 't' is a bytes"),
    ]
    for value, message in refused:
        with pytest.raises(q.JobInputError, match=re.escape(message)):
            check_json(value, type_name="t", what="input")


def test_post_commit_effects_run_in_order_and_failures_do_not_break_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine("sqlite://")
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("effect failed")

    with Session(engine) as s:
        s.begin()
        q.hooks.on_commit(s, lambda: ran.append("a"))
        q.hooks.on_commit(s, boom)
        nested = s.begin_nested()
        q.hooks.on_commit(s, lambda: ran.append("b"))
        nested.commit()
        nested = s.begin_nested()
        q.hooks.on_commit(s, lambda: ran.append("dropped"))
        nested.rollback()
        q.hooks.on_commit(s, lambda: ran.append("c"))
        assert q.hooks.pending_effects(s) == 4
        with caplog.at_level(logging.ERROR, logger="queuert_sa.hooks"):
            s.commit()
        assert q.hooks.pending_effects(s) == 0
    assert ran == ["a", "b", "c"]
    assert "effect failed" in caplog.text
    engine.dispose()


def test_errors_are_named_by_their_public_module() -> None:
    """Tracebacks and reprs show ``queuert_sa.SchemaMissingError``, a name users can import."""
    errors = [
        obj
        for name in q.__all__
        if isinstance(obj := getattr(q, name), type) and issubclass(obj, Exception)
    ]
    assert len(errors) > 30
    for error in errors:
        assert error.__module__ == "queuert_sa", error
        assert getattr(q, error.__name__) is error
    assert "queuert_sa.JobNotFoundError: Job" in "".join(
        traceback.format_exception_only(q.JobNotFoundError(uuid.UUID(int=1)))
    )


def test_public_names_are_exactly_the_intended_ones() -> None:
    exported = {name for name in dir(q) if not name.startswith("_")}
    assert set(q.__all__) <= exported
    stray = (
        exported
        - set(q.__all__)
        - {
            "alembic",
            "bench",
            "cli",
            "dashboard",
            "demo",
            "notify",
            "otel",
            "state",
            "testing",  # the pytest plugin, loaded by pytest's entry point
        }
    )
    assert stray == set(), stray
    for name in q.__all__:
        obj = getattr(q, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert obj.__doc__, f"{name} needs a docstring"
            # Reschedule and Fail are raised by handlers, not by queuert_sa.
            assert issubclass(obj, q.QueuertError) or obj in (q.Reschedule, q.Fail)


def _public_classes() -> list[type]:
    q.AsyncWorker  # noqa: B018 - loads the asyncio names, published on first use
    return [
        obj
        for name in q.__all__
        if isinstance(obj := getattr(q, name), type) and not issubclass(obj, BaseException)
    ]


def _public_functions(cls: type) -> list[tuple[str, object]]:
    """Each public method, property and ``__init__`` a class defines or inherits from us."""
    found: list[tuple[str, object]] = []
    for name, value in inspect.getmembers(cls):
        if (name.startswith("_") and name != "__init__") or not callable(
            value := value.fget if isinstance(value, property) else value
        ):
            continue
        if (getattr(value, "__module__", None) or "").startswith("queuert_sa"):
            found.append((name, value))
    return found


def test_classes_are_named_by_their_public_module() -> None:
    """``queuert_sa.Queuert``, ``<queuert_sa.Worker ...>``: names users can import."""
    published = {cls.__name__: cls for cls in _public_classes() if cls.__module__ == "queuert_sa"}
    for name in ("Queuert", "AsyncQueuert", "Worker", "AsyncWorker", "Attempt", "Chain", "Job"):
        assert name in published, name
    for name in ("JobTypes", "JobType", "Dedup", "Rate", "Schedule", "Backoff", "Many", "Page"):
        assert name in published, name
    for name, cls in published.items():
        assert getattr(q, name) is cls
        assert repr(cls) == f"<class 'queuert_sa.{name}'>"
    # Classes of public modules keep them: queuert_sa.observers.RecordingObserver.
    assert q.RecordingObserver.__module__ == "queuert_sa.observers"
    job_types = q.JobTypes()
    assert repr(job_types).startswith("<queuert_sa.JobTypes object at ")
    assert type(job_types).__module__ == "queuert_sa"
    engine = create_engine("sqlite://")
    queuert = q.Queuert(engine, job_types)
    assert f"{type(queuert).__module__}.{type(queuert).__qualname__}" == "queuert_sa.Queuert"
    assert pickle.loads(pickle.dumps(q.Dedup(key="k"))) == q.Dedup(key="k")
    engine.dispose()


def test_public_classes_still_resolve_their_type_hints() -> None:
    """``__module__`` moved, yet ``typing.get_type_hints`` works on every public class
    and each of its public methods (string annotations, ``from __future__ import
    annotations``), as dataclass and framework introspection needs."""
    checked = 0
    for cls in _public_classes():
        hints = typing.get_type_hints(cls)
        assert all(not isinstance(h, str) for h in hints.values()), cls
        for name, function in _public_functions(cls):
            hints = typing.get_type_hints(function)
            assert all(not isinstance(h, str) for h in hints.values()), (cls, name)
            checked += 1
    assert checked > 100
    assert typing.get_type_hints(q.Chain)["id"] is uuid.UUID
    assert Session in typing.get_args(typing.get_type_hints(q.Queuert.start_chain)["session"])
    worker_init = typing.get_type_hints(q.Worker.__init__)
    assert worker_init["client"] is q.Queuert
    assert {f.name for f in dataclasses.fields(q.Job)} >= {"id", "chain_id", "type_name"}
