"""What ``queuert-sa worker APP_PATH`` runs: :func:`import_worker` finds the
:class:`~queuert_sa.Worker` (or ``AsyncWorker``) that ``APP_PATH`` names, and
:class:`AppPathError` says why a path names none.

No click here: the command turns :class:`AppPathError` into a usage error (exit 2).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import TYPE_CHECKING, Any, cast

from queuert_sa._errors import QueuertError
from queuert_sa._worker._threads import Worker

if TYPE_CHECKING:
    from queuert_sa._worker._asyncio import AsyncWorker

    AnyWorker = Worker | AsyncWorker


class AppPathError(QueuertError):
    """``APP_PATH`` does not name a :class:`~queuert_sa.Worker` that can be imported."""

    def __init__(self, app_path: str, problem: str) -> None:
        super().__init__(f"{app_path!r}: {problem}")
        self.app_path = app_path
        self.problem = problem


def _split_app_path(app_path: str) -> tuple[str, list[str]]:
    module_name, sep, attribute = app_path.partition(":")
    example = "e.g. myapp.jobs:worker or myapp.jobs:create_worker"
    if not sep or ":" in attribute:
        raise AppPathError(app_path, f"expected 'module:attribute' ({example}).")
    for what, dotted in (("module", module_name), ("attribute", attribute)):
        parts = dotted.split(".")
        if not all(part.isidentifier() for part in parts):
            raise AppPathError(
                app_path,
                f"{dotted!r} is not a valid {what} name; expected 'module:attribute' ({example}).",
            )
    return module_name, attribute.split(".")


def _describe(value: object) -> str:
    """How an object found at APP_PATH is named in error messages."""
    if inspect.isclass(value):
        return f"the class {value.__module__}.{value.__qualname__}"
    if inspect.ismodule(value):
        return f"the module {value.__name__}"
    if inspect.isroutine(value):
        return f"the function {getattr(value, '__module__', '?')}.{value.__qualname__}()"
    kind = type(value)
    kind_name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    article = "an" if kind_name[0] in "aeiou" else "a"
    text = repr(value)
    if text.startswith("<") or len(text) > 60:
        return f"{article} {kind_name} object"
    return f"{article} {kind_name} object ({text})"


def _worker_types() -> tuple[type[Any], ...]:
    """``Worker``, and ``AsyncWorker`` when SQLAlchemy's asyncio support is installed."""
    try:
        from queuert_sa._worker._asyncio import AsyncWorker
    except ImportError:
        return (Worker,)
    return (Worker, AsyncWorker)


def import_worker(app_path: str) -> AnyWorker:
    """Import the :class:`~queuert_sa.Worker` (or ``AsyncWorker``) that ``app_path`` names.

    ``app_path`` is ``module:attribute``; the attribute may be dotted
    (``myapp.jobs:container.worker``). It is either a ``Worker`` or a function
    that takes no arguments and returns one (a factory).

    Raises :class:`AppPathError` when the path is malformed, the module or
    attribute does not exist, or the object is not a ``Worker``. Exceptions
    raised by the application's own code (at import, in the factory) propagate
    unchanged, with a note naming ``app_path``.
    """
    found = import_object(
        app_path,
        _worker_types(),
        what="queuert_sa.Worker",
        plural="Workers",
        make="worker = queuert.worker(...)",
    )
    return cast("AnyWorker", found)


def import_object(
    app_path: str, kinds: tuple[type[Any], ...], *, what: str, plural: str, make: str
) -> object:
    """The instance of one of ``kinds`` that ``app_path`` names, or that its factory returns.

    As :func:`import_worker`, for any kind of object: ``what`` names it in
    errors, ``plural`` lists those found in the module, ``make`` shows how one
    is made.
    """
    module_name, attributes = _split_app_path(app_path)
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(f"{missing}."):
            raise AppPathError(
                app_path,
                f"no module named {missing!r} (searched the current directory "
                f"{os.getcwd()} and sys.path; run from your project's root or set PYTHONPATH).",
            ) from None
        exc.add_note(f"queuert-sa: raised while importing {module_name!r} for {app_path!r}")
        raise
    except BaseException as exc:
        exc.add_note(f"queuert-sa: raised while importing {module_name!r} for {app_path!r}")
        raise
    for depth, name in enumerate(attributes):
        owner = f"{module_name}:{'.'.join(attributes[:depth])}" if depth else module_name
        try:
            target = getattr(target, name)
        except AttributeError:
            hint = ""
            if depth == 0:
                found = sorted(k for k, v in vars(target).items() if isinstance(v, kinds))
                if found:
                    hint = f" {plural} defined there: {', '.join(found)}."
            raise AppPathError(app_path, f"{owner!r} has no attribute {name!r}.{hint}") from None
        except BaseException as exc:
            exc.add_note(f"queuert-sa: raised while reading {name!r} of {owner!r}")
            raise
    if isinstance(target, kinds):
        return target
    if not callable(target) or inspect.isclass(target):
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, not a {what} instance. Point APP_PATH "
            f"at a {what.rpartition('.')[2]} ({make}) or at a function returning one.",
        )
    try:
        inspect.signature(target).bind()
    except TypeError:
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, which needs arguments; a factory must be "
            "callable with none.",
        ) from None
    except ValueError:  # no signature available (some builtins): just try it
        pass
    try:
        made = target()
    except BaseException as exc:
        exc.add_note(f"queuert-sa: raised by the factory {app_path!r}")
        raise
    if not isinstance(made, kinds):
        raise AppPathError(app_path, f"the factory returned {_describe(made)}, not a {what}.")
    return made
