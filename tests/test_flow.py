"""The attempt engine without a database: the flows of ``_worker/_flow``, driven by a script.

A flow yields effect records (``_worker/_effects``) and a driver performs them.
:class:`ScriptedDriver` is a test double of that seam, not of the database: it
steps a flow as the real drivers do (an ``Exception`` from an effect is thrown
back into the flow; a handler's exception comes back as ``HandlerEnded``; a
``BaseException`` closes the flow), records a label for every effect, and
answers each from a script keyed by those labels. So each test reads as "the
database answered this, the engine did that": which effects, in which order,
and what each write was bound to (a ``functools.partial``: its ``.func`` and
``.keywords``).

The core is a real :class:`WorkerCore` over a real context, with an injected
clock and a seeded ``core.rng``; nothing here sleeps or opens a connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import random
import typing
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite

import queuert_sa as q
from queuert_sa import _transitions as transitions
from queuert_sa._attempt import AttemptState, Outcome
from queuert_sa._context import Context
from queuert_sa._errors import (
    DatabaseUnavailableError,
    HandlerError,
    JobAlreadyCompletedError,
    JobNotFoundError,
    JobTakenByAnotherWorkerError,
)
from queuert_sa._retry import backoff_delay
from queuert_sa._rules import Completed
from queuert_sa._snapshots import job_from_row
from queuert_sa._worker import _effects as fx
from queuert_sa._worker import _flow as flow
from queuert_sa._worker import _staged as staged
from queuert_sa._worker import _units as units
from queuert_sa._worker._asyncio_performer import AsyncPerformer
from queuert_sa._worker._config import Mode, Registration, WorkerCore
from queuert_sa._worker._thread_performer import Performer
from queuert_sa.models import DEFAULT_MODELS, JobStatus
from queuert_sa.state import leases, settlement
from queuert_sa.state import operations as ops
from queuert_sa.state.capabilities import Capabilities, capabilities_for

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SEED = 20261201
WORKER = "host:1:flowtest"
JOB_ID = uuid.UUID("01900000-0000-7000-8000-000000000001")
OTHER_ID = uuid.UUID("01900000-0000-7000-8000-000000000002")
POSTGRES = capabilities_for(postgresql.dialect())
SQLITE = capabilities_for(sqlite.dialect())
LEASE = dt.timedelta(seconds=60)
TIMEOUT = dt.timedelta(minutes=5)
BACKOFF = q.Backoff()


@dataclass
class WorkIn:
    n: int


JOB_TYPES = q.JobTypes()
WORK = JOB_TYPES.entry("work", input=WorkIn, output=int)
SLOW = JOB_TYPES.entry("slow", input=WorkIn, output=int)
GATED = JOB_TYPES.entry("gated", input=WorkIn, output=int, blockers=[WORK])


# --- the clock, the rows, the core ----------------------------------------------------


class Clock:
    """An injected clock: stands still unless a test moves it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


def job_row(**changes: Any) -> dict[str, Any]:
    """The row ``acquire_job`` returns: job ``JOB_ID`` of ``work``, attempt 1, acquired now."""
    values: dict[str, Any] = {
        "id": JOB_ID,
        "type_name": "work",
        "chain_id": JOB_ID,
        "chain_type_name": "work",
        "chain_index": 0,
        "input": {"n": 3},
        "output": None,
        "status": JobStatus.RUNNING,
        "created_at": NOW - dt.timedelta(minutes=1),
        "scheduled_at": NOW,
        "completed_at": None,
        "completed_by": None,
        "attempt": 1,
        "last_attempt_at": NOW,
        "last_attempt_error": None,
        "leased_by": WORKER,
        "leased_until": NOW + TIMEOUT,
        "deduplication_key": None,
        "priority": 0,
    }
    values.update(changes)
    return values


def make_core(caps: Capabilities = POSTGRES) -> WorkerCore:
    ctx = Context(
        job_types=JOB_TYPES,
        models=DEFAULT_MODELS,
        capabilities=caps,
        clock=Clock(),
        notify=q.InMemoryNotify(),
    )
    core = WorkerCore(ctx, worker_id=WORKER)
    core.rng = random.Random(SEED)
    return core


def register(
    core: WorkerCore,
    fn: Callable[[FakeAttempt], Any],
    *,
    mode: Mode = "atomic",
    job_type: q.JobType[Any, Any] = WORK,
    lease: dt.timedelta = LEASE,
    timeout: dt.timedelta = TIMEOUT,
) -> Registration:
    registration = Registration(
        job_type=job_type, fn=fn, mode=mode, backoff=BACKOFF, timeout=timeout, lease=lease
    )
    core.handlers[job_type.name] = registration
    return registration


def clock_of(core: WorkerCore) -> Clock:
    clock = core.ctx.clock
    assert isinstance(clock, Clock)
    return clock


def retry_at() -> dt.datetime:
    """When ``core.retry`` schedules the retry of a first attempt (its first draw of core.rng)."""
    return NOW + backoff_delay(1, BACKOFF, random.Random(SEED))


def down(message: str = "connection lost") -> DatabaseUnavailableError:
    return DatabaseUnavailableError(message, operation="test")


def slot_passes(count: int) -> list[bool]:
    """``Query(stopping)`` answers for ``count`` slot passes: each pass is asked twice (by the
    loop, and again under the writer hold), then the loop is told to stop."""
    return [False, False] * count + [True]


def complete(output: int) -> Callable[[FakeAttempt], Outcome]:
    def handler(attempt: FakeAttempt) -> Outcome:
        return attempt.complete(output)

    return handler


def raises(error: BaseException) -> Callable[[FakeAttempt], Outcome]:
    def handler(attempt: FakeAttempt) -> Outcome:
        raise error

    return handler


# --- the scripted driver ----------------------------------------------------------------


class Handle:
    """An opaque session or savepoint handle, as ``Open``/``Savepoint`` return."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def unit_name(unit: fx.Unit) -> str:
    assert isinstance(unit, partial)
    return str(unit.func.__name__)


def label(effect: fx.Effect) -> str:
    """A readable name for an effect: what the traces list and the scripts are keyed by."""
    match effect:
        case fx.Run(unit=unit):
            return f"Run({unit_name(unit)})"
        case fx.Look(unit=unit):
            return f"Look({unit_name(unit)})"
        case fx.InTransaction(unit=unit, kind=kind):
            return f"InTransaction({kind}, {unit_name(unit)})"
        case fx.End(how=how):
            return f"End({how})"
        case fx.EndSavepoint(commit=commit):
            return "EndSavepoint(commit)" if commit else "EndSavepoint(rollback)"
        case fx.Writer(take=take):
            return "Writer(take)" if take else "Writer(drop)"
        case fx.Query(what=what):
            return f"Query({what})"
        case fx.Wait(until=until):
            return f"Wait({until})"
        case _:
            return type(effect).__name__


#: The driver's own COMMIT of an owned transaction (not an effect: the real
#: drivers commit it when the ``owned_transaction`` block ends).
OWNED_COMMIT = "driver: COMMIT owned"


class ScriptedDriver:
    """Performs effects from a script, stepping flows exactly as the real drivers do.

    ``script`` maps a label (see :func:`label`) to an answer: a value, an
    exception to raise (an ``Exception`` is thrown into the flow, any other
    ``BaseException`` closes it), a callable of the effect, or a list of such
    answers used in turn. Unscripted effects get what a healthy database gives:
    a new handle from ``Open``/``Savepoint``, an open savepoint, the job still
    ours from ``lock_job``, nothing stopping, and ``None`` otherwise.
    ``CallHandler`` calls the registered function with a :class:`FakeAttempt`.
    """

    def __init__(self, core: WorkerCore, script: dict[str, Any] | None = None) -> None:
        self.core = core
        self.script = dict(script or {})
        self.performed: list[tuple[str, Any]] = []
        self.sessions = 0
        self.writer_held = False
        self.leases: list[AttemptState] = []

    @property
    def trace(self) -> list[str]:
        """The label of every effect performed (nested flows' too), in order."""
        return [name for name, _ in self.performed]

    @property
    def effects(self) -> list[Any]:
        return [effect for _, effect in self.performed if effect is not None]

    # --- stepping -------------------------------------------------------------------------

    def drive(self, steps: flow.Flow[Any]) -> Any:
        """Run a flow to its end, as ``Performer.drive`` does."""
        try:
            effect = steps.send(None)
            while True:
                try:
                    result = self.perform(effect)
                except Exception as exc:
                    effect = steps.throw(exc)
                else:
                    effect = steps.send(result)
        except StopIteration as stop:
            return stop.value
        except BaseException:
            steps.close()
            raise

    def step(self, steps: flow.Flow[Any], count: int | None = None) -> int:
        """Perform the flow's first ``count`` effects, leaving it suspended at the next one
        (``None``: all of them); how many it performed."""
        performed = 0
        effect = steps.send(None)
        while count is None or performed < count:
            result = self.perform(effect)
            performed += 1
            try:
                effect = steps.send(result)
            except StopIteration:
                break
        return performed

    def of(self, name: str) -> list[Any]:
        """The effects performed under ``name``, in order."""
        return [effect for seen, effect in self.performed if seen == name]

    def one(self, name: str) -> Any:
        (effect,) = self.of(name)
        return effect

    # --- answering ------------------------------------------------------------------------

    def answer(self, name: str, effect: object, default: Callable[[], Any]) -> Any:
        if name not in self.script:
            return default()
        answer = self.script[name]
        if isinstance(answer, list):
            assert answer, f"the script for {name!r} ran out"
            answer = answer.pop(0)  # pyright: ignore[reportUnknownMemberType]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(effect)
        return answer

    def perform(self, effect: fx.Effect) -> Any:
        name = label(effect)
        self.performed.append((name, effect))
        match effect:
            case fx.Open():
                return self.answer(name, effect, self.new_session)
            case fx.Savepoint():
                return self.answer(name, effect, lambda: Handle("savepoint"))
            case fx.SavepointOpen():
                return self.answer(name, effect, lambda: True)
            case fx.Writer(take=take):
                self.writer_held = take
                return self.answer(name, effect, lambda: None)
            case fx.Run(unit=unit) if unit_name(unit) == "lock_job":
                return self.answer(name, effect, self.row_still_ours)
            case fx.CallHandler():
                return self.answer(name, effect, lambda: self.call_handler(effect))
            case fx.WriteOwned(state=state, session=session):

                def write_owned() -> None:
                    with self.staged_transaction(state, session):
                        pass

                return self.answer(name, effect, write_owned)
            case fx.InTransaction(kind="owned", state=state):
                # The real drivers check ownership in the new transaction first.
                assert state is not None
                self.drive(staged.check_ownership(self.core, state, self.new_session()))
                return self.answer(name, effect, lambda: None)
            case fx.HoldLease(state=state):
                self.leases.append(state)
                return self.answer(name, effect, lambda: None)
            case fx.ReleaseLease(state=state):
                if state in self.leases:
                    self.leases.remove(state)
                return self.answer(name, effect, lambda: None)
            case fx.Query(what="stopping"):
                return self.answer(name, effect, lambda: False)
            case fx.Query(what="held_ids"):
                return self.answer(name, effect, frozenset)
            case _:
                return self.answer(name, effect, lambda: None)

    def new_session(self) -> Handle:
        self.sessions += 1
        return Handle(f"session {self.sessions}")

    def row_still_ours(self) -> dict[str, Any]:
        return job_row()

    # --- the handler and the staged port --------------------------------------------------

    def call_handler(self, effect: fx.CallHandler) -> fx.HandlerEnded:
        attempt = FakeAttempt(self, effect.state, effect.session)
        try:
            return fx.HandlerEnded(value=effect.registration.fn(attempt))
        except BaseException as exc:
            return fx.HandlerEnded(error=exc)

    def prepare(self, state: AttemptState, session: Any) -> None:
        """``attempt.prepare()`` as the real ``Attempt`` does it, without its SAVEPOINT."""
        state.open_prepare()
        self.drive(staged.commit_prepare(self.core, state, session))

    @contextmanager
    def staged_transaction(self, state: AttemptState, session: Any) -> Iterator[Handle]:
        """``attempt.transaction()`` over the drivers' ``owned_transaction``, step for step.

        The real drivers COMMIT the owned transaction when its block ends (here
        :data:`OWNED_COMMIT`, scriptable to fail); the outcome is ``written`` only
        once that COMMIT went through, as in ``Attempt.transaction``.
        """
        state.open_transaction()
        if not state.prepared:
            self.drive(staged.commit_prepare(self.core, state, session))
        owned = self.new_session()
        self.drive(staged.check_ownership(self.core, state, owned))
        yield owned
        wrote = state.decision is not None
        if wrote:
            self.drive(staged.write_outcome(self.core, state, owned))
        self.performed.append((OWNED_COMMIT, None))
        self.answer(OWNED_COMMIT, None, lambda: None)
        state.written = wrote


class FakeAttempt:
    """What a handler gets here: the attempt's state, and the staged steps the driver performs."""

    def __init__(self, driver: ScriptedDriver, state: AttemptState, session: Any) -> None:
        self.driver = driver
        self.state = state
        self.session = session

    @property
    def job(self) -> q.Job[Any]:
        return self.state.job

    def complete(self, output: int) -> Outcome:
        return self.state.complete(output)

    def prepare(self) -> None:
        self.driver.prepare(self.state, self.session)

    def transaction(self) -> Any:
        return self.driver.staged_transaction(self.state, self.session)


def run_attempt(
    core: WorkerCore, script: dict[str, Any] | None = None, *, exclude: tuple[uuid.UUID, ...] = ()
) -> tuple[ScriptedDriver, flow.Step]:
    """Drive one ``attempt``; the acquire returns ``job_row()`` unless scripted otherwise."""
    driver = ScriptedDriver(core, {"Run(acquire_job)": job_row(), **(script or {})})
    return driver, driver.drive(flow.attempt(core, exclude))


def staged_state(core: WorkerCore, registration: Registration, **row: Any) -> AttemptState:
    """The state of a staged attempt at ``job_row(**row)``, as ``attempt`` builds it."""
    return AttemptState(
        job_types=JOB_TYPES,
        job_type=registration.job_type,
        job=job_from_row(job_row(**row), registration.job_type),
        worker_id=WORKER,
        mode="staged",
    )


# The effects every attempt that acquired a job begins and ends with.
ACQUIRE = ["Open", "Run(acquire_job)"]
CLOSE = ["ReleaseLease", "End(close)"]


# --- one atomic attempt -----------------------------------------------------------------


def test_nothing_due_commits_the_empty_transaction_and_closes() -> None:
    """An acquire that found nothing is ended by COMMIT, never ROLLBACK (psycopg would drop
    its prepared statements), and the pass reports no job."""
    core = make_core()
    register(core, complete(1))
    driver, step = run_attempt(core, {"Run(acquire_job)": None})
    assert driver.trace == ["Open", "Run(acquire_job)", "End(commit)", "End(close)"]
    assert step == flow.Step()
    assert (core.completed, core.failed) == (0, 0)
    assert {effect.session.name for effect in driver.effects[1:]} == {"session 1"}


def test_the_acquire_is_bound_to_the_workers_types_lease_bound_and_timeouts() -> None:
    """One statement takes the job with the provisional lease (the longest of the handlers')
    and, per atomic type, the server-side time limit."""
    core = make_core()
    register(core, complete(1), timeout=dt.timedelta(minutes=2))
    register(core, complete(1), job_type=SLOW, mode="staged", lease=dt.timedelta(minutes=10))
    driver, _ = run_attempt(core, {"Run(acquire_job)": None}, exclude=(OTHER_ID,))
    unit = driver.one("Run(acquire_job)").unit
    assert unit.func is ops.acquire_job
    assert unit.keywords == {
        "models": DEFAULT_MODELS,
        "caps": POSTGRES,
        "type_names": ("work", "slow"),
        "worker_id": WORKER,
        "lease_until": NOW + dt.timedelta(minutes=10),
        "now": NOW,
        "exclude_ids": (OTHER_ID,),
        "timeouts": {"work": dt.timedelta(minutes=2)},
    }


def test_an_atomic_success_writes_its_outcome_inside_the_savepoint_then_commits() -> None:
    """Eager SAVEPOINT around the handler; the outcome is written in it, released, committed."""
    core = make_core()
    register(core, complete(9))
    driver, step = run_attempt(core)
    assert driver.trace == [
        *ACQUIRE,
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "Run(write_decided)",
        "EndSavepoint(commit)",
        "End(commit)",
        *CLOSE,
    ]
    assert step == flow.Step(job_id=JOB_ID, failed=False)
    assert (core.completed, core.failed) == (1, 0)
    write = driver.one("Run(write_decided)").unit
    state = driver.one("CallHandler").state
    assert write.func is units.write_decided
    assert write.keywords == {"ctx": core.ctx, "state": state}
    assert state.decision == Completed(9)
    assert driver.one("EndSavepoint(commit)").savepoint is state.savepoint
    sessions = {e.session for e in driver.effects if isinstance(e, fx.Run | fx.End)}
    assert len(sessions) == 1, "the whole attempt is one session's transaction"


def test_a_handler_that_raises_is_undone_and_rescheduled_with_backoff() -> None:
    """Its SAVEPOINT is rolled back, the job rescheduled in the same transaction at
    now + backoff (drawn from core.rng), and that commits."""
    core = make_core()
    register(core, raises(RuntimeError("boom")))
    driver, step = run_attempt(core)
    assert driver.trace == [
        *ACQUIRE,
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "EndSavepoint(rollback)",
        "Run(reschedule_job)",
        "End(commit)",
        *CLOSE,
    ]
    reschedule = driver.one("Run(reschedule_job)").unit
    assert reschedule.func is settlement.reschedule_job
    keywords = dict(reschedule.keywords)
    error = keywords.pop("error")
    assert keywords == {
        "models": DEFAULT_MODELS,
        "job_id": JOB_ID,
        "scheduled_at": retry_at(),
        "now": NOW,
    }
    assert error.startswith("Traceback")
    assert error.endswith("RuntimeError: boom")
    assert step == flow.Step(job_id=JOB_ID, failed=True)
    assert (core.completed, core.failed) == (0, 1)


def test_reschedule_from_the_handler_picks_the_retry_time_itself() -> None:
    """``Reschedule(run_in=...)`` replaces the backoff; its reason is the kept error."""
    core = make_core()
    register(core, raises(q.Reschedule(run_in=dt.timedelta(hours=1), reason="rate limited")))
    driver, step = run_attempt(core)
    keywords = driver.one("Run(reschedule_job)").unit.keywords
    assert keywords["scheduled_at"] == NOW + dt.timedelta(hours=1)
    assert keywords["error"] == "Reschedule: rate limited"
    assert step.failed


@pytest.mark.parametrize(
    "result", [None, "done", Outcome(kind="completed")], ids=["None", "a-value", "foreign-outcome"]
)
def test_a_handler_returning_anything_but_its_own_outcome_is_a_handler_error(
    result: object,
) -> None:
    """A foreign or missing outcome is refused: nothing the handler wrote is kept and the job
    is retried with a HandlerError that says what to return."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> object:
        attempt.complete(1)
        return result

    register(core, handler)
    driver, step = run_attempt(core)
    assert driver.trace[2:-2] == [
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "SavepointOpen",
        "EndSavepoint(rollback)",
        "Run(reschedule_job)",
        "End(commit)",
    ]
    error = driver.one("Run(reschedule_job)").unit.keywords["error"]
    assert HandlerError.__name__ in error
    assert "it must return attempt.complete(output)" in error
    assert step.failed
    assert core.failed == 1


def test_a_handler_that_ended_the_workers_transaction_is_a_handler_error() -> None:
    """Its SAVEPOINT is gone (it committed, rolled back or closed attempt.session): the write
    is refused, there is nothing left to roll back, and the misuse is recorded."""
    core = make_core()
    register(core, complete(1))
    driver, step = run_attempt(core, {"SavepointOpen": False})
    assert driver.trace[2:-2] == [
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "SavepointOpen",
        "Run(reschedule_job)",
        "End(commit)",
    ]
    error = driver.one("Run(reschedule_job)").unit.keywords["error"]
    assert "committed, rolled back or closed attempt.session" in error
    assert step.failed
    assert core.failed == 1


def test_a_failing_outcome_write_is_undone_in_its_savepoint_and_rescheduled() -> None:
    """With a SAVEPOINT, a failed write (e.g. the handler's own flush) is rolled back to it and
    the attempt rescheduled in the same transaction."""
    core = make_core()
    register(core, complete(1))
    driver, step = run_attempt(core, {"Run(write_decided)": RuntimeError("unique violation")})
    assert driver.trace[2:-2] == [
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "Run(write_decided)",
        "SavepointOpen",
        "EndSavepoint(rollback)",
        "Run(reschedule_job)",
        "End(commit)",
    ]
    assert "unique violation" in driver.one("Run(reschedule_job)").unit.keywords["error"]
    assert step.failed


def test_a_handler_that_never_touches_the_session_costs_no_savepoint() -> None:
    """Lazy SAVEPOINT (the thread worker's own sessions): nothing opened, the outcome written
    straight into the attempt's transaction."""
    core = make_core()
    core.eager_savepoints = False
    register(core, complete(1))
    driver, step = run_attempt(core)
    assert driver.trace == [*ACQUIRE, "CallHandler", "Run(write_decided)", "End(commit)", *CLOSE]
    assert step == flow.Step(job_id=JOB_ID)
    assert core.completed == 1


def test_without_a_savepoint_a_failed_outcome_write_rolls_back_and_is_recorded_afresh() -> None:
    """The write failed outside any SAVEPOINT: the whole transaction (the acquisition too) is
    rolled back and the attempt recorded in a new one, saying nothing was kept."""
    core = make_core()
    core.eager_savepoints = False
    register(core, complete(1))
    driver, step = run_attempt(core, {"Run(write_decided)": RuntimeError("flush failed")})
    assert driver.trace == [
        *ACQUIRE,
        "CallHandler",
        "Run(write_decided)",
        "End(rollback)",
        "InTransaction(plain, record_failed_attempt)",
        *CLOSE,
    ]
    record = driver.one("InTransaction(plain, record_failed_attempt)").unit
    assert record.func is settlement.record_failed_attempt
    keywords = dict(record.keywords)
    error = keywords.pop("error")
    assert keywords == {
        "models": DEFAULT_MODELS,
        "job_id": JOB_ID,
        "scheduled_at": retry_at(),
        "now": NOW,
    }
    assert error.startswith("writing the attempt's outcome failed; nothing was kept: Traceback")
    assert "flush failed" in error
    assert step.failed
    assert (core.completed, core.failed) == (0, 1)


def test_a_failed_commit_rolls_back_and_is_recorded_afresh() -> None:
    """The COMMIT failed: roll back (quietly) and record the attempt in a new transaction."""
    core = make_core()
    register(core, complete(1))
    driver, step = run_attempt(core, {"End(commit)": down("connection lost")})
    assert driver.trace[-5:] == [
        "End(commit)",
        "End(rollback)",
        "InTransaction(plain, record_failed_attempt)",
        *CLOSE,
    ]
    error = driver.one("InTransaction(plain, record_failed_attempt)").unit.keywords["error"]
    assert error.startswith("the attempt's COMMIT failed: Traceback")
    assert step.failed
    assert (core.completed, core.failed) == (0, 1)


def test_a_failed_reschedule_keeps_the_handlers_error_and_names_the_failure() -> None:
    """The handler raised and writing its reschedule failed too: the handler's error is the
    one retried, with the transaction's failure named in the kept text."""
    core = make_core()
    register(core, raises(ValueError("bad input")))
    driver, step = run_attempt(core, {"Run(reschedule_job)": RuntimeError("server closed")})
    assert driver.trace[-5:] == [
        "Run(reschedule_job)",
        "End(rollback)",
        "InTransaction(plain, record_failed_attempt)",
        *CLOSE,
    ]
    error = driver.one("InTransaction(plain, record_failed_attempt)").unit.keywords["error"]
    assert error.startswith("the attempt's transaction failed (server closed) after: Traceback")
    assert error.endswith("ValueError: bad input")
    assert step.failed


def test_a_failing_record_of_a_lost_attempt_ends_the_pass_with_the_session_closed() -> None:
    """The database is gone: the error leaves the attempt (the slot backs off), uncounted, with
    its session closed."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Run(acquire_job)": job_row(),
            "End(commit)": down("down"),
            "InTransaction(plain, record_failed_attempt)": down("still down"),
        },
    )
    with pytest.raises(DatabaseUnavailableError, match="still down"):
        driver.drive(flow.attempt(core, ()))
    assert driver.trace[-2:] == CLOSE
    assert (core.completed, core.failed) == (0, 0)


def test_a_failing_acquire_closes_the_session_and_raises() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Run(acquire_job)": down("down")})
    with pytest.raises(DatabaseUnavailableError):
        driver.drive(flow.attempt(core, ()))
    assert driver.trace == ["Open", "Run(acquire_job)", "End(close)"]


@pytest.mark.parametrize(
    "stop", [SystemExit(3), KeyboardInterrupt()], ids=lambda stop: type(stop).__name__
)
def test_a_handler_raising_systemexit_is_recorded_before_it_propagates(
    stop: BaseException,
) -> None:
    """SystemExit/KeyboardInterrupt from a handler: the attempt is undone, rescheduled and
    committed like any failure, and counted; then the flow raises it, so the worker stops."""
    core = make_core()
    register(core, raises(stop))
    driver = ScriptedDriver(core, {"Run(acquire_job)": job_row()})
    with pytest.raises(type(stop)) as raised:
        driver.drive(flow.attempt(core, ()))
    assert raised.value is stop
    assert driver.trace == [
        *ACQUIRE,
        "Savepoint",
        "CallHandler",
        "SavepointOpen",
        "EndSavepoint(rollback)",
        "Run(reschedule_job)",
        "End(commit)",
        *CLOSE,
    ]
    assert driver.one("Run(reschedule_job)").unit.keywords["scheduled_at"] == retry_at()
    assert (core.completed, core.failed) == (0, 1)


def test_an_input_that_no_longer_decodes_is_rescheduled_without_calling_the_handler() -> None:
    """A row the job type cannot decode fails the attempt before any handler runs."""
    core = make_core()
    register(core, complete(1))
    driver, step = run_attempt(core, {"Run(acquire_job)": job_row(input={"m": 3})})
    assert driver.trace == [*ACQUIRE, "Run(reschedule_job)", "End(commit)", "End(close)"]
    assert "TypeError" in driver.one("Run(reschedule_job)").unit.keywords["error"]
    assert step.failed


def test_a_type_with_blockers_reads_them_in_the_attempts_transaction_first() -> None:
    """The blocker chains are read before the handler, in the session that holds the job."""
    core = make_core()
    seen: list[object] = []

    def handler(attempt: FakeAttempt) -> Outcome:
        seen.append(attempt.state.blockers)
        return attempt.complete(1)

    register(core, handler, job_type=GATED)
    chains = ["a blocker chain"]
    driver, _ = run_attempt(
        core,
        {"Run(acquire_job)": job_row(type_name="gated"), "Run(job_blockers)": [chains]},
    )
    assert driver.trace[2:4] == ["Run(job_blockers)", "Savepoint"]
    read = driver.one("Run(job_blockers)").unit
    assert (read.func, read.keywords) == (
        transitions.job_blockers,
        {"ctx": core.ctx, "job_id": JOB_ID},
    )
    assert seen == [chains]


# --- one staged attempt -----------------------------------------------------------------

PREPARE = ["End(commit)", "End(close)", "Writer(drop)", "HoldLease"]


def test_a_staged_failure_after_prepare_is_rescheduled_in_an_owned_transaction() -> None:
    """Past prepare() the acquisition is committed: the reschedule runs in a new transaction
    that first checks, under the row lock, that the job is still this attempt's."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        raise RuntimeError("api down")

    register(core, handler, mode="staged")
    driver, step = run_attempt(core)
    assert driver.trace == [
        *ACQUIRE,
        "CallHandler",
        *PREPARE,
        "InTransaction(owned, reschedule_job)",
        "Run(lock_job)",
        *CLOSE,
    ]
    reschedule = driver.one("InTransaction(owned, reschedule_job)")
    assert reschedule.state is driver.one("CallHandler").state
    assert reschedule.unit.keywords["scheduled_at"] == retry_at()
    assert reschedule.unit.keywords["job_id"] == JOB_ID
    assert step.failed
    assert core.failed == 1
    assert driver.leases == [], "the lease is released when the attempt ends"


def test_a_staged_failure_before_prepare_is_rescheduled_in_the_acquiring_transaction() -> None:
    """Nothing was committed yet: the staged attempt settles like an atomic one."""
    core = make_core()
    register(core, raises(RuntimeError("bad config")), mode="staged")
    driver, step = run_attempt(core)
    assert driver.trace == [*ACQUIRE, "CallHandler", "Run(reschedule_job)", "End(commit)", *CLOSE]
    assert step.failed


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (job_row(leased_by="other:2:worker", attempt=2), "taken_by_another_worker"),
        (job_row(status=JobStatus.COMPLETED, leased_by=None), "already_completed"),
    ],
)
def test_a_staged_job_lost_meanwhile_is_not_rescheduled(
    found: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The owned reschedule finds the row no longer this attempt's: the job is left to whoever
    has it, the signal says why, and so does the count's log line."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        raise RuntimeError("api down")

    register(core, handler, mode="staged")
    with caplog.at_level(logging.WARNING, "queuert_sa.worker"):
        driver, step = run_attempt(core, {"Run(lock_job)": found})
    assert driver.trace[-4:] == ["InTransaction(owned, reschedule_job)", "Run(lock_job)", *CLOSE]
    state = driver.one("CallHandler").state
    assert state.signal.reason == reason
    assert step.failed
    assert core.failed == 1
    said = {
        "taken_by_another_worker": "its lease expired and another worker took the job",
        "already_completed": "its job was completed elsewhere",
    }[reason]
    assert f"ended without its job, not rescheduled ({said})" in caplog.text


@pytest.mark.parametrize(
    ("error", "signal", "why"),
    [
        pytest.param(
            JobTakenByAnotherWorkerError(JOB_ID, worker_id=WORKER, leased_by="other"),
            None,
            "its lease expired and another worker took the job",
            id="transaction-refused",
        ),
        pytest.param(JobNotFoundError(JOB_ID), None, "its job was deleted", id="job-deleted"),
        pytest.param(RuntimeError("gave up"), "not_found", "its job was deleted", id="signal-set"),
    ],
)
def test_a_staged_attempt_that_knows_its_job_is_lost_does_not_try_to_reschedule(
    error: Exception, signal: str | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ownership error from transaction(), or the signal set by a renewal: no owned
    transaction is opened at all, and the log says why."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        if signal is not None:
            attempt.state.signal.set(signal)
        raise error

    register(core, handler, mode="staged")
    with caplog.at_level(logging.WARNING, "queuert_sa.worker"):
        driver, step = run_attempt(core)
    assert driver.trace == [*ACQUIRE, "CallHandler", *PREPARE, *CLOSE]
    assert step.failed
    assert core.failed == 1
    assert f"not rescheduled ({why})" in caplog.text


def test_a_staged_success_writes_in_its_owned_transaction() -> None:
    """prepare(), external work, then transaction(): ownership checked under the row lock, the
    outcome written there and committed; the acquiring transaction has nothing left to do."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        with attempt.transaction():
            return attempt.complete(4)

    register(core, handler, mode="staged")
    driver, step = run_attempt(core)
    assert driver.trace == [
        *ACQUIRE,
        "CallHandler",
        *PREPARE,
        "Run(lock_job)",
        "Run(write_decided)",
        OWNED_COMMIT,
        *CLOSE,
    ]
    assert step == flow.Step(job_id=JOB_ID)
    assert (core.completed, core.failed) == (1, 0)


def test_a_staged_outcome_returned_outside_transaction_is_written_as_transaction_would() -> None:
    """``return attempt.complete(x)`` after prepare(): written under the same ownership check."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        return attempt.complete(4)

    register(core, handler, mode="staged")
    driver, step = run_attempt(core)
    assert driver.trace == [
        *ACQUIRE,
        "CallHandler",
        *PREPARE,
        "WriteOwned",
        "Run(lock_job)",
        "Run(write_decided)",
        OWNED_COMMIT,
        *CLOSE,
    ]
    assert step == flow.Step(job_id=JOB_ID)
    assert core.completed == 1


def test_a_staged_handler_raising_after_its_outcome_committed_counts_as_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The outcome is committed: the job is done whatever the handler did afterwards; the
    late exception is logged, not rescheduled."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        with attempt.transaction():
            attempt.complete(4)
        raise RuntimeError("cleanup failed")

    register(core, handler, mode="staged")
    with caplog.at_level(logging.WARNING, "queuert_sa.worker"):
        driver, step = run_attempt(core)
    assert "InTransaction(owned, reschedule_job)" not in driver.trace
    assert step == flow.Step(job_id=JOB_ID, failed=False)
    assert (core.completed, core.failed) == (1, 0)
    assert "raised RuntimeError('cleanup failed') after its outcome was committed" in caplog.text


@pytest.mark.parametrize("inside", [True, False], ids=["in-transaction", "returned-outside"])
def test_a_staged_outcome_whose_commit_failed_is_not_counted_as_done(inside: bool) -> None:
    """The owned transaction's COMMIT failed after the outcome was written into it: nothing
    was kept, so the attempt failed and is rescheduled (the job is still this attempt's).

    ``write_staged`` sets ``state.written`` ("the outcome committed") before the driver
    commits, so today the failure is taken for a late exception: counted as done, logged as
    "raised ... after its outcome was committed", and the job sits ``running`` under its
    lease until it is reaped.
    """
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        if not inside:
            return attempt.complete(4)
        with attempt.transaction():
            return attempt.complete(4)

    register(core, handler, mode="staged")
    driver, step = run_attempt(core, {OWNED_COMMIT: down("connection lost")})
    assert (core.completed, core.failed) == (0, 1)
    assert step.failed
    assert "InTransaction(owned, reschedule_job)" in driver.trace


@pytest.mark.parametrize(
    "stop", [SystemExit(3), KeyboardInterrupt()], ids=lambda stop: type(stop).__name__
)
def test_a_staged_handler_raising_systemexit_after_its_outcome_committed_counts_as_done(
    stop: BaseException,
) -> None:
    """The job is done and the worker is asked to stop: counted as completed, no reschedule
    attempted for the completed job, then the exception propagates.

    Today ``_run`` keeps only an ``Exception`` raised after ``written`` from failing the
    attempt, so this one is counted as failed, an owned transaction is opened to reschedule
    the completed job, and the log says it "failed and was not rescheduled".
    """
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        with attempt.transaction():
            attempt.complete(4)
        raise stop

    register(core, handler, mode="staged")
    driver = ScriptedDriver(
        core,
        {
            "Run(acquire_job)": job_row(),
            # Ours inside transaction(); completed (by this attempt) from then on.
            "Run(lock_job)": [job_row(), job_row(status=JobStatus.COMPLETED, leased_by=None)],
        },
    )
    with pytest.raises(type(stop)):
        driver.drive(flow.attempt(core, ()))
    assert "InTransaction(owned, reschedule_job)" not in driver.trace
    assert (core.completed, core.failed) == (1, 0)


# --- the staged steps -------------------------------------------------------------------


def test_commit_prepare_keeps_a_fresh_provisional_lease() -> None:
    """Same lease as the acquire wrote and prepare() was quick: no renewing UPDATE; commit,
    close, free the writer for the external work, start renewals."""
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    clock_of(core).advance(dt.timedelta(seconds=1))
    driver = ScriptedDriver(core)
    driver.drive(staged.commit_prepare(core, state, Handle("session 1")))
    assert driver.trace == PREPARE
    assert state.prepared
    hold = driver.one("HoldLease")
    assert (hold.state, hold.lease) == (state, LEASE)


def test_commit_prepare_renews_a_lease_that_aged_in_prepare() -> None:
    """prepare() took a tenth of the lease or more: the lease is set anew from now."""
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    clock_of(core).advance(LEASE / 10)
    driver = ScriptedDriver(core)
    driver.drive(staged.commit_prepare(core, state, Handle("session 1")))
    assert driver.trace == ["Run(renew_lease)", *PREPARE]
    renew = driver.one("Run(renew_lease)").unit
    assert renew.func is leases.renew_lease
    assert renew.keywords == {
        "models": DEFAULT_MODELS,
        "job_id": JOB_ID,
        "worker_id": WORKER,
        "attempt": 1,
        "leased_until": NOW + LEASE / 10 + LEASE,
    }


def test_commit_prepare_renews_a_lease_shorter_than_the_provisional_one() -> None:
    """The acquire wrote the longest lease of the worker's handlers; this handler's is set."""
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    register(core, complete(1), job_type=SLOW, timeout=dt.timedelta(minutes=30))
    state = staged_state(core, registration)
    driver = ScriptedDriver(core)
    driver.drive(staged.commit_prepare(core, state, Handle("session 1")))
    assert driver.trace == ["Run(renew_lease)", *PREPARE]
    assert driver.one("Run(renew_lease)").unit.keywords["leased_until"] == NOW + LEASE


def test_commit_prepare_claims_nothing_when_its_commit_fails() -> None:
    """No ``prepared``, no renewals, and the writer still held: the attempt settles in its
    acquiring transaction."""
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    driver = ScriptedDriver(core, {"End(commit)": down("down")})
    with pytest.raises(DatabaseUnavailableError):
        driver.drive(staged.commit_prepare(core, state, Handle("session 1")))
    assert driver.trace == ["End(commit)"]
    assert not state.prepared


@pytest.mark.parametrize(
    ("found", "error", "reason"),
    [
        (None, JobNotFoundError, "not_found"),
        (job_row(status=JobStatus.COMPLETED), JobAlreadyCompletedError, "already_completed"),
        (job_row(leased_by="other"), JobTakenByAnotherWorkerError, "taken_by_another_worker"),
        (job_row(attempt=2), JobTakenByAnotherWorkerError, "taken_by_another_worker"),
    ],
)
def test_check_ownership_raises_the_lost_jobs_error_and_sets_the_signal(
    found: dict[str, Any] | None, error: type[Exception], reason: str
) -> None:
    """The row is locked in the owned transaction and compared with the attempt."""
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    driver = ScriptedDriver(core, {"Run(lock_job)": found})
    with pytest.raises(error):
        driver.drive(staged.check_ownership(core, state, Handle("owned")))
    lock = driver.one("Run(lock_job)")
    assert lock.unit.func is ops.lock_job
    assert lock.unit.keywords == {"models": DEFAULT_MODELS, "caps": POSTGRES, "job_id": JOB_ID}
    assert lock.session.name == "owned"
    assert state.signal.reason == reason


def test_check_ownership_passes_the_attempts_own_row() -> None:
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    driver = ScriptedDriver(core, {"Run(lock_job)": job_row()})
    driver.drive(staged.check_ownership(core, state, Handle("owned")))
    assert not state.signal.is_set()


def test_write_staged_writes_the_decision_in_the_owned_session() -> None:
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    state.complete(5)
    driver = ScriptedDriver(core)
    driver.drive(staged.write_outcome(core, state, Handle("owned")))
    write = driver.one("Run(write_decided)")
    assert (write.session.name, write.unit.keywords) == ("owned", {"ctx": core.ctx, "state": state})


# --- lease renewal ----------------------------------------------------------------------


def renew_with(answer: Any) -> tuple[ScriptedDriver, AttemptState, bool | None]:
    core = make_core()
    registration = register(core, complete(1), mode="staged")
    state = staged_state(core, registration)
    driver = ScriptedDriver(core, {"InTransaction(write, renew_held)": answer})
    return driver, state, driver.drive(staged.renew(core, state, LEASE))


def test_a_renewal_of_a_job_still_ours_extends_the_lease() -> None:
    """One write transaction, bound to the job, this worker, this attempt and the lease."""
    driver, state, renewed = renew_with((True, None))
    assert renewed is True
    assert not state.signal.is_set()
    unit = driver.one("InTransaction(write, renew_held)").unit
    assert unit.func is units.renew_held
    assert unit.keywords == {
        "ctx": driver.core.ctx,
        "job_id": JOB_ID,
        "worker_id": WORKER,
        "attempt": 1,
        "lease": LEASE,
    }


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (None, "not_found"),
        (job_row(status=JobStatus.COMPLETED), "already_completed"),
        (job_row(leased_by="other", attempt=2), "taken_by_another_worker"),
    ],
)
def test_a_renewal_that_finds_the_job_lost_sets_the_signal(
    found: dict[str, Any] | None, reason: str
) -> None:
    """The handler learns at once (signal) why its job is gone; renewals stop (False)."""
    _, state, renewed = renew_with((False, found))
    assert renewed is False
    assert state.signal.is_set()
    assert state.signal.reason == reason


def test_a_renewal_that_cannot_reach_the_database_is_retried_not_lost() -> None:
    """An outage is not a lost job: None (retry soon), the signal left unset."""
    _, state, renewed = renew_with(down("down"))
    assert renewed is None
    assert not state.signal.is_set()


# --- reaping ----------------------------------------------------------------------------


def reaped_row() -> dict[str, Any]:
    return {
        "id": OTHER_ID,
        "chain_id": OTHER_ID,
        "type_name": "work",
        "attempt": 2,
        "status": "pending",
    }


def test_reaping_on_a_single_writer_database_looks_before_taking_the_write_lock() -> None:
    """No expired lease: a read only, no write transaction (which would block every writer)."""
    core = make_core(SQLITE)
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Look(has_expired_lease)": False})
    assert driver.drive(flow.reap_one(core)) is False
    assert driver.trace == ["Look(has_expired_lease)"]
    look = driver.one("Look(has_expired_lease)").unit
    assert look.keywords == {"models": DEFAULT_MODELS, "type_names": ("work",), "now": NOW}


def test_reaping_returns_an_expired_lease_to_pending_and_tells_its_holder() -> None:
    """The leases this worker keeps are excluded; the reaped job's type is woken and its old
    holder told it lost the job."""
    core = make_core(SQLITE)
    register(core, complete(1))
    held = frozenset({JOB_ID})
    driver = ScriptedDriver(
        core,
        {
            "Look(has_expired_lease)": True,
            "Query(held_ids)": held,
            "InTransaction(write, reap_expired_lease)": reaped_row(),
        },
    )
    assert driver.drive(flow.reap_one(core)) is True
    assert driver.trace == [
        "Look(has_expired_lease)",
        "Query(held_ids)",
        "InTransaction(write, reap_expired_lease)",
    ]
    reap = driver.one("InTransaction(write, reap_expired_lease)").unit
    assert reap.func is leases.reap_expired_lease
    assert reap.keywords == {
        "models": DEFAULT_MODELS,
        "caps": SQLITE,
        "type_names": ("work",),
        "exclude_ids": held,
        "now": NOW,
        "limits": {},
    }
    notify = core.ctx.notify
    assert isinstance(notify, q.InMemoryNotify)
    assert (notify.sent["job_scheduled"], notify.sent["job_ownership_lost"]) == (1, 1)


def test_reaping_on_postgresql_goes_straight_to_the_write() -> None:
    """Row locks let many writers in: no separate look first."""
    core = make_core(POSTGRES)
    register(core, complete(1))
    driver = ScriptedDriver(core)
    assert driver.drive(flow.reap_one(core)) is False
    assert driver.trace == ["Query(held_ids)", "InTransaction(write, reap_expired_lease)"]


# --- one pass: process_one --------------------------------------------------------------


def test_a_pass_holds_the_writer_around_the_attempt() -> None:
    """Taken before the acquiring transaction, dropped after it closed."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Run(acquire_job)": job_row()})
    step = driver.drive(flow.process_one(core, slot=False))
    assert driver.trace[0] == "Writer(take)"
    assert driver.trace[-3:] == [*CLOSE, "Writer(drop)"]
    assert step == flow.Step(job_id=JOB_ID)
    assert not driver.writer_held


def test_a_pass_drops_the_writer_when_the_attempt_raises() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Run(acquire_job)": down("down")})
    with pytest.raises(DatabaseUnavailableError):
        driver.drive(flow.process_one(core, slot=False))
    assert driver.trace == [
        "Writer(take)",
        "Open",
        "Run(acquire_job)",
        "End(close)",
        "Writer(drop)",
    ]
    assert not driver.writer_held


def test_a_pass_with_nothing_to_run_says_when_the_next_job_is_due() -> None:
    """The look after the write lock is dropped: the slot sleeps until then at most."""
    core = make_core()
    register(core, complete(1))
    later = NOW + dt.timedelta(seconds=3)
    driver = ScriptedDriver(core, {"Run(acquire_job)": None, "Look(next_due_at)": later})
    step = driver.drive(flow.process_one(core, slot=False))
    assert driver.trace[-2:] == ["Writer(drop)", "Look(next_due_at)"]
    assert step == flow.Step(next_due=later)
    look = driver.one("Look(next_due_at)").unit
    assert (look.func, look.keywords) == (
        ops.next_due_at,
        {"models": DEFAULT_MODELS, "type_names": ("work",)},
    )


@pytest.mark.parametrize("due", [None, NOW + dt.timedelta(seconds=1)])
def test_a_single_writer_pass_with_nothing_due_never_takes_the_write_lock(
    due: dt.datetime | None,
) -> None:
    """On SQLite a read decides first; the write lock would block the application's writers."""
    core = make_core(SQLITE)
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Look(next_due_at)": due})
    step = driver.drive(flow.process_one(core, slot=True))
    assert driver.trace == ["Look(next_due_at)"]
    assert step == flow.Step(next_due=due)


def test_a_single_writer_pass_after_a_busy_one_skips_the_look() -> None:
    """``look_first=False``: more work is likely due, so go straight to the write lock."""
    core = make_core(SQLITE)
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Run(acquire_job)": job_row()})
    driver.drive(flow.process_one(core, look_first=False, slot=True))
    assert driver.trace[:3] == ["Writer(take)", "Query(stopping)", "Open"]


def test_a_slot_that_got_the_writer_while_stopping_starts_no_attempt() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Query(stopping)": True})
    step = driver.drive(flow.process_one(core, slot=True))
    assert driver.trace[:3] == ["Writer(take)", "Query(stopping)", "Writer(drop)"]
    assert "Open" not in driver.trace
    assert step.job_id is None


# --- the slot loop and drain ------------------------------------------------------------


def test_a_slot_backs_off_after_failed_passes_and_resets_after_a_good_one() -> None:
    """Each failed pass waits longer (1 s, 2 s, ...) for the stop signal; a pass that works
    resets the count; an idle pass sleeps the jittered poll interval for a hint."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(4),
            "Run(acquire_job)": [down(), down(), None, down()],
        },
    )
    driver.drive(flow.slot_loop(core))
    waits = [(w.seconds, w.until) for w in driver.effects if isinstance(w, fx.Wait)]
    poll = 5.0 * random.Random(SEED).uniform(0.95, 1.05)
    assert waits == [(1.0, "stop"), (2.0, "stop"), (poll, "hint"), (1.0, "stop")]


def test_an_outage_is_one_line_per_retry_and_its_end_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database down: a warning without a traceback; back: "working again"."""
    core = make_core()
    register(core, complete(1))
    down_error = DatabaseUnavailableError("acquire job: connection failed", operation="acquire job")
    driver = ScriptedDriver(
        core,
        {"Query(stopping)": slot_passes(3), "Run(acquire_job)": [down_error, down_error, None]},
    )
    with caplog.at_level(logging.INFO, "queuert_sa.worker"):
        driver.drive(flow.slot_loop(core))
    assert "retrying in 1 s (and with backoff until it is back)" in caplog.text
    assert "Traceback" not in caplog.text
    assert "working again after 2 failed pass(es)" in caplog.text


def test_a_slot_whose_reap_fails_every_pass_keeps_backing_off() -> None:
    """Only a whole pass that worked ends an outage: an acquire that works but a reap that
    fails every pass still waits 1 s, 2 s, 4 s (not 1 s forever, logging each time)."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(3),
            "Run(acquire_job)": [None, None, None],
            "InTransaction(write, reap_expired_lease)": [down(), down(), down()],
        },
    )
    driver.drive(flow.slot_loop(core))
    waits = [(w.seconds, w.until) for w in driver.effects if isinstance(w, fx.Wait)]
    assert waits == [(1.0, "stop"), (2.0, "stop"), (4.0, "stop")]


def test_a_slot_survives_a_long_outage(caplog: pytest.LogCaptureFixture) -> None:
    """The database is down for over a thousand passes in a row: the slot keeps retrying every
    30 s until the worker stops, it does not die."""
    core = make_core()
    register(core, complete(1))
    passes = 1100
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(passes),
            "Run(acquire_job)": [down() for _ in range(passes)],
        },
    )
    caplog.set_level(logging.CRITICAL, "queuert_sa.worker")  # 1100 retry warnings
    driver.drive(flow.slot_loop(core))
    waits = driver.of("Wait(stop)")
    assert len(waits) == passes
    assert waits[-1].seconds == 30.0


def test_a_busy_slot_wakes_an_idle_one_and_looks_again_at_once() -> None:
    """Work begets work: after a job, hint one idle slot and run the next pass without the
    single-writer look, reap or sleep."""
    core = make_core(SQLITE)
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(2),
            "Look(next_due_at)": [NOW, None],
            "Run(acquire_job)": [job_row(), None],
            "Look(has_expired_lease)": False,
        },
    )
    driver.drive(flow.slot_loop(core))
    first_pass_end = driver.trace.index("HintIdle")
    second = driver.trace[first_pass_end + 1 :]
    assert driver.trace[:2] == ["Query(stopping)", "Look(next_due_at)"]
    assert second[:4] == ["Query(stopping)", "Writer(take)", "Query(stopping)", "Open"]
    assert "Look(has_expired_lease)" not in driver.trace[:first_pass_end]
    assert "Wait(hint)" not in driver.trace[:first_pass_end]


def test_a_slot_reaps_before_it_sleeps_and_looks_again_after_reaping() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(2),
            "Run(acquire_job)": None,
            "InTransaction(write, reap_expired_lease)": [reaped_row(), None],
        },
    )
    driver.drive(flow.slot_loop(core))
    reaps = [i for i, name in enumerate(driver.trace) if name.startswith("InTransaction")]
    waits = [i for i, name in enumerate(driver.trace) if name == "Wait(hint)"]
    assert len(reaps) == 2
    assert len(waits) == 1
    assert reaps[0] < reaps[1] < waits[0], "no sleep after a reap"


def test_a_stopping_slot_ends_before_any_pass() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Query(stopping)": True})
    assert driver.drive(flow.slot_loop(core)) is None
    assert driver.trace == ["Query(stopping)"]


def test_drain_does_not_take_a_failed_job_again_and_stops_when_nothing_is_due() -> None:
    """A job whose attempt failed is excluded from later acquires of the same drain, even
    if its retry is due at once; with nothing due and nothing to reap, drain returns."""
    core = make_core()

    def handler(attempt: FakeAttempt) -> Outcome:
        if attempt.job.id == JOB_ID:
            raise RuntimeError("flaky")
        return attempt.complete(1)

    register(core, handler)
    excluded: list[set[uuid.UUID]] = []

    def acquire(rows: list[dict[str, Any] | None]) -> Callable[[fx.Run], Any]:
        def answer(effect: fx.Run) -> Any:
            assert isinstance(effect.unit, partial)
            excluded.append(set(effect.unit.keywords["exclude_ids"]))
            return rows.pop(0)

        return answer

    driver = ScriptedDriver(
        core, {"Run(acquire_job)": acquire([job_row(), job_row(id=OTHER_ID), None])}
    )
    assert driver.drive(flow.drain(core, None)) == 2
    assert excluded == [set(), {JOB_ID}, {JOB_ID}]
    assert driver.trace[-3:] == [
        "Look(next_due_at)",
        "Query(held_ids)",
        "InTransaction(write, reap_expired_lease)",
    ]
    assert (core.completed, core.failed) == (1, 1)


def test_drain_stops_at_max_jobs() -> None:
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(core, {"Run(acquire_job)": job_row()})
    assert driver.drive(flow.drain(core, 1)) == 1
    assert driver.trace.count("Open") == 1


def test_drain_runs_reaped_jobs_too() -> None:
    """An expired lease found when nothing is due is returned to pending and drained."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Run(acquire_job)": [None, job_row(), None],
            "InTransaction(write, reap_expired_lease)": [reaped_row(), None],
        },
    )
    assert driver.drive(flow.drain(core, None)) == 1


# --- cancellation -----------------------------------------------------------------------


def atomic_success(core: WorkerCore) -> None:
    register(core, complete(1))


def atomic_failure(core: WorkerCore) -> None:
    register(core, raises(RuntimeError("boom")))


def staged_success(core: WorkerCore) -> None:
    def handler(attempt: FakeAttempt) -> Outcome:
        attempt.prepare()
        with attempt.transaction():
            return attempt.complete(4)

    register(core, handler, mode="staged")


def one_attempt(core: WorkerCore) -> flow.Flow[Any]:
    return flow.attempt(core, ())


#: Flows to close at each of their effects: (how to register, the flow).
FLOWS: dict[str, tuple[Callable[[WorkerCore], None], Callable[[WorkerCore], flow.Flow[Any]]]] = {
    "atomic": (atomic_success, one_attempt),
    "atomic-failing": (atomic_failure, one_attempt),
    "staged": (staged_success, one_attempt),
    "slot-two-passes": (atomic_success, flow.slot_loop),
}


def scripted(name: str) -> tuple[WorkerCore, ScriptedDriver, flow.Flow[Any]]:
    setup, start = FLOWS[name]
    core = make_core()
    setup(core)
    script = {"Run(acquire_job)": job_row(), "Query(stopping)": slot_passes(2)}
    return core, ScriptedDriver(core, script), start(core)


def effect_count(name: str) -> int:
    """How many effects the flow yields when run to its end."""
    _, driver, steps = scripted(name)
    return driver.step(steps)


CLOSE_POINTS = [(name, n) for name in FLOWS for n in range(effect_count(name))]


@pytest.mark.parametrize(("name", "performed"), CLOSE_POINTS)
def test_a_flow_closed_at_any_effect_yields_nothing_more(name: str, performed: int) -> None:
    """The asyncio driver closes a cancelled task's flow wherever it is suspended (mid-handler
    included); the flow must end there, never yield again (RuntimeError) nor count."""
    core, driver, steps = scripted(name)
    driver.step(steps, performed)
    steps.close()
    assert inspect.getgeneratorstate(steps) == inspect.GEN_CLOSED
    if name != "slot-two-passes":
        assert (core.completed, core.failed) == (0, 0)


def test_a_handler_cancelled_mid_flight_ends_the_flow_at_once() -> None:
    """The asyncio driver re-raises CancelledError from the handler: the flow is closed
    there, nothing is rescheduled or committed (closing the session rolls it all back)."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core, {"Run(acquire_job)": job_row(), "CallHandler": asyncio.CancelledError()}
    )
    steps = flow.attempt(core, ())
    with pytest.raises(asyncio.CancelledError):
        driver.drive(steps)
    assert driver.trace == [*ACQUIRE, "Savepoint", "CallHandler"]
    assert inspect.getgeneratorstate(steps) == inspect.GEN_CLOSED
    assert (core.completed, core.failed) == (0, 0)


# --- the drivers' dispatch tables -------------------------------------------------------


def test_every_effect_has_a_performing_method_in_both_drivers() -> None:
    """``PERFORMED_BY`` names a method for each member of ``Effect``, and each driver's
    performer has every one of them."""
    effects = set(typing.get_args(fx.Effect))
    assert set(fx.PERFORMED_BY) == effects
    assert len(set(fx.PERFORMED_BY.values())) == len(effects)
    for performer in (Performer, AsyncPerformer):
        missing = [
            name
            for name in fx.PERFORMED_BY.values()
            if not callable(getattr(performer, name, None))
        ]
        assert missing == [], performer.__name__


def test_idle_slots_of_a_worker_reap_once_per_poll_interval() -> None:
    """An idle fleet's reaping: one statement per worker per poll interval, not one per
    slot per pass; a pass that took a lease back lets the next one reap at once."""
    core = make_core()
    register(core, complete(1))
    driver = ScriptedDriver(
        core,
        {
            "Query(stopping)": slot_passes(4),
            "Run(acquire_job)": [None] * 4,
            "InTransaction(write, reap_expired_lease)": [None],
        },
    )
    driver.drive(flow.slot_loop(core))
    assert len(driver.of("InTransaction(write, reap_expired_lease)")) == 1

    again = make_core()
    register(again, complete(1))
    driver = ScriptedDriver(
        again,
        {
            "Query(stopping)": slot_passes(3),
            "Run(acquire_job)": [None] * 3,
            "InTransaction(write, reap_expired_lease)": [reaped_row(), None],
        },
    )
    driver.drive(flow.slot_loop(again))
    assert len(driver.of("InTransaction(write, reap_expired_lease)")) == 2
