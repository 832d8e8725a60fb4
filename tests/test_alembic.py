"""queuert's Alembic branch, run the way an application runs it (tests/alembic_app).

Every database test runs on SQLite and on PostgreSQL, each in a throwaway
database of its own.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.runtime.environment import NameFilterParentNames, NameFilterType
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    create_engine,
    inspect,
    make_url,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

import queuert_sa
from queuert_sa.alembic import (
    BRANCH_LABEL,
    VERSION_LOCATION,
    add_version_location,
    exclude_queuert_tables,
    include_object,
)
from queuert_sa.models import create_models

from .alembic_app.models import Base as AppBase
from .conftest import POSTGRES_URL, service_unavailable

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = Path(__file__).resolve().parent / "alembic_app"
APP_REVISION = "ef0505469c4b"
QUEUERT_BASE_REVISION = "2fac216ef489"
QUEUERT_REVISION = "a8d2c6e4f1b9"  # the head of the queuert branch
QUEUERT_TABLES = {"queuert_job", "queuert_job_blocker", "queuert_rate_bucket"}
QUEUERT_INDEXES = {
    "queuert_job": {
        "queuert_chain_index_idx",
        "queuert_job_acquisition_idx",
        "queuert_job_expired_lease_idx",
        "queuert_job_deduplication_idx",
        "queuert_job_open_deduplication_idx",
        "queuert_chain_listing_idx",
        "queuert_chain_listing_type_name_idx",
        "queuert_job_listing_idx",
        "queuert_job_listing_status_idx",
        "queuert_job_listing_type_name_idx",
        "queuert_job_ended_idx",
    },
    "queuert_job_blocker": {"queuert_job_blocker_chain_idx"},
    "queuert_rate_bucket": set(),
}


@dataclass
class Server:
    """Hands out empty databases of one kind and drops them afterwards."""

    kind: str
    tmp_path: Path
    admin: Engine | None = None
    created: list[str] = field(default_factory=list[str])

    def new_database(self) -> str:
        if self.admin is None:
            path = self.tmp_path / f"db{len(self.created)}.sqlite"
            self.created.append(str(path))
            return f"sqlite:///{path}"
        name = f"queuert_alembic_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "sqlite":
        yield Server("sqlite", tmp_path)
        return
    admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect():
            pass
    except OperationalError as exc:
        admin.dispose()
        service_unavailable("PostgreSQL", f"{POSTGRES_URL}: {exc}")
    srv = Server("postgresql", tmp_path, admin)
    try:
        yield srv
    finally:
        srv.drop_all()


@pytest.fixture
def url(server: Server) -> str:
    return server.new_database()


def app_config(
    url: str,
    *,
    ini: Path = APP_DIR / "alembic.ini",
    table_prefix: str | None = None,
    schema: str | None = None,
) -> Config:
    """The sample app's Alembic config, the way a project drives Alembic from Python."""
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("sqlalchemy.url", url)
    if table_prefix is not None:
        cfg.set_main_option("queuert_sa.table_prefix", table_prefix)
    if schema is not None:
        cfg.set_main_option("queuert_sa.schema", schema)
    # The ini also lists "queuert_sa:_alembic_migrations", which only exists in a
    # wheel install; this finds the revisions in a source checkout too.
    add_version_location(cfg)
    return cfg


@contextmanager
def connect(url: str) -> Generator[Connection, None, None]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def table_names(url: str, schema: str | None = None) -> set[str]:
    with connect(url) as conn:
        return set(inspect(conn).get_table_names(schema=schema))


def current_heads(url: str) -> set[str]:
    with connect(url) as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def diff_against(url: str, metadata: MetaData, schema: str | None = None) -> list[Any]:
    """Alembic's autogenerate diff between the database and ``metadata``'s tables."""
    names = {table.name for table in metadata.tables.values()}

    def include_name(
        name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames
    ) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name in names
        return True

    with connect(url) as conn:
        is_sqlite = conn.dialect.name == "sqlite"
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_schemas": schema is not None,
                "include_name": include_name,
            },
        )
        diff = list(compare_metadata(context, metadata))
    if is_sqlite:
        # SQLite's reflection loses an index column's DESC, so autogenerate
        # sees the acquisition index (priority DESC) as changed; reflect()
        # compares its DDL instead.
        diff = [
            d
            for d in diff
            if not (d[0] in ("add_index", "remove_index") and "acquisition" in d[1].name)
        ]
    return diff


def reflect(url: str, tables: set[str], schema: str | None = None) -> dict[str, Any]:
    """Everything the inspector sees of ``tables``, in comparable form.

    Also covers what autogenerate does not compare: constraint names, CHECK
    constraints and the WHERE clauses of partial indexes.
    """
    with connect(url) as conn:
        insp = inspect(conn)
        snapshot: dict[str, Any] = {}
        for table in sorted(tables):
            snapshot[table] = {
                "columns": [
                    (
                        c["name"],
                        c["type"].compile(dialect=conn.dialect),
                        c["nullable"],
                        c.get("default"),
                    )
                    for c in insp.get_columns(table, schema)
                ],
                "pk": insp.get_pk_constraint(table, schema),
                "fks": sorted(
                    (
                        fk["name"] or "",
                        tuple(fk["constrained_columns"]),
                        fk["referred_schema"] or "",
                        fk["referred_table"],
                        tuple(fk["referred_columns"]),
                    )
                    for fk in insp.get_foreign_keys(table, schema)
                ),
                "indexes": sorted(
                    (
                        ix["name"] or "",
                        tuple(str(c) for c in ix["column_names"]),
                        bool(ix["unique"]),
                        tuple(
                            sorted((k, str(v)) for k, v in ix.get("dialect_options", {}).items())
                        ),
                    )
                    for ix in insp.get_indexes(table, schema)
                ),
                "uniques": sorted(
                    (uq["name"] or "", tuple(uq["column_names"]))
                    for uq in insp.get_unique_constraints(table, schema)
                ),
                "checks": sorted(
                    (ck["name"] or "", ck["sqltext"])
                    for ck in insp.get_check_constraints(table, schema)
                ),
                "index_ddl": index_ddl(conn, table, schema),
            }
        return snapshot


def index_ddl(conn: Connection, table: str, schema: str | None) -> list[str]:
    """The DDL of ``table``'s indexes as the server keeps it (column order and DESC included)."""
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
            ),
            {"t": table},
        )
    else:
        rows = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE tablename = :t AND schemaname = :s"),
            {"t": table, "s": schema or "public"},
        )
    return sorted(" ".join(str(r[0]).split()) for r in rows)


def models_reference(server: Server, metadata: MetaData, schema: str | None = None) -> str:
    """A database whose queuert tables come from the models' ``create_all``."""
    reference = server.new_database()
    engine = create_engine(reference, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            if schema:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            metadata.create_all(conn)
    finally:
        engine.dispose()
    return reference


# -- (a) upgrade heads -------------------------------------------------------


def test_upgrade_heads_creates_app_and_queuert_tables(url: str) -> None:
    command.upgrade(app_config(url), "heads")

    assert table_names(url) == {"alembic_version", "shop_order", *QUEUERT_TABLES}
    assert current_heads(url) == {APP_REVISION, QUEUERT_REVISION}


def test_queuert_branch_is_labelled_and_independent() -> None:
    script = ScriptDirectory.from_config(app_config("sqlite://"))

    base = script.get_revision(BRANCH_LABEL)  # the revision carrying the label
    assert base is not None
    assert base.revision == QUEUERT_BASE_REVISION
    assert base.branch_labels == {BRANCH_LABEL}
    assert base.down_revision is None
    assert base.dependencies is None
    assert Path(base.path).parent == Path(VERSION_LOCATION)
    assert set(script.get_heads()) == {APP_REVISION, QUEUERT_REVISION}


# -- (b) the migrated schema is the models' schema ---------------------------


def test_queuert_tables_match_the_models(server: Server, url: str) -> None:
    command.upgrade(app_config(url), "heads")

    assert diff_against(url, queuert_sa.metadata) == []
    with connect(url) as conn:
        insp = inspect(conn)
        for table, expected in QUEUERT_INDEXES.items():
            assert {ix["name"] for ix in insp.get_indexes(table)} == expected
    reference = models_reference(server, queuert_sa.metadata)
    assert reflect(url, QUEUERT_TABLES) == reflect(reference, QUEUERT_TABLES)


def blocker_column_options(url: str, table: str, schema: str | None = None) -> list[str]:
    """PostgreSQL's per-column options of ``blocked_by_chain_id`` (``n_distinct=-1``)."""
    with connect(url) as conn:
        found = conn.execute(
            text(
                "SELECT attoptions FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                "AND attname = 'blocked_by_chain_id'"
            ),
            {"t": f'"{schema}"."{table}"' if schema else f'"{table}"'},
        ).scalar_one()
    return [option for option in found or [] if option.startswith("n_distinct")]


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)  # a PostgreSQL planner setting
@pytest.mark.parametrize("custom", [False, True])
def test_blocker_lookups_stay_on_the_index_however_they_were_made(
    server: Server, url: str, custom: bool
) -> None:
    """The migration and ``create_all`` both declare the blocker chains distinct on
    PostgreSQL (else a chain many jobs wait on makes every completion scan the table),
    and the downgrade takes it back."""
    prefix, schema = ("myapp_", "jobs") if custom else ("queuert_", None)
    if schema:
        with connect(url) as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.commit()
    cfg = app_config(url, table_prefix=prefix, schema=schema) if custom else app_config(url)
    command.upgrade(cfg, "heads")
    table = f"{prefix}job_blocker"
    assert blocker_column_options(url, table, schema) == ["n_distinct=-1"]
    models = create_models(table_prefix=prefix, schema=schema)
    reference = models_reference(server, models.metadata, schema)
    assert blocker_column_options(reference, table, schema) == ["n_distinct=-1"]
    command.downgrade(cfg, "7c41d9e0b5a2")
    assert blocker_column_options(url, table, schema) == []


def test_upgrade_from_the_first_revision_backfills_continuation_keys(url: str) -> None:
    config = app_config(url)
    command.upgrade(config, QUEUERT_BASE_REVISION)
    root, step = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    row = {"status": "pending", "created_at": now, "scheduled_at": now, "attempt": 0}
    with connect(url) as conn, conn.begin():
        job = sa.table(
            "queuert_job",
            *(sa.column(c) for c in ("id", "type_name", "chain_id", "chain_type_name")),
            *(sa.column(c) for c in ("chain_index", "deduplication_key", "status", "attempt")),
            sa.column("created_at", sa.DateTime(timezone=True)),
            sa.column("scheduled_at", sa.DateTime(timezone=True)),
        )
        conn.execute(
            job.insert(),
            [
                {**row, "id": str(root), "type_name": "a", "chain_id": str(root),
                 "chain_type_name": "a", "chain_index": 0, "deduplication_key": "k"},
                {**row, "id": str(step), "type_name": "b", "chain_id": str(root),
                 "chain_type_name": "a", "chain_index": 1, "deduplication_key": None},
            ],
        )  # fmt: skip

    command.upgrade(config, "heads")
    with connect(url) as conn:
        keys = conn.execute(sa.text("SELECT chain_index, deduplication_key FROM queuert_job"))
        assert sorted(keys.all()) == [(0, "k"), (1, "k")]

    command.downgrade(config, QUEUERT_BASE_REVISION)
    with connect(url) as conn:
        keys = conn.execute(sa.text("SELECT chain_index, deduplication_key FROM queuert_job"))
        assert sorted(keys.all()) == [(0, "k"), (1, None)]
        names = {ix["name"] for ix in inspect(conn).get_indexes("queuert_job")}
    assert "queuert_job_open_deduplication_idx" not in names
    assert "queuert_chain_listing_idx" in names


def test_app_naming_convention_does_not_rename_queuert_constraints(url: str) -> None:
    # The sample app's convention would turn "ck_queuert_job_status" into
    # "app_ck_queuert_job_ck_queuert_job_status" if the revision did not use op.f().
    assert str(AppBase.metadata.naming_convention.get("ck")).startswith("app_")
    command.upgrade(app_config(url), "heads")

    with connect(url) as conn:
        insp = inspect(conn)
        assert [ck["name"] for ck in insp.get_check_constraints("queuert_job")] == [
            "ck_queuert_job_status"
        ]
        assert insp.get_pk_constraint("queuert_job")["name"] == "pk_queuert_job"


# -- (c) the app's autogenerate leaves queuert's tables alone ----------------


def test_app_autogenerate_ignores_queuert_tables(url: str) -> None:
    cfg = app_config(url)
    command.upgrade(cfg, "heads")

    # Runs the sample env.py (with exclude_queuert_tables) and raises on any diff.
    command.check(cfg)

    with connect(url) as conn:
        without_hook = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), AppBase.metadata
        )
        with_hook = compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include_object}
            ),
            AppBase.metadata,
        )
    dropped = {diff[1].name for diff in without_hook if diff[0] == "remove_table"}
    assert dropped == QUEUERT_TABLES  # what the hook is there to prevent
    assert with_hook == []


def test_autogenerate_still_sees_app_changes(url: str) -> None:
    command.upgrade(app_config(url), "heads")
    app_metadata = MetaData(naming_convention=AppBase.metadata.naming_convention)
    for table in AppBase.metadata.tables.values():
        table.to_metadata(app_metadata)
    Table("shop_customer", app_metadata, Column("id", Integer, primary_key=True))

    with connect(url) as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        diffs = compare_metadata(context, app_metadata)
    assert [(diff[0], diff[1].name) for diff in diffs] == [("add_table", "shop_customer")]


def test_new_app_revision_extends_the_app_branch(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    cfg = app_config(url, ini=app_dir / "alembic.ini")
    command.upgrade(cfg, "heads")

    with pytest.raises(CommandError, match=r"two heads .* --head app@head") as refused:
        command.revision(cfg, message="nothing", autogenerate=True)
    # From Python the typed error is the CommandError's cause, with the command to run.
    assert isinstance(refused.value.__cause__, queuert_sa.MisplacedRevisionError)
    assert refused.value.__cause__.command == (
        "alembic revision --autogenerate -m nothing --head app@head"
    )
    assert [p.name for p in (app_dir / "versions").glob("*.py")] == [
        f"{APP_REVISION}_create_shop_order.py"
    ]
    script = command.revision(cfg, message="nothing", autogenerate=True, head="app@head")

    assert not isinstance(script, list)
    assert script is not None
    assert Path(script.path).parent == app_dir / "versions"
    assert script.down_revision == APP_REVISION


def test_the_apps_own_revision_hook_runs_first_and_its_result_is_checked(tmp_path: Path) -> None:
    app_dir = tmp_path / "app"
    shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    env_py = app_dir / "env.py"
    source = env_py.read_text()
    assert source.count("process_revision_directives,\n)") == 1
    # The app's hook points every new revision at its branch; the guard then lets it through.
    env_py.write_text(
        source.replace("process_revision_directives,\n)", "refuse_misplaced_revisions,\n)").replace(
            "target_metadata = Base.metadata\n",
            "target_metadata = Base.metadata\n"
            "def _on_app_branch(context, revision, directives):\n"
            "    directives[0].head = 'app@head'\n"
            "process_revision_directives = refuse_misplaced_revisions(also=_on_app_branch)\n",
        )
    )
    cfg = app_config(f"sqlite:///{tmp_path / 'app.sqlite'}", ini=app_dir / "alembic.ini")
    command.upgrade(cfg, "heads")
    script = command.revision(cfg, message="nothing", autogenerate=True)
    assert not isinstance(script, list)
    assert script is not None
    assert script.down_revision == APP_REVISION


# -- (d) downgrade of queuert's branch ---------------------------------------


def test_downgrade_queuert_branch_keeps_app_tables(url: str) -> None:
    cfg = app_config(url)
    command.upgrade(cfg, "heads")
    with connect(url) as conn:
        conn.execute(text("INSERT INTO shop_order (id, customer, quantity) VALUES (1, 'ada', 2)"))
        conn.commit()

    command.downgrade(cfg, f"{BRANCH_LABEL}@base")

    assert table_names(url) == {"alembic_version", "shop_order"}
    assert current_heads(url) == {APP_REVISION}
    with connect(url) as conn:
        assert conn.execute(text("SELECT customer FROM shop_order")).scalar_one() == "ada"

    command.upgrade(cfg, "heads")
    assert table_names(url) == {"alembic_version", "shop_order", *QUEUERT_TABLES}


def test_stamp_tables_made_by_create_all(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        queuert_sa.metadata.create_all(engine)
    finally:
        engine.dispose()
    cfg = app_config(url)

    command.stamp(cfg, f"{BRANCH_LABEL}@head")
    command.upgrade(cfg, "heads")

    assert current_heads(url) == {APP_REVISION, QUEUERT_REVISION}
    assert table_names(url) == {"alembic_version", "shop_order", *QUEUERT_TABLES}
    assert diff_against(url, queuert_sa.metadata) == []


# -- (e) custom table prefix and schema --------------------------------------


def test_custom_prefix_and_schema(server: Server, url: str) -> None:
    schema = "jobs" if server.kind == "postgresql" else None
    if schema:
        with connect(url) as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.commit()
    cfg = app_config(url, table_prefix="myapp_", schema=schema)

    command.upgrade(cfg, "heads")

    tables = {"myapp_job", "myapp_job_blocker"}
    assert tables <= table_names(url, schema)
    assert not QUEUERT_TABLES & (table_names(url) | table_names(url, schema))
    models = create_models(table_prefix="myapp_", schema=schema)
    assert diff_against(url, models.metadata, schema) == []
    reference = models_reference(server, models.metadata, schema)
    assert reflect(url, tables, schema) == reflect(reference, tables, schema)
    command.check(cfg)  # the sample env.py passes the prefix to exclude_queuert_tables

    command.downgrade(cfg, f"{BRANCH_LABEL}@base")
    assert not tables & table_names(url, schema)
    assert current_heads(url) == {APP_REVISION}


def test_custom_prefix_is_validated(tmp_path: Path) -> None:
    cfg = app_config(f"sqlite:///{tmp_path / 'x.sqlite'}", table_prefix="my-app_")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        command.upgrade(cfg, f"{BRANCH_LABEL}@head")


# -- offline (--sql) mode ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "json_type"), [("sqlite://", "JSON"), ("postgresql+psycopg://", "JSONB")]
)
def test_offline_sql_renders_the_tables(url: str, json_type: str) -> None:
    buffer = io.StringIO()
    cfg = app_config(url)
    cfg.output_buffer = buffer

    command.upgrade(cfg, f"{BRANCH_LABEL}@head", sql=True)

    sql = buffer.getvalue()
    assert "CREATE TABLE queuert_job (" in sql
    assert "CREATE TABLE queuert_job_blocker (" in sql
    assert f"input {json_type}," in sql
    assert (
        "CREATE INDEX queuert_job_acquisition_idx ON queuert_job "
        "(type_name, priority DESC, scheduled_at, id) WHERE status = 'pending'"
    ) in sql
    assert "shop_order" not in sql


# -- the helpers -------------------------------------------------------------


def test_version_location_of_a_source_checkout() -> None:
    assert Path(VERSION_LOCATION) == ROOT / "alembic_migrations"
    assert (Path(VERSION_LOCATION) / f"{QUEUERT_BASE_REVISION}_queuert_job_tables.py").is_file()


def test_include_object_matches_exact_table_names() -> None:
    metadata = MetaData()
    tables = {
        name: Table(name, metadata, Column("id", Integer, primary_key=True), Column("n", Integer))
        for name in [
            "queuert_job",
            "queuert_job_blocker",
            "queuert_jobs",
            "myapp_job",
            "myapp_user",
            "shop_order",
        ]
    }
    index = Index("ix_queuert_job_n", tables["queuert_job"].c.n)

    def included(hook: Any, name: str) -> bool:
        return bool(hook(tables[name], name, "table", True, None))

    assert not included(include_object, "queuert_job")
    assert not included(include_object, "queuert_job_blocker")
    assert not include_object(tables["queuert_job"].c.n, "n", "column", True, None)
    assert not include_object(index, index.name, "index", True, None)
    for name in ["queuert_jobs", "myapp_job", "myapp_user", "shop_order"]:
        assert included(include_object, name)
    assert include_object(tables["shop_order"].c.n, "n", "column", True, None)

    custom = exclude_queuert_tables(table_prefix="myapp_")
    assert not included(custom, "myapp_job")
    assert included(custom, "myapp_user")
    assert included(custom, "queuert_job")


def test_exclude_queuert_tables_composes_with_the_apps_hook() -> None:
    metadata = MetaData()
    job = Table("queuert_job", metadata, Column("id", Integer, primary_key=True))
    legacy = Table("legacy_thing", metadata, Column("id", Integer, primary_key=True))
    order = Table("shop_order", metadata, Column("id", Integer, primary_key=True))
    seen: list[str | None] = []

    def skip_legacy(
        obj: Any, name: str | None, type_: Any, reflected: bool, compare_to: Any
    ) -> bool:
        seen.append(name)
        return name != "legacy_thing"

    hook = exclude_queuert_tables(also=skip_legacy)
    assert not hook(job, "queuert_job", "table", True, None)
    assert not hook(legacy, "legacy_thing", "table", True, None)
    assert hook(order, "shop_order", "table", True, None)
    assert seen == ["legacy_thing", "shop_order"]


def test_add_version_location_keeps_the_default_versions_dir() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "/srv/app/migrations")

    add_version_location(cfg)
    add_version_location(cfg)

    assert cfg.get_main_option("path_separator") == "newline"
    assert cfg.get_version_locations_list() == ["/srv/app/migrations/versions", VERSION_LOCATION]


def test_add_version_location_uses_the_configured_separator() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", "/srv/app/migrations")
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", f"/srv/a{os.pathsep}/srv/b")

    add_version_location(cfg)
    add_version_location(cfg)

    assert cfg.get_main_option("version_locations") == os.pathsep.join(
        ["/srv/a", "/srv/b", VERSION_LOCATION]
    )


def test_importing_the_helpers_does_not_import_alembic() -> None:
    code = "import sys, queuert_sa.alembic; sys.exit('alembic' in sys.modules)"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, cwd=ROOT)


# -- the wheel ---------------------------------------------------------------

_WHEEL_CHECK = """
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

import queuert_sa
from queuert_sa.alembic import VERSION_LOCATION, add_version_location

site, ini, url = sys.argv[1:]
assert Path(queuert_sa.__file__).is_relative_to(site), queuert_sa.__file__
assert VERSION_LOCATION == str(Path(site, "queuert_sa", "_alembic_migrations")), VERSION_LOCATION

cfg = Config(ini)
cfg.set_main_option("sqlalchemy.url", url)
before = cfg.get_main_option("version_locations")
add_version_location(cfg)  # "queuert_sa:_alembic_migrations" in the ini is the same directory
assert cfg.get_main_option("version_locations") == before

command.upgrade(cfg, "heads")  # the ini alone finds queuert's revisions
engine = create_engine(url, poolclass=NullPool)
names = set(inspect(engine).get_table_names())
engine.dispose()
assert {"queuert_job", "queuert_job_blocker", "shop_order"} <= names, names
"""


def test_wheel_ships_the_revisions(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling")
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
            str(tmp_path / "dist"),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("queuert_sa-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    revisions = {p.name for p in (ROOT / "alembic_migrations").glob("*.py")}
    assert f"{QUEUERT_BASE_REVISION}_queuert_job_tables.py" in revisions
    assert {f"queuert_sa/_alembic_migrations/{name}" for name in revisions} <= names
    assert not [n for n in names if n.startswith("alembic_migrations/") or "__pycache__" in n]

    # Installed from the wheel, the sample app's alembic.ini works as written.
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    url = f"sqlite:///{tmp_path / 'wheel.sqlite'}"
    subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-P",
            "-c",
            _WHEEL_CHECK,
            str(site),
            str(APP_DIR / "alembic.ini"),
            url,
        ],
        check=True,
        cwd=tmp_path,
        env=env,
    )

    # The alembic command line with that ini (sqlalchemy.url added), as docs/alembic.md shows.
    ini = tmp_path / "alembic.ini"
    ini.write_text(
        (APP_DIR / "alembic.ini").read_text().replace("%(here)s", str(APP_DIR))
        + f"sqlalchemy.url = sqlite:///{tmp_path / 'cli.sqlite'}\n"
    )

    def alembic(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-W", "error", "-P", "-m", "alembic", "-c", str(ini), *args],
            check=True,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        ).stdout

    heads = alembic("heads")
    assert f"{QUEUERT_REVISION} (queuert) (head)" in heads
    assert f"{APP_REVISION} (app) (head)" in heads
    alembic("upgrade", "heads")
    alembic("check")
    alembic("downgrade", "queuert@base")
    assert table_names(f"sqlite:///{tmp_path / 'cli.sqlite'}") == {"alembic_version", "shop_order"}
