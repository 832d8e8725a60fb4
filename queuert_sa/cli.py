"""The ``queuert-sa`` command line: ``demo`` and ``worker``.

click is an optional dependency (``pip install 'queuert_sa[cli]'``). This module
imports without it; :func:`main` then explains what to install and exits 2.

Exit codes: 0 success (the worker stopped gracefully), 1 an error at run time
(the application raised while being imported, the demo timed out), 2 a usage
error (bad option, bad ``APP_PATH``, the target is not a ``Worker``), and
``128 + signal`` when a second SIGINT/SIGTERM abandons in-flight attempts.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from ._errors import QueuertError
from ._worker import Worker

if TYPE_CHECKING:
    import click

__all__ = ["AppPathError", "build_cli", "import_worker", "main"]

log = logging.getLogger("queuert_sa.cli")

INSTALL_HINT = "pip install 'queuert_sa[cli]'"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


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


def import_worker(app_path: str) -> Worker:
    """Import the :class:`~queuert_sa.Worker` that ``app_path`` names.

    ``app_path`` is ``module:attribute``; the attribute may be dotted
    (``myapp.jobs:container.worker``). It is either a ``Worker`` or a function
    that takes no arguments and returns one (a factory).

    Raises :class:`AppPathError` when the path is malformed, the module or
    attribute does not exist, or the object is not a ``Worker``. Exceptions
    raised by the application's own code (at import, in the factory) propagate
    unchanged, with a note naming ``app_path``.
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
                found = sorted(k for k, v in vars(target).items() if isinstance(v, Worker))
                if found:
                    hint = f" Workers defined there: {', '.join(found)}."
            raise AppPathError(app_path, f"{owner!r} has no attribute {name!r}.{hint}") from None
        except BaseException as exc:
            exc.add_note(f"queuert-sa: raised while reading {name!r} of {owner!r}")
            raise
    if isinstance(target, Worker):
        return target
    if not callable(target) or inspect.isclass(target):
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, not a queuert_sa.Worker instance. Point APP_PATH "
            "at a Worker (worker = queuert.worker(...)) or at a function returning one.",
        )
    try:
        inspect.signature(target).bind()
    except TypeError:
        raise AppPathError(
            app_path,
            f"found {_describe(target)}, which needs arguments; a worker factory must be "
            "callable with none.",
        ) from None
    except ValueError:  # no signature available (some builtins): just try it
        pass
    try:
        made = target()
    except BaseException as exc:
        exc.add_note(f"queuert-sa: raised by the worker factory {app_path!r}")
        raise
    if not isinstance(made, Worker):
        raise AppPathError(
            app_path,
            f"the factory returned {_describe(made)}, not a queuert_sa.Worker.",
        )
    return made


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def build_cli() -> click.Group:
    """Build the ``queuert-sa`` click group (imports click; see :func:`main`)."""
    import click

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, "-V", "--version", prog_name="queuert-sa")
    def cli() -> None:
        """Transactional job chains in your own database, for SQLAlchemy.

        \b
        Examples:
          queuert-sa demo
          queuert-sa worker myapp.jobs:worker
        """

    @cli.command()
    @click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, writable=True),
        default=None,
        help="SQLite file to use (created if missing). Default: demo.db in a new temporary "
        "directory, kept afterwards.",
    )
    def demo(db_path: str | None) -> None:
        """Run the demo chain end to end on an embedded SQLite file.

        Starts a sign-up chain (signup -> provision-account -> send-welcome-email)
        in the same transaction as a new Account row, runs a worker until the chain
        completes, and prints each step and the chain's output. The source is the
        module queuert_sa.demo.
        """
        from .demo import run_demo

        if db_path is not None:
            directory = os.path.dirname(os.path.abspath(db_path))
            if not os.path.isdir(directory):
                raise click.BadParameter(
                    f"the directory {directory} does not exist; create it or pick another path.",
                    param_hint="'--db'",
                )
        _configure_logging("warning")
        try:
            run_demo(db_path, out=click.echo)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from exc

    @cli.command()
    @click.argument("app_path", metavar="APP_PATH")
    @click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Logging level of the root logger (written to stderr).",
    )
    def worker(app_path: str, log_level: str) -> None:
        """Run the worker named by APP_PATH until SIGINT/SIGTERM.

        APP_PATH is module:attribute, e.g. myapp.jobs:worker, naming a
        queuert_sa.Worker or a function that returns one (myapp.jobs:create_worker).
        The current directory is put first on sys.path, so run it from your
        project's root.

        On SIGINT or SIGTERM the worker stops taking jobs, lets in-flight attempts
        finish (up to its shutdown_grace) and exits 0; a second signal exits at once,
        leaving in-flight jobs to be retried.
        """
        _configure_logging(log_level)
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            loaded = import_worker(app_path)
        except AppPathError as exc:
            raise click.BadParameter(exc.problem, param_hint="APP_PATH") from exc
        except Exception as exc:
            # The application's own code failed: show where, then a one-line summary.
            traceback.print_exc()
            raise click.ClickException(
                f"loading {app_path!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        engine_url = loaded.client.engine.url.render_as_string(hide_password=True)
        log.info("running %s from %s on %s", loaded, app_path, engine_url)
        try:
            clean = loaded.run()
        except QueuertError as exc:
            raise click.ClickException(str(exc)) from exc
        if not clean:
            log.error(
                "queuert-sa worker %s stopped with attempts still running after the "
                "shutdown grace period; their transactions roll back as the process exits",
                loaded.worker_id,
            )
            sys.exit(1)
        log.info("queuert-sa worker %s stopped", loaded.worker_id)

    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``queuert-sa`` script; exits the process."""
    try:
        cli = build_cli()
    except ImportError as exc:
        if exc.name != "click":
            raise
        print(
            f"queuert-sa: the command line needs click, which is not installed: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(2)
    cli.main(args=list(argv) if argv is not None else None, prog_name="queuert-sa")


if __name__ == "__main__":
    main()
