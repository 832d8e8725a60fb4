"""queuert_sa: transactional job chains in your application's own database, for SQLAlchemy.

Jobs are rows in your PostgreSQL (or SQLite) database. ``start_chain`` writes
them through your ``Session``, so they commit or roll back with your business
rows; workers complete them in the same transaction as the handler's own writes.
"""

import typing as _typing

from . import hooks as hooks
from . import models as models
from . import observers as observers
from ._attempt import AsyncAttempt as AsyncAttempt
from ._attempt import Attempt as Attempt
from ._attempt import Outcome as Outcome
from ._blocker_specs import Many as Many
from ._blocker_specs import many as many
from ._client import Queuert as Queuert
from ._durations import Duration as Duration
from ._entities import Chain as Chain
from ._entities import CleanupPreview as CleanupPreview
from ._entities import CompletedChain as CompletedChain
from ._entities import Dedup as Dedup
from ._entities import Job as Job
from ._entities import Page as Page
from ._errors import AlembicSetupError as AlembicSetupError
from ._errors import BlockerReference as BlockerReference
from ._errors import BlockerReferenceError as BlockerReferenceError
from ._errors import ChainCancelledError as ChainCancelledError
from ._errors import ChainFailedError as ChainFailedError
from ._errors import ChainNotFoundError as ChainNotFoundError
from ._errors import DatabaseError as DatabaseError
from ._errors import DatabaseUnavailableError as DatabaseUnavailableError
from ._errors import DeduplicationError as DeduplicationError
from ._errors import DuplicateHandlerError as DuplicateHandlerError
from ._errors import DuplicateJobIdError as DuplicateJobIdError
from ._errors import DuplicateJobTypeError as DuplicateJobTypeError
from ._errors import EngineMismatchError as EngineMismatchError
from ._errors import HandlerError as HandlerError
from ._errors import InvalidBlockersError as InvalidBlockersError
from ._errors import InvalidContinuationError as InvalidContinuationError
from ._errors import InvalidCursorError as InvalidCursorError
from ._errors import InvalidJobIdError as InvalidJobIdError
from ._errors import InvalidJobTypesError as InvalidJobTypesError
from ._errors import InvalidPriorityError as InvalidPriorityError
from ._errors import InvalidScheduleError as InvalidScheduleError
from ._errors import JobAlreadyCompletedError as JobAlreadyCompletedError
from ._errors import JobCancelledError as JobCancelledError
from ._errors import JobInputError as JobInputError
from ._errors import JobNotFoundError as JobNotFoundError
from ._errors import JobNotRetryableError as JobNotRetryableError
from ._errors import JobNotTriggerableError as JobNotTriggerableError
from ._errors import JobOutputError as JobOutputError
from ._errors import JobOwnershipError as JobOwnershipError
from ._errors import JobsNotTriggerableError as JobsNotTriggerableError
from ._errors import JobTakenByAnotherWorkerError as JobTakenByAnotherWorkerError
from ._errors import JobTypeError as JobTypeError
from ._errors import JobTypeMismatchError as JobTypeMismatchError
from ._errors import MisplacedRevisionError as MisplacedRevisionError
from ._errors import NotAnEntryTypeError as NotAnEntryTypeError
from ._errors import QueuertError as QueuertError
from ._errors import SchemaMissingError as SchemaMissingError
from ._errors import SessionRequiredError as SessionRequiredError
from ._errors import TransactionConflictError as TransactionConflictError
from ._errors import UnknownJobTypeError as UnknownJobTypeError
from ._errors import VersionLocationMissingError as VersionLocationMissingError
from ._errors import WaitChainTimeoutError as WaitChainTimeoutError
from ._errors import WorkerConfigError as WorkerConfigError
from ._job_types import ChainStart as ChainStart
from ._job_types import EntryType as EntryType
from ._job_types import JobType as JobType
from ._job_types import JobTypes as JobTypes
from ._public import publish as _publish
from ._rate import Rate as Rate
from ._retry import Backoff as Backoff
from ._retry import Fail as Fail
from ._retry import Reschedule as Reschedule
from ._schedules import Schedule as Schedule
from ._signal import AsyncAttemptSignal as AsyncAttemptSignal
from ._signal import AttemptSignal as AttemptSignal
from ._worker._config import WorkerOptions as _WorkerOptions
from ._worker._threads import Worker as Worker
from .models import JobStatus as JobStatus
from .models import metadata as metadata
from .notify import InMemoryNotify as InMemoryNotify
from .notify import NotifyAdapter as NotifyAdapter
from .observers import BaseObserver as BaseObserver
from .observers import Observer as Observer
from .observers import RecordingObserver as RecordingObserver
from .state import immediate_engine as immediate_engine
from .state import prepare_engine as prepare_engine

if _typing.TYPE_CHECKING:
    # Imported on first use: sqlalchemy's asyncio support needs greenlet
    # (the [asyncio] extra), which sync-only applications need not install.
    from ._async_client import AsyncQueuert as AsyncQueuert
    from ._worker._asyncio import AsyncWorker as AsyncWorker

__version__ = "0.1.0"

__all__ = [
    "AlembicSetupError",
    "AsyncAttempt",
    "AsyncAttemptSignal",
    "AsyncQueuert",
    "AsyncWorker",
    "Attempt",
    "AttemptSignal",
    "Backoff",
    "BaseObserver",
    "BlockerReference",
    "BlockerReferenceError",
    "Chain",
    "ChainCancelledError",
    "ChainFailedError",
    "ChainNotFoundError",
    "ChainStart",
    "CleanupPreview",
    "CompletedChain",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Dedup",
    "DeduplicationError",
    "DuplicateHandlerError",
    "DuplicateJobIdError",
    "DuplicateJobTypeError",
    "Duration",
    "EngineMismatchError",
    "EntryType",
    "Fail",
    "HandlerError",
    "InMemoryNotify",
    "InvalidBlockersError",
    "InvalidContinuationError",
    "InvalidCursorError",
    "InvalidJobIdError",
    "InvalidJobTypesError",
    "InvalidPriorityError",
    "InvalidScheduleError",
    "Job",
    "JobAlreadyCompletedError",
    "JobCancelledError",
    "JobInputError",
    "JobNotFoundError",
    "JobNotRetryableError",
    "JobNotTriggerableError",
    "JobOutputError",
    "JobOwnershipError",
    "JobStatus",
    "JobTakenByAnotherWorkerError",
    "JobType",
    "JobTypeError",
    "JobTypeMismatchError",
    "JobTypes",
    "JobsNotTriggerableError",
    "Many",
    "MisplacedRevisionError",
    "NotAnEntryTypeError",
    "NotifyAdapter",
    "Observer",
    "Outcome",
    "Page",
    "Queuert",
    "QueuertError",
    "Rate",
    "RecordingObserver",
    "Reschedule",
    "Schedule",
    "SchemaMissingError",
    "SessionRequiredError",
    "TransactionConflictError",
    "UnknownJobTypeError",
    "VersionLocationMissingError",
    "WaitChainTimeoutError",
    "Worker",
    "WorkerConfigError",
    "hooks",
    "immediate_engine",
    "many",
    "metadata",
    "models",
    "observers",
    "prepare_engine",
]

# Reprs, tracebacks and messages name the exported classes queuert_sa.X.
_publish(
    [globals().get(name) for name in __all__],
    {**globals(), "WorkerOptions": _WorkerOptions},
)

_ASYNC_NAMES = ("AsyncQueuert", "AsyncWorker")


def __getattr__(name: str) -> object:
    if name in _ASYNC_NAMES:
        try:
            from . import _async_client
            from ._worker import _asyncio
        except ImportError as exc:
            raise ImportError(
                f"queuert_sa.{name} needs SQLAlchemy's asyncio support ({exc}). Install "
                "the extra: pip install 'queuert_sa[asyncio]'."
            ) from exc
        from sqlalchemy.ext import asyncio as _sqlalchemy_asyncio

        public = {**globals(), **vars(_sqlalchemy_asyncio), "WorkerOptions": _WorkerOptions}
        public.update(AsyncQueuert=_async_client.AsyncQueuert, AsyncWorker=_asyncio.AsyncWorker)
        _publish([public[name] for name in __all__ if name in public], public)
        return getattr(_async_client, name, None) or getattr(_asyncio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ASYNC_NAMES))
