"""The exception tree: one root, typed leaves with structured attributes.

Every message says what went wrong *and* what to do about it. Leaves carry the
identifiers involved (``type_name``, ``job_id``, ``chain_id``) so callers can
react without parsing text.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class QueuertError(Exception):
    """Base class of every error raised by queuert_sa."""

    #: Raised from an attempt, fails the job at once (no retry can fix it).
    fails_job: ClassVar[bool] = False


# --- job types and input validation (raised before any SQL is sent) ---------


class JobTypeError(QueuertError):
    """A job type is used in a way its declaration does not allow."""

    def __init__(self, message: str, *, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class UnknownJobTypeError(JobTypeError):
    """A job type name is not registered in this client's ``JobTypes``."""

    def __init__(self, type_name: str, *, registered: Sequence[str]) -> None:
        known = ", ".join(sorted(registered)) or "(none)"
        super().__init__(
            f"Unknown job type {type_name!r}. Register it with job_types.entry(...) or "
            f"job_types.define(...) on the JobTypes given to Queuert. Registered: {known}.",
            type_name=type_name,
        )
        self.registered = tuple(registered)


class DuplicateJobTypeError(JobTypeError):
    """Two job types were registered under the same name."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"Job type {type_name!r} is already registered in this JobTypes; "
            "each name may be declared once.",
            type_name=type_name,
        )


class NotAnEntryTypeError(JobTypeError):
    """A chain was started with a type declared by ``define`` (not ``entry``)."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"Job type {type_name!r} is not an entry type, so it cannot start a chain. "
            "Declare it with job_types.entry(...) or reach it through continue_with.",
            type_name=type_name,
        )


class InvalidContinuationError(JobTypeError):
    """``continue_with`` targets a type not listed in ``continues_with``."""

    def __init__(self, type_name: str, *, target: str, allowed: Sequence[str]) -> None:
        listed = ", ".join(allowed) or "(nothing)"
        super().__init__(
            f"Job type {type_name!r} cannot continue with {target!r}: its declaration "
            f"lists continues_with=[{listed}]. Add {target!r} to continues_with of "
            f"{type_name!r}.",
            type_name=type_name,
        )
        self.target = target
        self.allowed = tuple(allowed)


class InvalidJobTypesError(JobTypeError):
    """The ``JobTypes`` registry is inconsistent (e.g. a dangling continues_with)."""


class JobInputError(JobTypeError):
    """An input value cannot be stored: it is not JSON, or has the wrong shape."""

    def __init__(self, message: str, *, type_name: str, path: str) -> None:
        super().__init__(message, type_name=type_name)
        self.path = path


class JobOutputError(JobTypeError):
    """An output value (``complete(output)``) cannot be stored: not JSON, or the wrong shape."""

    def __init__(self, message: str, *, type_name: str, path: str) -> None:
        super().__init__(message, type_name=type_name)
        self.path = path


class InvalidBlockersError(JobTypeError):
    """The blockers given do not fit the type's blocker slots (count, type, existence)."""


class InvalidScheduleError(JobTypeError):
    """``run_at``/``run_in`` cannot be used (naive datetime, both given)."""


class InvalidPriorityError(JobTypeError):
    """``priority=`` is not an int in PostgreSQL's INTEGER range (bool is refused too)."""

    def __init__(self, message: str, *, type_name: str, value: object) -> None:
        super().__init__(message, type_name=type_name)
        self.value = value


class DuplicateJobIdError(QueuertError):
    """An id given to ``start_chain(id=...)`` or ``continue_with(id=...)`` is another job's.

    Checked before the INSERT, so the caller's transaction is still usable.
    Raised from an attempt's ``continue_with``, it fails the job at once:
    running it again would collide again.
    """

    fails_job = True

    def __init__(self, job_id: uuid.UUID, *, chain_id: uuid.UUID) -> None:
        super().__init__(
            f"Job id {job_id} is already used by a job of chain {chain_id}; an id passed as "
            "id= must be new. Leave id= out for a fresh one, or derive it from something "
            "unique to this step (a continuation written twice with the same id at the same "
            "step of its chain is one job)."
        )
        self.job_id = job_id
        self.chain_id = chain_id


class InvalidJobIdError(QueuertError):
    """A caller-supplied job id is not a UUID."""

    def __init__(self, value: object) -> None:
        super().__init__(
            f"Invalid job id {value!r}: ids are UUIDs; pass a uuid.UUID or its string form."
        )
        self.value = value


# --- client usage ------------------------------------------------------------


class SessionRequiredError(QueuertError):
    """A mutating call was given something that is not a usable SQLAlchemy ``Session``."""


class EngineMismatchError(QueuertError):
    """The session is bound to a database other than the one this client was built for."""


# --- rows ----------------------------------------------------------------------


class JobNotFoundError(QueuertError):
    """No job with this id exists (it may have been deleted)."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"Job {job_id} does not exist (it may have been deleted).")
        self.job_id = job_id


class ChainNotFoundError(QueuertError):
    """No chain with this id exists (the id may be a continuation, not a chain's first job)."""

    def __init__(self, chain_id: uuid.UUID) -> None:
        super().__init__(
            f"Chain {chain_id} does not exist. A chain's id is the id of its first job; "
            "continuation job ids are not chain ids."
        )
        self.chain_id = chain_id


class JobNotTriggerableError(QueuertError):
    """``trigger_job`` was asked to run a job that is not ``pending``."""

    def __init__(self, job_id: uuid.UUID, *, status: str) -> None:
        hint = {
            "blocked": "it waits for its blocker chains; complete them, or use complete_chain",
            "running": "a worker is running it now",
            "completed": "it is already completed",
            "failed": "it failed; retry_job(session, job_id) makes it pending and due now",
            "cancelled": "its chain was cancelled; start a new chain to do the work again",
        }.get(status, "only pending jobs can be triggered")
        super().__init__(
            f"Job {job_id} is {status}, so it cannot be triggered ({hint}). Only a pending "
            "job can be made due now."
        )
        self.job_id = job_id
        self.status = status


class JobsNotTriggerableError(QueuertError):
    """``trigger_jobs`` refused: some ids are no job, or a job that is not ``pending``.

    Nothing was triggered. ``missing`` lists the ids of no job, and
    ``not_triggerable`` maps each job that is not pending to its status, both
    in the order given.
    """

    def __init__(
        self, *, missing: Sequence[uuid.UUID], not_triggerable: Mapping[uuid.UUID, str]
    ) -> None:
        parts: list[str] = []
        if missing:
            parts.append(f"{len(missing)} not found ({', '.join(map(str, missing))})")
        if not_triggerable:
            shown = ", ".join(f"{job_id} is {status}" for job_id, status in not_triggerable.items())
            parts.append(f"{len(not_triggerable)} not pending ({shown})")
        super().__init__(
            f"Cannot trigger these jobs: {'; '.join(parts)}. Nothing was triggered. Only "
            "pending jobs can be made due now: leave these ids out (a failed job is made "
            "pending and due by retry_job; a blocked one waits for its blockers)."
        )
        self.missing = tuple(missing)
        self.not_triggerable = dict(not_triggerable)


@dataclass(frozen=True)
class BlockerReference:
    """One job that still needs a chain about to be deleted: ``job_id`` (of chain
    ``chain_id``) declares ``blocked_by_chain_id`` as a blocker."""

    job_id: uuid.UUID
    chain_id: uuid.UUID
    blocked_by_chain_id: uuid.UUID


class BlockerReferenceError(QueuertError):
    """``delete_chains`` refused: jobs outside the deletion set reference a chain in it."""

    def __init__(self, references: Sequence[BlockerReference]) -> None:
        shown = "; ".join(
            f"chain {r.blocked_by_chain_id} blocks job {r.job_id} of chain {r.chain_id}"
            for r in references[:10]
        )
        more = f" and {len(references) - 10} more" if len(references) > 10 else ""
        super().__init__(
            f"Cannot delete: {len(references)} job(s) outside the deletion set declare a chain "
            f"in it as a blocker ({shown}{more}). Nothing was deleted. Delete the dependent "
            "chains in the same call (add their ids), or keep the referenced chains."
        )
        self.references = tuple(references)

    @property
    def referenced_chain_ids(self) -> list[uuid.UUID]:
        """The chains in the deletion set that others still reference (sorted, unique)."""
        return sorted({r.blocked_by_chain_id for r in self.references})


class InvalidCursorError(QueuertError, ValueError):
    """A pagination cursor that this listing did not produce (or that was altered)."""

    def __init__(self, cursor: str, *, reason: str) -> None:
        super().__init__(
            f"Invalid cursor {cursor[:40]!r}: {reason}. Pass the next_cursor of a Page returned "
            "by the same listing, or None for the first page."
        )
        self.cursor = cursor


class DeduplicationError(QueuertError):
    """Deduplication options cannot be honoured (bad key or window, wrong isolation level)."""


class JobOwnershipError(QueuertError):
    """A staged attempt no longer owns its job; nothing was written."""

    def __init__(self, message: str, *, job_id: uuid.UUID) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobTakenByAnotherWorkerError(JobOwnershipError):
    """The attempt's lease expired and another worker took the job over."""

    def __init__(self, job_id: uuid.UUID, *, worker_id: str, leased_by: str | None) -> None:
        super().__init__(
            f"Job {job_id} is no longer held by worker {worker_id!r} (now: {leased_by!r}); its "
            "lease expired and the job was taken over. Nothing was written. Renewals keep a "
            "lease alive while the worker runs: a lost lease means the worker stalled or was "
            "cut off from the database longer than the lease.",
            job_id=job_id,
        )
        self.worker_id = worker_id
        self.leased_by = leased_by


class JobAlreadyCompletedError(JobOwnershipError):
    """The job was completed by someone else (e.g. ``complete_chain``) meanwhile."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(
            f"Job {job_id} was completed elsewhere while this attempt ran; nothing was written.",
            job_id=job_id,
        )


class JobCancelledError(JobOwnershipError):
    """The job's chain was cancelled (``cancel_chain``) while this attempt ran."""

    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(
            f"Job {job_id} was cancelled (cancel_chain) while this attempt ran; nothing was "
            "written.",
            job_id=job_id,
        )


class JobNotRetryableError(QueuertError):
    """``retry_job`` was asked to retry a job that has not failed."""

    def __init__(self, job_id: uuid.UUID, *, status: str) -> None:
        hint = {
            "blocked": "it waits for its blocker chains",
            "pending": "it is already waiting to run (trigger_job makes it due now)",
            "running": "a worker is running it now",
            "completed": "it completed",
            "cancelled": "its chain was cancelled; start a new chain to do the work again",
        }.get(status, "only failed jobs can be retried")
        super().__init__(
            f"Job {job_id} is {status}, so it cannot be retried ({hint}). Only a failed job "
            "can be retried."
        )
        self.job_id = job_id
        self.status = status


class ChainFailedError(QueuertError):
    """``await_chain`` found the chain failed: its current job ran out of attempts or raised ``Fail``."""

    def __init__(self, chain: Any, *, error: str | None) -> None:
        last = (error or "").strip().splitlines()
        super().__init__(
            f"Chain {chain.id} ({chain.type_name}) failed at job {chain.current_job_id} "
            f"({chain.current_type_name}): {last[-1] if last else 'no error recorded'}. "
            "Fix the cause, then retry_job(session, job_id) to run it again."
        )
        self.chain = chain
        self.error = error


class ChainCancelledError(QueuertError):
    """``await_chain`` or ``complete_chain`` found the chain cancelled (``cancel_chain``)."""

    def __init__(self, chain: Any, *, reason: str | None) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(f"Chain {chain.id} ({chain.type_name}) was cancelled{because}.")
        self.chain = chain
        self.reason = reason


class WaitChainTimeoutError(QueuertError):
    """``await_chain`` gave up before the chain completed."""

    def __init__(self, chain_id: uuid.UUID, *, timeout: float) -> None:
        super().__init__(
            f"Chain {chain_id} did not complete within {timeout:g} s. It is still running or "
            "waiting; await it again, or check its current job's last_attempt_error."
        )
        self.chain_id = chain_id
        self.timeout = timeout


class JobTypeMismatchError(QueuertError):
    """A row was read with a job type that is not its own."""

    def __init__(self, *, expected: str, actual: str, id: uuid.UUID) -> None:
        super().__init__(
            f"{id} is of type {actual!r}, not {expected!r}; pass the matching job type "
            "or none to read it untyped."
        )
        self.expected = expected
        self.actual = actual
        self.id = id


# --- worker side -----------------------------------------------------------------


class HandlerError(QueuertError):
    """A handler broke the handler contract (its job is rescheduled with backoff)."""

    def __init__(self, message: str, *, job_id: uuid.UUID, type_name: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.type_name = type_name


class DuplicateHandlerError(QueuertError):
    """A worker was given two handlers for the same job type."""

    def __init__(self, type_name: str) -> None:
        super().__init__(
            f"The worker already has a handler for {type_name!r}; register one handler "
            "per job type per worker."
        )
        self.type_name = type_name


class WorkerConfigError(QueuertError):
    """A worker cannot start as configured (no handlers, bad concurrency, ...)."""


# --- database boundary -------------------------------------------------------------


class DatabaseError(QueuertError):
    """The database refused or failed an operation; the original driver error is ``__cause__``."""

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class DatabaseUnavailableError(DatabaseError):
    """The database connection failed or was lost; retry when the database is reachable."""


class TransactionConflictError(DatabaseError):
    """The database aborted the transaction to resolve a conflict (deadlock, serialization).

    Nothing was written; running the same transaction again is the fix.
    """


class SchemaMissingError(DatabaseError):
    """queuert's tables do not exist in this database."""


# --- Alembic setup (raised from your env.py, see queuert_sa.alembic) ---------------


class AlembicSetupError(QueuertError):
    """An Alembic project is set up so that queuert's branch would be lost or written into.

    Under the ``alembic`` command it reaches you as Alembic's ``CommandError``
    (one ``FAILED:`` line) with this error as its ``__cause__``.
    """


class VersionLocationMissingError(AlembicSetupError):
    """queuert's revisions are not among the Alembic config's ``version_locations``."""

    def __init__(self, message: str, *, locations: Sequence[str]) -> None:
        super().__init__(message)
        self.locations = tuple(locations)


class MisplacedRevisionError(AlembicSetupError):
    """A new revision of yours would land in queuert's directory or on queuert's branch."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        #: The ``alembic revision`` command that puts the revision on your own branch.
        self.command = command


def _publish(namespace: dict[str, object]) -> None:
    """Name every error by its public module: tracebacks and reprs say
    ``queuert_sa.SchemaMissingError``, not the private module defining it."""
    for value in namespace.values():
        if isinstance(value, type) and issubclass(value, QueuertError):
            value.__module__ = "queuert_sa"


_publish(globals())
