"""Job types: ``JobType[In, Out]`` and the ``JobTypes`` registry.

A job type names a kind of job and declares what it takes (``input``), what it
returns (``output``), which types it may continue with, and whether it may
start a chain (``entry``). Declarations reference other types by name so that
loops and go-to chains can be declared in any order; the names are checked when
the registry is bound to a client (:meth:`JobTypes.validate`), so a typo fails at
start-up, not at run time.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar, cast, overload

from ._blocker_specs import BlockerRef, BlockerSpec
from ._chain_start import ChainStart as ChainStart
from ._durations import Duration
from ._entities import Dedup, assemble
from ._errors import (
    DuplicateJobTypeError,
    InvalidBlockersError,
    InvalidContinuationError,
    InvalidJobTypesError,
    JobInputError,
    JobOutputError,
    NotAnEntryTypeError,
    UnknownJobTypeError,
)
from ._json import Codec, JSONValue, codec_for
from ._registry_checks import check_registry, split_blockers
from ._retry import Backoff, is_attempt_limit

InT = TypeVar("InT")
OutT = TypeVar("OutT")
ChainOutT = TypeVar("ChainOutT")
InT_co = TypeVar("InT_co", covariant=True)
OutT_co = TypeVar("OutT_co", covariant=True)

_NAME_MAX = 255

_CHAIN_START = cast("type[ChainStart[Any, Any]]", ChainStart)


class JobType(Generic[InT, OutT]):
    """A declared job type. ``InT`` is its input, ``OutT`` its output.

    Created by :meth:`JobTypes.entry` or :meth:`JobTypes.define`, never directly.

    Calling a job type describes a job to create, for ``start_chains`` or as
    the typed form behind ``start_chain``/``continue_with``: the input and the
    options are checked by pyright and mypy against this type's ``InT``.
    """

    __slots__ = (
        "_input_codec",
        "_output_codec",
        "backoff",
        "blocker_rest",
        "blocker_slots",
        "continues_with",
        "entry",
        "input_type",
        "max_attempts",
        "name",
        "output_type",
        "registry",
    )

    def __init__(
        self,
        *,
        registry: JobTypes,
        name: str,
        input_type: Any,
        output_type: Any,
        entry: bool,
        continues_with: tuple[str, ...],
        backoff: Backoff | None,
        blocker_slots: tuple[JobType[Any, Any], ...] = (),
        blocker_rest: JobType[Any, Any] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self.input_type = input_type
        self.output_type = output_type
        self.entry = entry
        self.continues_with = continues_with
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.blocker_slots = blocker_slots
        self.blocker_rest = blocker_rest
        self._input_codec: Codec = codec_for(input_type)
        self._output_codec: Codec = codec_for(output_type)

    def __repr__(self) -> str:
        kind = "entry" if self.entry else "define"
        return f"<JobType {self.name!r} ({kind})>"

    def __call__(
        self,
        input: InT,
        *,
        id: uuid.UUID | str | None = None,
        run_at: dt.datetime | None = None,
        run_in: Duration | None = None,
        blockers: Sequence[BlockerRef] = (),
        dedup: Dedup | None = None,
        priority: int | None = None,
    ) -> ChainStart[InT, OutT]:
        """Describe a job of this type (nothing is validated or written yet).

        Args:
            input: The job's input.
            id: The job's id (a UUID); generated (UUIDv7) when omitted.
            run_at: Earliest start (aware datetime), clamped to now.
            run_in: Earliest start as a delay from now.
            blockers: The chains (or chain ids) filling this type's blocker
                slots, in order; the job waits until all are completed.
            dedup: Start the chain only if no matching chain exists (see
                :class:`Dedup`); chain starts only, not ``continue_with``.
            priority: Higher runs first among the jobs due (an int in
                -2**31..2**31-1). Defaults to 0 for a chain start and to the
                current job's priority for ``continue_with``.
        """
        return assemble(  # ChainStart(...), without the cost of its frozen __init__
            _CHAIN_START,
            job_type=self,
            input=input,
            id=id,
            run_at=run_at,
            run_in=run_in,
            blockers=tuple(blockers),
            dedup=dedup,
            priority=priority,
        )

    @property
    def blocker_types(self) -> tuple[JobType[Any, Any], ...]:
        """Every type named in this type's blocker declaration."""
        return self.blocker_slots + ((self.blocker_rest,) if self.blocker_rest else ())

    def blocker_type_at(self, index: int) -> JobType[Any, Any] | None:
        """The type expected in slot ``index``, or None if there is no such slot."""
        if index < len(self.blocker_slots):
            return self.blocker_slots[index]
        return self.blocker_rest

    def require_blocker_count(self, count: int) -> None:
        """Raise :class:`InvalidBlockersError` unless ``count`` chains fill the slots."""
        fixed = len(self.blocker_slots)
        if count == fixed or (self.blocker_rest is not None and count > fixed):
            return
        if not self.blocker_types:
            wanted = "no blockers"
        elif self.blocker_rest is None:
            wanted = f"exactly {fixed} blocker(s)"
        else:
            wanted = f"at least {fixed} blocker(s) (then any number of {self.blocker_rest.name!r})"
        raise InvalidBlockersError(
            f"Job type {self.name!r} takes {wanted}, got {count}.", type_name=self.name
        )

    # Validation happens here, before any SQL: these raise typed errors.

    def encode_input(self, value: InT) -> JSONValue:
        """Validate and encode an input value for storage."""
        return self._input_codec.encode(value, type_name=self.name, what="input")

    def decode_input(self, raw: JSONValue) -> InT:
        """Rebuild a stored input (dataclass inputs become instances again)."""
        return self._input_codec.decode(raw, type_name=self.name, what="input")  # type: ignore[no-any-return]

    def encode_output(self, value: OutT) -> JSONValue:
        """Validate and encode an output value for storage (:class:`JobOutputError` if not)."""
        try:
            return self._output_codec.encode(value, type_name=self.name, what="output")
        except JobInputError as exc:  # the codecs check inputs and outputs alike
            raise JobOutputError(str(exc), type_name=self.name, path=exc.path) from None

    def decode_output(self, raw: JSONValue) -> OutT:
        """Rebuild a stored output (:class:`JobOutputError` if it no longer fits its model)."""
        try:
            return self._output_codec.decode(raw, type_name=self.name, what="output")  # type: ignore[no-any-return]
        except JobInputError as exc:
            raise JobOutputError(str(exc), type_name=self.name, path=exc.path) from None

    def require_entry(self) -> None:
        """Raise :class:`NotAnEntryTypeError` unless this type may start a chain."""
        if not self.entry:
            raise NotAnEntryTypeError(self.name)

    def require_continuation(self, target: JobType[Any, Any]) -> None:
        """Raise unless ``target`` is declared in this type's ``continues_with``."""
        if target.name not in self.continues_with:
            raise InvalidContinuationError(
                self.name, target=target.name, allowed=self.continues_with
            )


class EntryType(JobType[InT, OutT], Generic[InT, OutT, ChainOutT]):
    """An entry type made by ``entry(..., chain_output=T)``: its chain's final output is ``T``.

    ``get_chain``, ``await_chain`` and ``attempt.blocker_outputs`` given it type
    the chain's output as ``T`` (a plain ``JobType`` gives ``Any``); see docs/typing.md.
    """

    __slots__ = ("chain_output_type",)

    def __init__(self, *, chain_output_type: Any, **fields: Any) -> None:
        super().__init__(**fields)
        self.chain_output_type = chain_output_type


class JobTypes:
    """A registry of job types, shared by a client and its workers.

    ::

        job_types = JobTypes()
        reserve = job_types.entry("reserve", input=OrderIn, continues_with=["charge"])
        charge = job_types.define("charge", input=OrderIn, output=PaymentOut)
    """

    def __init__(self) -> None:
        self._types: dict[str, JobType[Any, Any]] = {}

    @overload
    def entry(
        self,
        name: str,
        *,
        input: type[InT],
        output: type[OutT],
        chain_output: type[ChainOutT],
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> EntryType[InT, OutT, ChainOutT]: ...

    @overload
    def entry(
        self,
        name: str,
        *,
        input: type[InT],
        output: None = None,
        chain_output: type[ChainOutT],
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> EntryType[InT, None, ChainOutT]: ...

    @overload
    def entry(
        self,
        name: str,
        *,
        input: type[InT],
        output: type[OutT],
        chain_output: None = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[InT, OutT]: ...

    @overload
    def entry(
        self,
        name: str,
        *,
        input: type[InT],
        output: None = None,
        chain_output: None = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[InT, None]: ...

    @overload
    def entry(
        self,
        name: str,
        *,
        input: Any,
        output: Any = None,
        chain_output: Any = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[Any, Any]: ...

    def entry(
        self,
        name: str,
        *,
        input: Any,
        output: Any = None,
        chain_output: Any = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[Any, Any]:
        """Declare a type that may start a chain.

        Args:
            name: Stored in ``type_name``; unique in this registry.
            input: Annotation of the input: a TypedDict, a dataclass or any JSON type.
            output: Annotation of the output; omit for types that only continue.
            chain_output: Annotation of the chain's final output (the output
                of the job that ends it, of whatever type): reads of such a
                chain are typed with it (see :class:`EntryType`).
            continues_with: Names of the types ``continue_with`` may target.
            blockers: Chains a job of this type waits for (fan-in): a list of
                entry types, one slot each, optionally ending with
                ``q.many(t)`` for any number of further chains of type ``t``.
            backoff: Retry delays for this type; defaults to the worker's.
            max_attempts: Attempts a job of this type may take before it
                becomes ``failed``; defaults to the worker's (unlimited unless
                set). A handler's ``max_attempts`` overrides it.
        """
        return self._add(
            name, input, output, True, continues_with, blockers, backoff, max_attempts, chain_output
        )

    @overload
    def define(
        self,
        name: str,
        *,
        input: type[InT],
        output: type[OutT],
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[InT, OutT]: ...

    @overload
    def define(
        self,
        name: str,
        *,
        input: type[InT],
        output: None = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[InT, None]: ...

    @overload
    def define(
        self,
        name: str,
        *,
        input: Any,
        output: Any = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[Any, Any]: ...

    def define(
        self,
        name: str,
        *,
        input: Any,
        output: Any = None,
        continues_with: Sequence[str] = (),
        blockers: BlockerSpec = (),
        backoff: Backoff | None = None,
        max_attempts: int | None = None,
    ) -> JobType[Any, Any]:
        """Declare a type reachable only through ``continue_with``; options as :meth:`entry`."""
        return self._add(
            name, input, output, False, continues_with, blockers, backoff, max_attempts
        )

    def _add(
        self,
        name: str,
        input_type: Any,
        output_type: Any,
        entry: bool,
        continues_with: Sequence[str],
        blockers: BlockerSpec,
        backoff: Backoff | None,
        max_attempts: int | None,
        chain_output: Any = None,
    ) -> JobType[Any, Any]:
        if not isinstance(name, str) or not name or len(name) > _NAME_MAX:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise InvalidJobTypesError(
                f"Job type names are non-empty strings of at most {_NAME_MAX} characters, "
                f"got {name!r}.",
                type_name=str(name),
            )
        if name in self._types:
            raise DuplicateJobTypeError(name)
        if isinstance(continues_with, str):
            raise InvalidJobTypesError(
                f"continues_with of {name!r} must be a list of type names, not the string "
                f"{continues_with!r}; write continues_with=[{continues_with!r}].",
                type_name=name,
            )
        if not is_attempt_limit(max_attempts):
            raise InvalidJobTypesError(
                f"max_attempts of {name!r} must be a whole number of attempts (at least 1) or "
                f"None for the worker's limit, not {max_attempts!r}.",
                type_name=name,
            )
        slots, rest = split_blockers(name, blockers, JobType)
        fields: dict[str, Any] = dict(
            registry=self,
            name=name,
            input_type=input_type,
            output_type=output_type,
            entry=entry,
            continues_with=tuple(continues_with),
            backoff=backoff,
            blocker_slots=slots,
            blocker_rest=rest,
            max_attempts=max_attempts,
        )
        job_type: JobType[Any, Any] = (
            JobType(**fields)
            if chain_output is None
            else EntryType[Any, Any, Any](chain_output_type=chain_output, **fields)
        )
        self._types[name] = job_type
        return job_type

    def validate(self) -> None:
        """Check every ``continues_with`` name and every blocker type.

        Called when the registry is bound to a client; raises
        :class:`InvalidJobTypesError` naming the first problem.
        """
        check_registry(self._types)

    def get(self, name: str) -> JobType[Any, Any]:
        """The type registered under ``name``; :class:`UnknownJobTypeError` otherwise."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownJobTypeError(name, registered=list(self._types)) from None

    def resolve(self, job_type: JobType[InT, OutT] | str) -> JobType[InT, OutT]:
        """Accept a ``JobType`` of this registry or a registered name."""
        if isinstance(job_type, str):
            return self.get(job_type)
        registered = self._types.get(job_type.name)
        if registered is not job_type:
            raise UnknownJobTypeError(job_type.name, registered=list(self._types))
        return job_type

    @property
    def names(self) -> tuple[str, ...]:
        """All registered type names, in declaration order."""
        return tuple(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType[Any, Any]]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)
