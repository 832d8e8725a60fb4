"""JSON values: validation before any SQL, and codecs for dataclass and pydantic inputs.

Inputs and outputs are stored as JSON. ``json.dumps`` alone is too lenient for
a store that must round-trip values faithfully (it silently turns ``{1: "a"}``
into ``{"1": "a"}`` and writes ``NaN``), so values are walked and refused with
the path of the first offending element.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Protocol

from ._errors import JobInputError

#: A JSON value as stored in the ``input``/``output`` columns.
JSONValue = None | bool | int | float | str | list[Any] | dict[str, Any]


def _describe(value: object) -> str:
    return type(value).__qualname__


def check_json(value: object, *, type_name: str, what: str) -> None:
    """Raise :class:`JobInputError` unless ``value`` round-trips through JSON unchanged."""
    if not _is_plain(value, 0):
        # The walk that names the offending element (and decides what the quick
        # look leaves to it: subclasses of the JSON types, deep nesting).
        _walk(value, path=what, type_name=type_name, depth=0)


def _is_plain(value: object, depth: int) -> bool:
    """Whether ``value`` is a tree of exactly the JSON types that :func:`_walk` accepts.

    The quick look every input and output gets: no path is built for each
    element (most of the walk's time). False is not a refusal: :func:`_walk`
    then decides.
    """
    kind = type(value)
    if type(value) is str:  # (not ``kind``: type checkers narrow this form)
        return _is_storable_text(value)
    if kind is int or kind is bool or value is None:
        return True
    if type(value) is float:
        return math.isfinite(value)
    if depth >= 200:
        return False
    if kind is dict:
        for key, item in typing.cast("dict[object, object]", value).items():
            if type(key) is not str or not _is_storable_text(key):
                return False
            if not _is_plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_is_plain(item, depth + 1) for item in typing.cast("list[object]", value))
    return False


def _is_storable_text(text: str) -> bool:
    """No NUL and no lone surrogate (what :func:`_check_text` refuses)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(value: object, *, path: str, type_name: str, depth: int) -> None:
    if depth > 200:
        raise JobInputError(
            f"{path} of job type {type_name!r} nests deeper than 200 levels (a cycle?); "
            "pass a plain JSON tree.",
            type_name=type_name,
            path=path,
        )
    if isinstance(value, str):
        _check_text(value, path=path, type_name=type_name)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobInputError(
                f"{path} of job type {type_name!r} is {value!r}, which JSON cannot represent; "
                "use null or a string.",
                type_name=type_name,
                path=path,
            )
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(typing.cast("list[object]", value)):
            _walk(item, path=f"{path}[{i}]", type_name=type_name, depth=depth + 1)
        return
    if isinstance(value, dict):
        for key, item in typing.cast("dict[object, object]", value).items():
            if not isinstance(key, str):
                raise JobInputError(
                    f"{path} of job type {type_name!r} has key {key!r} "
                    f"({_describe(key)}); JSON object keys must be strings.",
                    type_name=type_name,
                    path=path,
                )
            _check_text(key, path=f"{path} key {key!r}", type_name=type_name)
            _walk(item, path=f"{path}[{key!r}]", type_name=type_name, depth=depth + 1)
        return
    raise JobInputError(
        f"{path} of job type {type_name!r} is a {_describe(value)} ({value!r:.60}), which is "
        "not JSON-serialisable. Convert it first (e.g. a datetime to an ISO string, a "
        "Decimal to a string, a UUID to str).",
        type_name=type_name,
        path=path,
    )


def _check_text(text: str, *, path: str, type_name: str) -> None:
    # PostgreSQL's JSONB refuses both (after the INSERT was sent, which would
    # abort the caller's transaction), so refuse them here, on every engine.
    if "\x00" in text:
        raise JobInputError(
            f"{path} of job type {type_name!r} contains a NUL character (\\x00), which "
            "PostgreSQL cannot store in JSON; remove it or encode the value (e.g. base64).",
            type_name=type_name,
            path=path,
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JobInputError(
            f"{path} of job type {type_name!r} contains a lone surrogate (not valid Unicode); "
            "decode the text properly before passing it.",
            type_name=type_name,
            path=path,
        ) from None


class Codec(Protocol):
    """Turns a Python value into a stored JSON value and back."""

    def encode(self, value: object, *, type_name: str, what: str) -> JSONValue: ...

    def decode(self, raw: JSONValue, *, type_name: str, what: str) -> Any: ...


class PlainCodec:
    """For TypedDict and plain JSON annotations: stored as given, after validation."""

    def encode(self, value: object, *, type_name: str, what: str) -> JSONValue:
        check_json(value, type_name=type_name, what=what)
        return typing.cast(JSONValue, value)

    def decode(self, raw: JSONValue, *, type_name: str, what: str) -> Any:
        return raw


class DataclassCodec:
    """For dataclass annotations: stored as an object of its fields, rebuilt on read.

    Fields that are themselves dataclasses (or lists of them) are rebuilt too.
    """

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls

    def encode(self, value: object, *, type_name: str, what: str) -> JSONValue:
        if not isinstance(value, self.cls):
            raise JobInputError(
                f"{what} of job type {type_name!r} must be a {self.cls.__qualname__} instance, "
                f"got {_describe(value)}.",
                type_name=type_name,
                path=what,
            )
        data = dataclasses.asdict(typing.cast(Any, value))
        check_json(data, type_name=type_name, what=what)
        return data

    def decode(self, raw: JSONValue, *, type_name: str, what: str) -> Any:
        return _build(self.cls, raw)


def _build(annotation: Any, raw: Any) -> Any:
    original: Any = raw  # returned as is when no rule applies (not narrowed below)
    if (
        isinstance(annotation, type)
        and dataclasses.is_dataclass(annotation)
        and isinstance(raw, Mapping)
    ):
        hints = typing.get_type_hints(annotation)
        fields = {f.name for f in dataclasses.fields(annotation) if f.init}
        kwargs = {
            k: _build(hints.get(k, Any), v)
            for k, v in typing.cast("Mapping[str, Any]", raw).items()
            if k in fields
        }
        return typing.cast(Any, annotation)(**kwargs)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and isinstance(raw, list):
        (item_type,) = args or (Any,)
        items: list[Any] = raw  # pyright: ignore[reportUnknownVariableType]
        return [_build(item_type, item) for item in items]
    if origin is dict and isinstance(raw, dict) and len(args) == 2:
        entries: dict[str, Any] = raw  # pyright: ignore[reportUnknownVariableType]
        return {k: _build(args[1], v) for k, v in entries.items()}
    if origin in (typing.Union, types.UnionType) and raw is not None:
        # Optional[X] / X | None: rebuild as the one non-None member, if only one.
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _build(members[0], raw)
    return original


class PydanticCodec:
    """For pydantic (v2) models: validated, stored as ``model_dump(mode="json")``, rebuilt.

    Values are validated the way they are read back: from their JSON, so a value
    that is stored always decodes (a strict model's datetimes included). A mapping
    of the model's fields is accepted too (callers without the static types: the
    CLI, schedules' inputs), and validated the same way.
    """

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls

    def encode(self, value: object, *, type_name: str, what: str) -> JSONValue:
        pydantic_core = sys.modules["pydantic_core"]
        name = self.cls.__qualname__
        if not isinstance(value, self.cls | Mapping):
            raise JobInputError(
                f"{what} of job type {type_name!r} must be a {name} instance "
                f"(or a mapping of its fields), got {_describe(value)}.",
                type_name=type_name,
                path=what,
            )
        try:
            if not isinstance(value, self.cls):
                try:  # a mapping of JSON values (the CLI's, a schedule's) is read as JSON
                    text = _dumps(value)
                except (TypeError, ValueError):
                    value = self.cls.model_validate(value)
                else:
                    value = self.cls.model_validate_json(text)
            # An instance made without validation (model_construct, assignment) may not
            # fit its model: it is validated below; pydantic need not warn about it here.
            data = typing.cast(Any, value).model_dump(mode="json", warnings=False)
            check_json(data, type_name=type_name, what=what)
            self.cls.model_validate_json(_dumps(data))  # what a read will do
        except pydantic_core.ValidationError as exc:
            raise _invalid(exc, name=name, type_name=type_name, what=what) from None
        except (pydantic_core.PydanticSerializationError, UnicodeError) as exc:
            raise JobInputError(
                f"{what} of job type {type_name!r} cannot be written as JSON by {name} "
                f"({exc}); give the field a JSON-compatible type or a serializer.",
                type_name=type_name,
                path=what,
            ) from None
        return typing.cast(JSONValue, data)

    def decode(self, raw: JSONValue, *, type_name: str, what: str) -> Any:
        try:
            return self.cls.model_validate_json(_dumps(raw))
        except sys.modules["pydantic_core"].ValidationError as exc:
            error = _invalid(exc, name=self.cls.__qualname__, type_name=type_name, what=what)
            raise JobInputError(
                f"The stored {str(error).rstrip('.')}. Has the model changed since? Give "
                "new fields defaults, or update the stored rows.",
                type_name=type_name,
                path=error.path,
            ) from None


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def _invalid(exc: Any, *, name: str, type_name: str, what: str) -> JobInputError:
    """A pydantic ``ValidationError`` as a :class:`JobInputError` naming the first bad field."""
    errors: list[dict[str, Any]] = exc.errors(include_url=False)
    paths = [what + "".join(f"[{part!r}]" for part in error["loc"]) for error in errors]
    shown = "; ".join(f"{paths[i]}: {errors[i]['msg']}" for i in range(min(3, len(errors))))
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return JobInputError(
        f"{what} of job type {type_name!r} does not fit {name}: {shown}{more}.",
        type_name=type_name,
        path=paths[0] if paths else what,
    )


def _is_pydantic_model(annotation: object) -> bool:
    """Whether ``annotation`` is a pydantic v2 model class, without importing pydantic:
    a model class exists only once pydantic has been imported."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None) if pydantic is not None else None
    return isinstance(annotation, type) and base is not None and issubclass(annotation, base)


def as_stored(value: object) -> object:
    """A decoded input or output as the JSON object it is stored as (for display):
    a pydantic model or a dataclass instance becomes its fields; anything else as is."""
    if _is_pydantic_model(type(value)):
        return typing.cast(Any, value).model_dump(mode="json", warnings=False)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def codec_for(annotation: Any) -> Codec:
    """Pick the codec for an ``input=``/``output=`` annotation."""
    if _is_pydantic_model(annotation):
        return PydanticCodec(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return DataclassCodec(annotation)
    return PlainCodec()
