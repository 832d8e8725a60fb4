"""One attempt at a job: what a handler sees (``Attempt``) and what it must return (``Outcome``).

The decisions after a handler ends (when to retry, what error text to keep)
are pure functions here; the worker drivers only execute them.
"""

from __future__ import annotations

import datetime as dt
import random
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from . import hooks
from ._entities import Job
from ._errors import HandlerError
from ._ids import coerce_id, new_id
from ._job_types import ChainStart, JobType
from ._json import JSONValue
from ._retry import Backoff, backoff_delay
from .models import JobStatus
from .state import NewJob
from .state import operations as ops

if TYPE_CHECKING:
    from ._client import Queuert

InT = TypeVar("InT")
OutT = TypeVar("OutT")
NextInT = TypeVar("NextInT")
P = ParamSpec("P")

#: ``last_attempt_error`` is cut to this many characters.
MAX_ERROR_CHARS = 10_000


class Reschedule(Exception):
    """Raise from a handler to retry the job at a chosen time instead of with backoff.

    Everything the attempt wrote is rolled back, as for any exception; the job
    becomes pending at ``run_at`` (or ``run_in`` from now) and ``reason`` is
    recorded in ``last_attempt_error``.
    """

    def __init__(
        self,
        *,
        run_at: dt.datetime | None = None,
        run_in: dt.timedelta | None = None,
        reason: str = "",
    ) -> None:
        if (run_at is None) == (run_in is None):
            raise ValueError("Reschedule needs exactly one of run_at= or run_in=")
        if run_at is not None and run_at.tzinfo is None:
            raise ValueError("Reschedule(run_at=...) needs an aware datetime")
        super().__init__(reason or "rescheduled by the handler")
        self.run_at = run_at
        self.run_in = run_in
        self.reason = reason


class Outcome:
    """What a handler decided: returned by ``complete``/``continue_with``.

    A handler must return the ``Outcome`` of its own attempt; anything else is a
    :class:`HandlerError` and the job is retried. The worker writes the outcome
    after the handler returns, in the same transaction as the handler's writes.
    """

    __slots__ = ("kind", "next_job_id", "next_type_name")

    def __init__(
        self,
        *,
        kind: Literal["completed", "continued"],
        next_type_name: str | None = None,
        next_job_id: uuid.UUID | None = None,
    ) -> None:
        self.kind = kind
        self.next_type_name = next_type_name
        self.next_job_id = next_job_id
        """Id requested for the next job; an existing job at the same
        ``chain_index`` (a retried attempt) is reused and keeps its own id."""

    def __repr__(self) -> str:
        if self.next_type_name is None:
            return f"<Outcome {self.kind}>"
        return f"<Outcome continued with {self.next_type_name}>"


@dataclass(frozen=True)
class _Continuation:
    target: JobType[Any, Any]
    input: JSONValue
    id: uuid.UUID
    run_at: dt.datetime | None
    run_in: dt.timedelta | None


class Attempt(Generic[InT, OutT]):
    """What a handler gets: the job, its input, and the attempt's own transaction.

    In atomic mode ``session`` is the worker's transaction for this attempt:
    everything written through it commits together with the job's completion
    and its continuation, or not at all. Do not commit or roll it back.
    """

    def __init__(
        self,
        *,
        client: Queuert,
        job_type: JobType[InT, OutT],
        job: Job[InT],
        session: Session,
        worker_id: str,
    ) -> None:
        self._client = client
        self.job_type = job_type
        self.job = job
        self.session = session
        self.worker_id = worker_id
        self._outcome: Outcome | None = None
        self._output: JSONValue = None
        self._continuation: _Continuation | None = None

    @property
    def input(self) -> InT:
        """The job's input, decoded with its type."""
        return self.job.input

    @property
    def outcome(self) -> Outcome | None:
        """The outcome recorded by ``complete``/``continue_with`` so far."""
        return self._outcome

    def _check_open(self, action: str) -> None:
        if self._outcome is not None:
            raise HandlerError(
                f"{action}: the attempt at job {self.job.id} ({self.job.type_name!r}) already "
                f"{self._outcome.kind}; call complete() or continue_with() once per attempt.",
                job_id=self.job.id,
                type_name=self.job.type_name,
            )

    def complete(self, output: OutT) -> Outcome:
        """Finish the job, and with it the chain, with ``output``. Return the result.

        ``output`` is validated now (JSON, or the declared dataclass); the
        worker writes the completion when the handler returns, in the same
        transaction as the handler's own writes.
        """
        self._check_open("complete()")
        self._output = self.job_type.encode_output(output)
        self._outcome = Outcome(kind="completed")
        return self._outcome

    def continue_with(
        self,
        job_type: Callable[P, ChainStart[NextInT, Any]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Outcome:
        """Finish this job by handing the chain to a next job of ``job_type``. Return the result.

        Called as ``continue_with(job_type, input, *, id=None, run_at=None,
        run_in=None)``; type checkers check ``input`` against ``job_type``.

        ``job_type`` must be listed in this type's ``continues_with``. The next
        job gets ``chain_index + 1``; if one already exists at that index (a
        retried attempt, a race) it is reused, never duplicated.
        """
        from ._client import check_schedule, describe_job

        self._check_open("continue_with()")
        start = describe_job(job_type, *args, **kwargs)
        target = self._client.job_types.resolve(start.job_type)
        self.job_type.require_continuation(target)
        check_schedule(target.name, start.run_at, start.run_in)
        self._continuation = _Continuation(
            target=target,
            input=target.encode_input(start.input),
            id=coerce_id(start.id) if start.id is not None else new_id(),
            run_at=start.run_at,
            run_in=start.run_in,
        )
        self._outcome = Outcome(
            kind="continued", next_type_name=target.name, next_job_id=self._continuation.id
        )
        return self._outcome

    def owns(self, result: object) -> bool:
        """True if ``result`` is the outcome this attempt recorded."""
        return result is not None and result is self._outcome

    def write_outcome(self) -> None:
        """Write the recorded outcome in the attempt's transaction (called by the worker).

        Completes the job (with its output, or ``None`` when continuing),
        inserts the continuation unless one exists at that ``chain_index``,
        and buffers the post-commit notifications.
        """
        from ._client import scheduled_time

        outcome = self._outcome
        assert outcome is not None
        client = self._client
        now = client.clock()
        notify = client.notify
        continuation = self._continuation
        if continuation is None:
            output = self._output
        else:
            output = None
            created = ops.insert_continuation(
                self.session,
                client.models,
                client.capabilities,
                NewJob(
                    id=continuation.id,
                    type_name=continuation.target.name,
                    chain_id=self.job.chain_id,
                    chain_type_name=self.job.chain_type_name,
                    chain_index=self.job.chain_index + 1,
                    input=continuation.input,
                    status=JobStatus.PENDING,
                    created_at=now,
                    scheduled_at=scheduled_time(now, continuation.run_at, continuation.run_in),
                ),
            )
            if created:
                name = continuation.target.name
                hooks.on_commit(self.session, partial(notify.notify_job_scheduled, name, 1))
        ops.complete_job(
            self.session,
            client.models,
            job_id=self.job.id,
            output=output,
            worker_id=self.worker_id,
            now=now,
        )
        if continuation is None:
            chain_id = self.job.chain_id
            hooks.on_commit(self.session, partial(notify.notify_chain_completed, chain_id))


def describe_error(exc: BaseException) -> str:
    """The text kept in ``last_attempt_error``: the traceback, cut to a bounded size."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) > MAX_ERROR_CHARS:
        suffix = "… [truncated]"
        text = text[: MAX_ERROR_CHARS - len(suffix)] + suffix
    return text


def retry_decision(
    exc: BaseException,
    *,
    attempt: int,
    backoff: Backoff,
    now: dt.datetime,
    rng: random.Random | None = None,
) -> tuple[dt.datetime, str]:
    """When a failed attempt runs again, and the error text to record.

    ``Reschedule`` picks its own time; any other exception waits the backoff
    delay for this attempt number.
    """
    if isinstance(exc, Reschedule):
        at = (
            exc.run_at.astimezone(dt.UTC)
            if exc.run_at is not None
            else now + (exc.run_in or dt.timedelta(0))
        )
        return max(at, now), f"Reschedule: {exc.reason or 'rescheduled by the handler'}"
    return now + backoff_delay(attempt, backoff, rng), describe_error(exc)
