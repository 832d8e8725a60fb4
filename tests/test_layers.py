"""The package's dependency direction, read from its source (no database).

Data flows downward: the client and the workers call the chain transitions
and the state layer; nothing below imports what is above it. Only imports
that run count (``if TYPE_CHECKING:`` blocks are for type checkers).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "queuert_sa"

#: Modules that need SQLAlchemy's asyncio support (greenlet): no sync module imports them.
ASYNC_MODULES = {
    "queuert_sa._async_client",
    "queuert_sa._async_reads",
    "queuert_sa._worker._asyncio",
    "queuert_sa._worker._asyncio_performer",
}

#: Imports inside functions, each with its reason; any other is a hidden cycle or cost.
LOCAL_IMPORTS_ALLOWED = {
    # SQLite's begin hook emits BEGIN where the hot statements run (_exec imports capabilities)
    ("queuert_sa.state.capabilities", "queuert_sa.state._exec"),
    # the factories: a client makes its workers (façade -> child)
    ("queuert_sa._client", "queuert_sa._worker._threads"),
    ("queuert_sa._async_client", "queuert_sa._worker._asyncio"),
    # asyncio support is optional: loaded on first use of an async name
    ("queuert_sa", "queuert_sa._async_client"),
    ("queuert_sa", "queuert_sa._worker"),
    ("queuert_sa.bench", "queuert_sa._async_client"),
    ("queuert_sa.bench", "queuert_sa._attempt"),
    ("queuert_sa.cli._app", "queuert_sa._worker._asyncio"),
    # the CLI loads click, the demo and the benchmark only for the command that runs
    ("queuert_sa.cli", "click"),
    ("queuert_sa.cli", "queuert_sa.cli._operator_commands"),
    ("queuert_sa.cli", "queuert_sa.cli._action_commands"),
    ("queuert_sa.cli", "queuert_sa.cli._run_commands"),
    ("queuert_sa.cli", "queuert_sa.cli._dashboard_command"),
    ("queuert_sa.cli", "queuert_sa.cli._schedules_command"),
    ("queuert_sa.cli._run_commands", "queuert_sa.demo"),
    ("queuert_sa.cli._run_commands", "queuert_sa.bench"),
    # OpenTelemetry's SDK and Prometheus exporter are optional extras: loaded by
    # the command or bench option that needs them
    ("queuert_sa.cli._run_commands", "queuert_sa.cli._metrics"),
    ("queuert_sa.cli._metrics", "queuert_sa.otel"),
    ("queuert_sa.bench", "queuert_sa.otel"),
    # Alembic is an optional extra: the env.py guards load it when Alembic runs them
    ("queuert_sa._alembic_checks", "alembic.script.revision"),
    ("queuert_sa._alembic_checks", "alembic"),
    ("queuert_sa._alembic_checks", "alembic.util"),
    # the WSGI bridge is only loaded by the dashboard's wsgi()
    ("queuert_sa.dashboard._app", "a2wsgi"),
    # the dashboard command loads the dashboard (Starlette, Jinja2) and uvicorn when it runs
    ("queuert_sa.cli._dashboard_command", "queuert_sa.dashboard"),
    ("queuert_sa.cli._dashboard_command", "queuert_sa._async_client"),
    ("queuert_sa.cli._dashboard_command", "uvicorn"),
    # testcontainers (the testing extra) is loaded only when a fixture starts a container
    ("queuert_sa.testing._services", "testcontainers.community.postgres"),
    ("queuert_sa.testing._services", "testcontainers.community.redis"),
    ("queuert_sa.testing._services", "testcontainers.community.nats"),
}


@dataclass(frozen=True)
class Import:
    module: str
    target: str
    line: int
    local: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join([*base, node.module] if node.module else base)
    else:
        prefix = node.module or ""
    # "from . import _rules" imports a module; "from .x import y" imports from x.
    if node.module is None:
        return [f"{prefix}.{alias.name}" for alias in node.names]
    return [prefix]


def _imports(path: Path) -> Iterator[Import]:
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    yield from visit(sub, local)
                continue
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(module, alias.name, child.lineno, local)
            elif isinstance(child, ast.ImportFrom):
                for target in _resolve(module, is_package, child):
                    yield Import(module, target, child.lineno, local)
            yield from visit(child, inner)

    yield from visit(tree, False)


ALL = [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in _imports(path)]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _where(imports: list[Import]) -> list[str]:
    return [f"{i.module}:{i.line} imports {i.target}" for i in imports]


def test_the_import_reader_sees_the_package() -> None:
    """A guard for the rules below: they are only as good as what is read."""
    targets = {(i.module, i.target) for i in ALL}
    assert ("queuert_sa._worker._flow", "queuert_sa._worker._effects") in targets
    assert ("queuert_sa._transitions", "queuert_sa.hooks") in targets
    assert len({i.module for i in ALL}) > 40


def test_workers_never_import_the_clients() -> None:
    """The workers take a Context; the clients make workers, never the other way."""
    wrong = [
        i
        for i in ALL
        if _within(i.module, "queuert_sa._worker")
        and (
            _within(i.target, "queuert_sa._client") or _within(i.target, "queuert_sa._async_client")
        )
    ]
    assert _where(wrong) == []


def test_the_attempt_never_touches_sql() -> None:
    """``Attempt`` records what the handler decided; the transitions write it."""
    below = ("queuert_sa.state", "queuert_sa._transitions", "queuert_sa._worker")
    wrong = [
        i
        for i in ALL
        if i.module in ("queuert_sa._attempt", "queuert_sa._rules", "queuert_sa._snapshots")
        and any(_within(i.target, b) for b in below)
    ]
    assert _where(wrong) == []


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("queuert_sa.state", "queuert_sa._transitions"),
        ("queuert_sa.state", "queuert_sa._client"),
        ("queuert_sa.state", "queuert_sa._worker"),
        ("queuert_sa._transitions", "queuert_sa._client"),
        ("queuert_sa._transitions", "queuert_sa._async_client"),
        ("queuert_sa._transitions", "queuert_sa._worker"),
        ("queuert_sa._transitions", "queuert_sa._removal"),
        ("queuert_sa.state", "queuert_sa._removal"),
        ("queuert_sa._removal", "queuert_sa._client"),
        ("queuert_sa._transitions", "queuert_sa._operator"),
        ("queuert_sa.state", "queuert_sa._operator"),
        ("queuert_sa._operator", "queuert_sa._client"),
        ("queuert_sa._operator", "queuert_sa._worker"),
        ("queuert_sa._removal", "queuert_sa._worker"),
        ("queuert_sa.notify", "queuert_sa.state"),
        ("queuert_sa.notify", "queuert_sa._client"),
    ],
)
def test_lower_layers_never_import_upper_ones(lower: str, upper: str) -> None:
    wrong = [i for i in ALL if _within(i.module, lower) and _within(i.target, upper)]
    assert _where(wrong) == []


def test_no_sync_module_imports_an_async_one_at_import_time() -> None:
    """So sync applications need not install greenlet (the ``asyncio`` extra)."""
    wrong = [
        i
        for i in ALL
        if i.module not in ASYNC_MODULES and not i.local and i.target in ASYNC_MODULES
    ]
    assert _where(wrong) == []


def test_function_local_imports_are_only_the_allowed_ones() -> None:
    """A function-local import hides a cycle or a cost; each allowed one says which."""
    wrong = [
        i
        for i in ALL
        if i.local
        and (i.module, i.target) not in LOCAL_IMPORTS_ALLOWED
        and not i.target.startswith(
            ("sqlalchemy", "psycopg", "redis", "click", "opentelemetry", "prometheus_client")
        )
    ]
    assert _where(wrong) == []
    used = {(i.module, i.target) for i in ALL if i.local}
    assert LOCAL_IMPORTS_ALLOWED - used == set(), "an allowed local import is gone: drop it"


def test_no_module_is_over_500_lines() -> None:
    """Big modules hide mixed concerns (the benchmark script excepted)."""
    sizes = {
        _module_name(path): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if path.name != "bench.py"
    }
    assert {name: n for name, n in sizes.items() if n > 500} == {}
