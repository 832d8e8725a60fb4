"""The ``env.py`` guards: queuert's branch is found, and no revision of yours lands on it.

Alembic puts a new revision next to the revision it follows. An application's
first revision, made with a plain ``alembic revision --autogenerate`` while
queuert's branch is the only head, would follow queuert's newest revision:
into queuert's own directory (in site-packages) and onto its branch, where the
next upgrade of queuert_sa loses it. And a ``version_locations`` entry that
names no directory (``queuert_sa:_alembic_migrations`` split at its colon by
``path_separator = os``) is skipped by Alembic without a word.

Alembic is imported only when a hook runs (from ``env.py``, under Alembic).
"""

from __future__ import annotations

import inspect
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._alembic_locations import (
    PACKAGE_LOCATION,
    VERSION_LOCATION,
    is_queuert_location,
    resolve_location,
)
from ._errors import AlembicSetupError, MisplacedRevisionError, VersionLocationMissingError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.operations.ops import MigrationScript
    from alembic.runtime.environment import ProcessRevisionDirectiveFn
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

#: The branch label the docs give the application's own revisions.
APP_LABEL = "app"


def check_version_locations(config: Config) -> None:
    """Raise :class:`~queuert_sa.VersionLocationMissingError` unless ``config`` finds queuert's revisions.

    Call it at the top of ``env.py`` (``check_version_locations(context.config)``):
    Alembic skips a version location that names no directory without a word,
    and queuert's branch would then be missing from ``alembic upgrade heads``.
    The message says which line of ``alembic.ini`` to change. Under the
    ``alembic`` command the error is raised as Alembic's ``CommandError``.
    """
    locations = list(config.get_version_locations_list() or ())
    if any(is_queuert_location(location) for location in locations):
        return
    error = VersionLocationMissingError(_missing_message(locations), locations=locations)
    if _under_alembic():
        _refuse(error)
    raise error


def _missing_message(locations: Sequence[str]) -> str:
    listed = ", ".join(repr(location) for location in locations) or "none"
    head = f"queuert_sa's Alembic revisions are not in version_locations (found: {listed}). "
    package, _, directory = PACKAGE_LOCATION.partition(":")
    if package in locations and directory in locations:
        return head + (
            f"path_separator = os splits {PACKAGE_LOCATION!r} at its colon: in alembic.ini, "
            "change that line to 'path_separator = newline' and put each version location "
            "on a line of its own."
        )
    if PACKAGE_LOCATION in locations:
        return head + (
            f"{PACKAGE_LOCATION!r} names no directory: queuert_sa is installed from a source "
            f"checkout (pip install -e), which keeps its revisions in {VERSION_LOCATION}. "
            "List that path in version_locations instead, or install queuert_sa without -e."
        )
    return head + (
        f"Add {PACKAGE_LOCATION!r} to version_locations in alembic.ini, next to your own "
        "versions directory (see the Alembic page of queuert_sa's docs)."
    )


def refuse_misplaced_revisions(
    also: ProcessRevisionDirectiveFn | None = None,
) -> ProcessRevisionDirectiveFn:
    """Return a ``process_revision_directives`` hook that keeps your revisions off queuert's branch.

    Pass it to ``context.configure`` in ``env.py``. It refuses, with
    :class:`~queuert_sa.MisplacedRevisionError` (raised as Alembic's
    ``CommandError``, whose ``__cause__`` it is), a new revision that would be
    written into queuert's directory or would follow a revision of queuert's
    branch, and says which command to run instead: for your first revision
    ``alembic revision --autogenerate -m MSG --head base --branch-label app
    --version-path <your versions directory>``, later ``--head app@head``.
    ``also`` is your own hook, if any: it runs first, and what it leaves is
    checked. ``alembic revision`` without ``--autogenerate`` runs ``env.py``
    only with ``revision_environment = true`` in ``alembic.ini``.
    """

    def process_revision_directives(
        context: MigrationContext, revision: Any, directives: list[MigrationScript]
    ) -> None:
        if also is not None:
            also(context, revision, directives)
        script = context.script
        if script is None or _checking():
            return
        for directive in directives:
            problem = _misplacement(script, directive)
            if problem is not None:
                _refuse(problem)

    return process_revision_directives


#: ``process_revision_directives`` hook for ``env.py``; see :func:`refuse_misplaced_revisions`.
process_revision_directives: ProcessRevisionDirectiveFn = refuse_misplaced_revisions()


def _misplacement(script: ScriptDirectory, directive: MigrationScript) -> AlembicSetupError | None:
    from alembic.script.revision import MultipleHeads, Revision

    queuert_revisions = {
        rev.revision
        for rev in script.walk_revisions()
        if is_queuert_location(Path(rev.path).parent)
    }
    app_heads = [head for head in script.get_heads() if head not in queuert_revisions]
    command = _right_command(script, directive, app_heads)
    if directive.version_path is not None and is_queuert_location(directive.version_path):
        where = f"--version-path {directive.version_path} is queuert_sa's own directory"
        return MisplacedRevisionError(_misplaced_message(where, command), command=command)
    try:
        parents = script.revision_map.get_revisions(directive.head or "head")
    except MultipleHeads:
        where = "there are two heads (yours and queuert's) and no --head says which one it follows"
        return MisplacedRevisionError(_misplaced_message(where, command), command=command)
    on_queuert = [
        p.revision for p in parents if isinstance(p, Revision) and p.revision in queuert_revisions
    ]
    if on_queuert:
        where = (
            f"it would follow queuert's revision {on_queuert[0]} and be written into "
            f"queuert_sa's own directory {VERSION_LOCATION}, on queuert's branch"
            if directive.version_path is None
            else f"it would follow queuert's revision {on_queuert[0]}, on queuert's branch"
        )
        return MisplacedRevisionError(_misplaced_message(where, command), command=command)
    if not parents and directive.version_path is None and len(script.version_locations or ()) > 1:
        where = "a revision starting a branch needs --version-path (there are several locations)"
        return MisplacedRevisionError(_misplaced_message(where, command), command=command)
    return None


def _misplaced_message(where: str, command: str) -> str:
    return (
        f"Refused to write this revision: {where}. Your revisions go on a branch of your "
        f"own, in your own versions directory: {command}"
    )


def _right_command(
    script: ScriptDirectory, directive: MigrationScript, app_heads: list[str]
) -> str:
    words = ["alembic", "revision"]
    if _autogenerating():
        words.append("--autogenerate")
    words += ["-m", directive.message or "your message"]
    if not app_heads:
        directory = _app_directory(script)
        words += ["--head", "base", "--branch-label", APP_LABEL, "--version-path", directory]
        return shlex.join(words)
    labels = sorted(script.get_revision(app_heads[0]).branch_labels)
    words += ["--head", f"{labels[0]}@head" if labels else app_heads[0]]
    return shlex.join(words)


def _app_directory(script: ScriptDirectory) -> str:
    """The application's own versions directory, as the user would type it."""
    own = [loc for loc in script.version_locations or () if not is_queuert_location(loc)]
    if not own:
        return "<your versions directory>"
    path = resolve_location(os.fspath(own[0]))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _checking() -> bool:
    """Whether ``alembic check`` runs the hook: it makes a revision only to compare, never writes it."""
    from alembic import command

    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code is command.check.__code__:
            return True
        frame = frame.f_back
    return False


def _under_alembic() -> bool:
    from alembic import context

    try:
        context.config  # noqa: B018 (set only while Alembic runs env.py)
    except (AttributeError, NameError):
        return False
    return True


def _autogenerating() -> bool:
    from alembic import context

    try:
        options = context.config.cmd_opts
    except (AttributeError, NameError):
        return True
    return options is None or bool(getattr(options, "autogenerate", False))


def _refuse(error: AlembicSetupError) -> NoReturn:
    # Alembic's command line prints a CommandError as one "FAILED:" line and
    # exits 1; any other exception would be a traceback.
    from alembic.util import CommandError

    raise CommandError(str(error)) from error
