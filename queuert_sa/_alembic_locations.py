"""Where queuert's Alembic revisions are, and how Alembic resolves a version location."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

#: How ``queuert_sa:_alembic_migrations`` is written in ``version_locations``.
PACKAGE_LOCATION = "queuert_sa:_alembic_migrations"


def _find_version_location() -> str:
    package_dir = Path(__file__).resolve().parent
    # A wheel carries the revisions inside the package; an editable install
    # (a source checkout) has them in the project's top-level directory.
    shipped = package_dir / "_alembic_migrations"
    if shipped.is_dir():
        return str(shipped)
    return str(package_dir.parent / "alembic_migrations")


#: Absolute path of the directory holding queuert's revisions; add it to your
#: Alembic ``version_locations``.
VERSION_LOCATION: str = _find_version_location()


def resolve_location(location: str) -> Path:
    """Resolve a version location the way Alembic does (``package:path`` or a path)."""
    if not os.path.isabs(location) and ":" in location:
        package, *parts = location.split(":")
        try:
            return Path(str(resources.files(package)), *parts).resolve()
        except ModuleNotFoundError:
            return Path(location)
    return Path(location).resolve()


def is_queuert_location(location: str | os.PathLike[str]) -> bool:
    return resolve_location(os.fspath(location)) == Path(VERSION_LOCATION).resolve()
