"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on SQLite and PostgreSQL (see tests/conftest.py for the variables)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """pyright and mypy, both strict, on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")
    session.run("pyright")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, strict: ``nox -s docs`` (broken links and references fail)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", str(session.create_tmp()) + "/site")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput figures: ``nox -s bench -- --db URL`` (runs ``queuert-sa bench``)."""
    session.install("-e", ".[dev]")
    session.run("queuert-sa", "bench", *session.posargs)
