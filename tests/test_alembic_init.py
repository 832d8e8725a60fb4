"""docs/alembic.md followed step by step in a fresh ``alembic init`` project.

queuert_sa is installed from its wheel (as ``pip install queuert_sa`` would),
so that ``queuert_sa:_alembic_migrations`` in ``alembic.ini`` is the shipped
directory, and every step is the real ``alembic`` command in a subprocess, on
SQLite and on PostgreSQL (a scratch database of its own).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

import queuert_sa as q
from queuert_sa.alembic import VERSION_LOCATION, check_version_locations

from .conftest import POSTGRES_URL, service_unavailable

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "alembic.md").read_text()
QUEUERT_HEAD = "a8d2c6e4f1b9"

# The edits docs/alembic.md tells you to make, each checked to be in the page.
INI_SEPARATOR = "path_separator = newline"
INI_LOCATIONS = """version_locations =
    %(here)s/migrations/versions
    queuert_sa:_alembic_migrations"""
INI_REVISION_ENVIRONMENT = "revision_environment = true"
ENV_IMPORTS = """from queuert_sa.alembic import check_version_locations, include_object, process_revision_directives

check_version_locations(config)"""
ENV_CONFIGURE = (
    "include_object=include_object, process_revision_directives=process_revision_directives"
)
FIRST_REVISION = (
    "alembic revision --autogenerate -m 'add orders' --head base --branch-label app "
    "--version-path migrations/versions"
)
NEXT_REVISION = "alembic revision --autogenerate -m 'add notes' --head app@head"

MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass
"""
ORDER_MODEL = """

class Order(Base):
    __tablename__ = "shop_order"
    id: Mapped[int] = mapped_column(primary_key=True)
"""


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """queuert_sa installed from its wheel into a directory of its own."""
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling")
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp / "dist"),
        ],
        check=True,
        cwd=tmp,
    )
    (wheel,) = (tmp / "dist").glob("queuert_sa-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp / "site")
    return tmp / "site"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.sqlite'}"
        return
    admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"queuert_alembic_init_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _replace_once(text_: str, old: str, new: str) -> str:
    assert text_.count(old) == 1, old
    return text_.replace(old, new)


class Project:
    """A fresh ``alembic init migrations`` project, edited as docs/alembic.md says."""

    def __init__(self, path: Path, site: Path, url: str) -> None:
        self.path = path
        path.mkdir()
        self.env = {**os.environ, "PYTHONPATH": str(site)}
        self.alembic("init", "migrations")
        (path / "myapp").mkdir()
        (path / "myapp" / "__init__.py").write_text("")
        (path / "myapp" / "models.py").write_text(MODELS)
        ini = (path / "alembic.ini").read_text()
        ini = _replace_once(ini, "path_separator = os\n", f"{INI_SEPARATOR}\n{INI_LOCATIONS}\n")
        ini = _replace_once(ini, "# revision_environment = false", INI_REVISION_ENVIRONMENT)
        ini = _replace_once(ini, "driver://user:pass@localhost/dbname", url.replace("%", "%%"))
        (path / "alembic.ini").write_text(ini)
        env_py = (path / "migrations" / "env.py").read_text()
        env_py = _replace_once(
            env_py,
            "target_metadata = None\n",
            f"from myapp.models import Base\n{ENV_IMPORTS}\ntarget_metadata = Base.metadata\n",
        )
        assert env_py.count("target_metadata=target_metadata") == 2  # offline and online
        env_py = env_py.replace(
            "target_metadata=target_metadata", f"target_metadata=target_metadata, {ENV_CONFIGURE}"
        )
        (path / "migrations" / "env.py").write_text(env_py)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        # -P: the project's directory comes from prepend_sys_path, not from the cwd
        return subprocess.run(
            [sys.executable, "-W", "error", "-P", "-m", "alembic", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def alembic(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def revisions(self) -> list[Path]:
        return sorted((self.path / "migrations" / "versions").glob("*.py"))


def test_the_documented_edits_are_in_the_docs() -> None:
    for snippet in (INI_SEPARATOR, INI_LOCATIONS, INI_REVISION_ENVIRONMENT, ENV_IMPORTS):
        assert snippet in DOCS or textwrap.indent(snippet, "    ") in DOCS  # in a list item
    assert ENV_CONFIGURE.replace(", ", ",\n    ") in DOCS
    assert FIRST_REVISION.replace("'add orders'", '"add orders"') in DOCS
    assert NEXT_REVISION.replace("'add notes'", '"add notes"') in DOCS


def test_a_fresh_alembic_init_project_follows_the_docs(
    tmp_path: Path, wheel_site: Path, database_url: str
) -> None:
    project = Project(tmp_path / "proj", wheel_site, database_url)
    shipped = sorted(p.name for p in (wheel_site / "queuert_sa" / "_alembic_migrations").iterdir())

    project.alembic("upgrade", "heads")
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        assert {"queuert_job", "queuert_job_blocker"} <= set(inspect(engine).get_table_names())

        # The app's first model; a plain revision would follow queuert's head into site-packages.
        (project.path / "myapp" / "models.py").write_text(MODELS + ORDER_MODEL)
        refused = project.run("revision", "--autogenerate", "-m", "add orders")
        assert refused.returncode != 0
        assert (
            f"FAILED: Refused to write this revision: it would follow queuert's revision {QUEUERT_HEAD}"
            in refused.stdout + refused.stderr
        )
        assert FIRST_REVISION in refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr
        assert (
            sorted(p.name for p in (wheel_site / "queuert_sa" / "_alembic_migrations").iterdir())
            == shipped
        )
        assert project.revisions() == []

        # The command the refusal gives.
        project.alembic(*shlex.split(FIRST_REVISION)[1:])
        (first,) = project.revisions()
        source = first.read_text()
        assert "op.create_table('shop_order'" in source
        assert "queuert_" not in source  # queuert's tables are left alone
        assert "branch_labels: Union[str, Sequence[str], None] = ('app',)" in source
        project.alembic("upgrade", "heads")
        assert "shop_order" in inspect(engine).get_table_names()
        heads = project.alembic("heads")
        assert f"{QUEUERT_HEAD} (queuert) (head)" in heads
        assert "(app) (head)" in heads

        # Later revisions: with two heads a plain one is refused with --head app@head.
        refused = project.run("revision", "--autogenerate", "-m", "add notes")
        assert refused.returncode != 0
        assert NEXT_REVISION in refused.stdout + refused.stderr
        project.alembic(*shlex.split(NEXT_REVISION)[1:])
        assert len(project.revisions()) == 2
        assert (
            sorted(p.name for p in (wheel_site / "queuert_sa" / "_alembic_migrations").iterdir())
            == shipped
        )
    finally:
        engine.dispose()


def test_path_separator_os_is_refused_instead_of_losing_queuerts_branch(
    tmp_path: Path, wheel_site: Path
) -> None:
    project = Project(tmp_path / "proj", wheel_site, f"sqlite:///{tmp_path / 'app.sqlite'}")
    ini = (project.path / "alembic.ini").read_text()
    ini = _replace_once(
        ini,
        f"\n{INI_SEPARATOR}\n{INI_LOCATIONS}\n",
        "\npath_separator = os\n"
        "version_locations = %(here)s/migrations/versions:queuert_sa:_alembic_migrations\n",
    )
    (project.path / "alembic.ini").write_text(ini)
    failed = project.run("upgrade", "heads")
    assert failed.returncode != 0
    assert "change that line to 'path_separator = newline'" in failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr


def _config(separator: str, locations: str) -> Config:
    config = Config()
    config.set_main_option("path_separator", separator)
    config.set_main_option("version_locations", locations)
    return config


def test_check_version_locations_names_the_line_to_change() -> None:
    check_version_locations(_config("newline", f"/srv/app/versions\n{VERSION_LOCATION}"))

    with pytest.raises(q.VersionLocationMissingError, match="path_separator = newline") as split:
        check_version_locations(_config(":", "/srv/app/versions:queuert_sa:_alembic_migrations"))
    assert split.value.locations == ("/srv/app/versions", "queuert_sa", "_alembic_migrations")

    with pytest.raises(q.VersionLocationMissingError, match="Add 'queuert_sa:_alembic_migrations'"):
        check_version_locations(_config("newline", "/srv/app/versions"))

    if not (Path(q.__file__).parent / "_alembic_migrations").is_dir():  # an editable install
        with pytest.raises(q.VersionLocationMissingError, match="installed from a source checkout"):
            check_version_locations(_config("newline", "/srv/v\nqueuert_sa:_alembic_migrations"))
