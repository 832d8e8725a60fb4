"""Alembic integration: queuert's revisions, and the hooks of your ``env.py``.

queuert_sa ships its tables as Alembic revisions on their own branch
(:data:`BRANCH_LABEL`, ``"queuert"``) in :data:`VERSION_LOCATION`. Your project
adds that directory to its ``version_locations`` and runs
``alembic upgrade heads``. Your ``env.py`` calls
:func:`check_version_locations` (queuert's branch must not vanish silently) and
passes :func:`include_object` (or :func:`exclude_queuert_tables`) and
:func:`process_revision_directives` (or :func:`refuse_misplaced_revisions`) to
``context.configure``, so that ``alembic revision --autogenerate`` never
proposes to drop queuert's tables, and never writes a revision of yours into
queuert's directory or onto its branch.

The revisions read two main options of the Alembic config:
``queuert_sa.table_prefix`` (default ``queuert_``) and ``queuert_sa.schema``
(default: the connection's default schema). See ``docs/alembic.md``.

Importing this module does not import Alembic (an optional extra,
``queuert_sa[alembic]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Table
from sqlalchemy.sql.schema import SchemaItem

from ._alembic_checks import (
    check_version_locations,
    process_revision_directives,
    refuse_misplaced_revisions,
)
from ._alembic_locations import VERSION_LOCATION, resolve_location
from .models import DEFAULT_TABLE_PREFIX

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.environment import IncludeObjectFn, NameFilterType

__all__ = [
    "BRANCH_LABEL",
    "TABLE_SUFFIXES",
    "VERSION_LOCATION",
    "add_version_location",
    "check_version_locations",
    "exclude_queuert_tables",
    "include_object",
    "process_revision_directives",
    "refuse_misplaced_revisions",
]

#: Branch label of queuert's revisions: ``alembic upgrade queuert@head``,
#: ``alembic downgrade queuert@base``.
BRANCH_LABEL = "queuert"

#: Names of queuert's tables after the table prefix (``queuert_job``, ...).
TABLE_SUFFIXES: tuple[str, ...] = ("job", "job_blocker", "rate_bucket")


def exclude_queuert_tables(
    *, table_prefix: str = DEFAULT_TABLE_PREFIX, also: IncludeObjectFn | None = None
) -> IncludeObjectFn:
    """Return an ``include_object`` hook for ``context.configure`` that skips queuert's tables.

    Autogenerate then neither proposes to drop queuert's tables (they are not
    in your ``MetaData``) nor to alter them; queuert's own branch manages them.
    Tables are matched by exact name (``{table_prefix}job``,
    ``{table_prefix}job_blocker``, ``{table_prefix}rate_bucket``) in any schema, so other tables starting
    with the prefix stay yours. ``also`` is your own ``include_object``, if
    any: an object is included when it is not queuert's and ``also`` includes
    it.
    """
    names = frozenset(f"{table_prefix}{suffix}" for suffix in TABLE_SUFFIXES)

    def include_object(
        obj: SchemaItem,
        name: str | None,
        type_: NameFilterType,
        reflected: bool,
        compare_to: SchemaItem | None,
    ) -> bool:
        if _table_name(obj) in names:
            return False
        return also is None or also(obj, name, type_, reflected, compare_to)

    return include_object


def _table_name(obj: object) -> str | None:
    # Columns, indexes and constraints are judged by the table they belong to.
    if isinstance(obj, Table):
        return obj.name
    owner = getattr(obj, "table", None)
    return owner.name if isinstance(owner, Table) else None


#: ``include_object`` hook for the default table prefix; see :func:`exclude_queuert_tables`.
include_object: IncludeObjectFn = exclude_queuert_tables()


_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}


def add_version_location(config: Config) -> None:
    """Add :data:`VERSION_LOCATION` to ``config``'s ``version_locations``.

    For projects that drive Alembic from Python (``alembic.command.upgrade(config,
    "heads")``). Does nothing if the directory is already listed (as a path or
    as ``queuert_sa:_alembic_migrations``). A config without
    ``version_locations`` keeps Alembic's default ``<script_location>/versions``
    as its first entry. The list is written back with the config's
    ``path_separator``; a config without one gets ``path_separator = newline``.
    Requires Alembic 1.16 or later.
    """
    if not os.path.isdir(VERSION_LOCATION):
        raise FileNotFoundError(
            f"queuert_sa's Alembic revisions are missing from {VERSION_LOCATION}; "
            "reinstall queuert_sa"
        )
    locations = list(config.get_version_locations_list() or ())
    if not locations:
        script_location = config.get_alembic_option("script_location")
        if not isinstance(script_location, str):
            raise ValueError("the Alembic config has neither version_locations nor script_location")
        locations = [f"{script_location}/versions"]
    target = Path(VERSION_LOCATION).resolve()
    if any(resolve_location(location) == target for location in locations):
        return
    locations.append(VERSION_LOCATION)

    separator_name = config.get_main_option("path_separator")
    if separator_name is None:
        separator_name = "newline"
        config.set_main_option("path_separator", separator_name)
    separator = _SEPARATORS.get(separator_name)
    if separator is None:
        raise ValueError(f"unknown path_separator {separator_name!r} in the Alembic config")
    for location in locations:
        if separator in location:
            raise ValueError(
                f"version location {location!r} contains the path separator {separator!r}; "
                "set path_separator = newline in the Alembic config"
            )
    config.set_main_option("version_locations", separator.join(locations))
