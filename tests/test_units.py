"""Pure decisions and small mechanisms, without a database."""

from __future__ import annotations

import datetime as dt
import logging
import random
import traceback
import uuid

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa._ids import new_id
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
        }
    )
    assert stray == set(), stray
    for name in q.__all__:
        obj = getattr(q, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert obj.__doc__, f"{name} needs a docstring"
            # Reschedule and Fail are raised by handlers, not by queuert_sa.
            assert issubclass(obj, q.QueuertError) or obj in (q.Reschedule, q.Fail)
