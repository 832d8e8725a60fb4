"""The public names of the classes ``queuert_sa`` exports from its private modules.

Reprs, tracebacks and error messages name a class by its ``__module__``: users
should read ``queuert_sa.Queuert``, a name they can import, not the private
module that defines it. Moving ``__module__`` alone would break
``typing.get_type_hints``: string annotations (``from __future__ import
annotations``) are resolved in the namespace of the class's module. So each
class's own annotations, and those of its methods, are resolved first (in the
defining module, extended with the public names, which also resolves names the
module only imports for type checkers) and stored resolved.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

PUBLIC_MODULE = "queuert_sa"
_UNRESOLVED = (NameError, AttributeError, TypeError, SyntaxError)


def publish(classes: Iterable[object], names: Mapping[str, object]) -> None:
    """Give each class defined in a private module of the package the public module.

    ``names`` is the namespace annotations may use besides the defining module's
    (the package's public names and the ones its modules import only for type
    checkers). Objects that are not classes, and classes of public modules, are left
    alone. Calling it again is safe: a class published before only has what is still
    unresolved resolved (the asyncio names are loaded later, on first use).
    """
    namespaces: dict[int, dict[str, Any]] = {}  # per module: its globals and ``names``
    for cls in classes:
        if not isinstance(cls, type) or not _is_ours(cls.__module__):
            continue
        for owner in cls.__mro__:
            if _is_ours(owner.__module__):
                _resolve_methods(owner, names, namespaces)
        _resolve_class_annotations(cls, names)
        cls.__module__ = PUBLIC_MODULE


def _is_ours(module: str) -> bool:
    """A private module of the package, or the package itself (a class published before)."""
    parts = module.split(".")
    return parts[0] == PUBLIC_MODULE and all(part.startswith("_") for part in parts[1:])


def _resolve_class_annotations(cls: type, names: Mapping[str, object]) -> None:
    own = inspect.get_annotations(cls)
    if not any(isinstance(value, str) for value in own.values()):
        return
    namespace = {**names, **vars(sys.modules[cls.__module__]), **vars(cls)}
    try:
        hints = typing.get_type_hints(cls, localns=namespace, include_extras=True)
    except _UNRESOLVED:  # stays as written, as before publishing
        return
    cls.__annotations__ = {name: hints.get(name, value) for name, value in own.items()}


def _resolve_methods(
    owner: type, names: Mapping[str, object], namespaces: dict[int, dict[str, Any]]
) -> None:
    for name, value in vars(owner).items():
        if name.startswith("_") and name != "__init__":
            continue  # private: not what users introspect
        for function in _functions(value):
            annotations: dict[str, Any] = getattr(function, "__annotations__", {})
            if not any(isinstance(a, str) for a in annotations.values()):
                continue
            # A decorated method (a context manager) names its globals through __wrapped__.
            inner = inspect.unwrap(function)
            module_globals: dict[str, Any] = getattr(inner, "__globals__", {})
            namespace = namespaces.get(id(module_globals))
            if namespace is None:
                namespace = namespaces[id(module_globals)] = {**names, **module_globals}
            try:
                hints = typing.get_type_hints(function, globalns=namespace, include_extras=True)
            except _UNRESOLVED:  # stays as written
                continue
            function.__annotations__ = inner.__annotations__ = hints


def _functions(value: object) -> list[Callable[..., object]]:
    """The plain functions behind a class attribute: methods, properties, static/class methods."""
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if f is not None]
    inner: object = getattr(value, "__func__", value)  # staticmethod, classmethod
    if callable(inner) and hasattr(inner, "__globals__"):
        return [inner]
    return []
