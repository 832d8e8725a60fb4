"""``queuert-sa dashboard``: the web dashboard served alone, with uvicorn.

``APP_PATH`` names a ``Dashboard`` (with its ``authorize`` and ``read_only``),
a ``Queuert`` or ``AsyncQueuert``, or a function returning one; ``--db``
shows a database with no application code (inputs as stored). Binding to a
host other than the loopback without an ``authorize`` is refused: every job's
input would be readable by anyone who reaches the port. Imports click; the
dashboard and uvicorn are loaded when the command runs.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Generator
from typing import Any, cast

import click

from queuert_sa._client import Queuert

from ._app import AppPathError, import_object
from ._operator_commands import DATABASE_URL_ENV, operator_client

INSTALL_HINT = "pip install 'queuert_sa[dashboard]'"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _targets() -> tuple[type[Any], ...]:
    from queuert_sa.dashboard import Dashboard

    kinds: list[type[Any]] = [Dashboard, Queuert]
    with contextlib.suppress(ImportError):
        from queuert_sa._async_client import AsyncQueuert

        kinds.append(AsyncQueuert)
    return tuple(kinds)


@contextlib.contextmanager
def _dashboard(app_path: str | None, db_url: str | None, writable: bool) -> Generator[Any]:
    from queuert_sa.dashboard import Dashboard

    if (app_path is None) == (db_url is None):
        raise click.UsageError(f"Give APP_PATH or --db (or {DATABASE_URL_ENV}), not both.")
    if db_url is not None:
        with operator_client(db_url, table_prefix="queuert_", schema=None) as client:
            yield Dashboard(client, read_only=not writable)
        return
    assert app_path is not None
    try:
        found = import_object(
            app_path,
            _targets(),
            what="queuert_sa.dashboard.Dashboard",
            plural="Dashboards and clients",
            make="Dashboard(queuert, authorize=...), or a Queuert",
        )
    except AppPathError as exc:
        raise click.BadParameter(exc.problem, param_hint="APP_PATH") from exc
    if isinstance(found, Dashboard):
        if writable:
            raise click.UsageError(
                "APP_PATH names a Dashboard: its read_only= decides; --writable is for a client."
            )
        yield found
    else:
        yield Dashboard(cast("Queuert", found), read_only=not writable)


@click.command()
@click.argument("app_path", metavar="[APP_PATH]", required=False)
@click.option(
    "--db",
    "db_url",
    envvar=DATABASE_URL_ENV,
    show_envvar=True,
    metavar="URL",
    help="Show this database (SQLAlchemy URL) instead of an application's.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--writable",
    is_flag=True,
    help="Allow trigger, retry, cancel and delete (a client or --db; default read-only).",
)
@click.option("--root-path", default="", help="The prefix a proxy serves it under, e.g. /ops.")
def dashboard(
    app_path: str | None,
    db_url: str | None,
    host: str,
    port: int,
    writable: bool,
    root_path: str,
) -> None:
    """Serve the web dashboard of APP_PATH or of --db at http://HOST:PORT/.

    APP_PATH is module:attribute naming a queuert_sa.dashboard.Dashboard, a
    Queuert or an AsyncQueuert (or a function returning one), e.g.
    myapp.ops:dashboard. Only a Dashboard made with authorize= may be served
    on a host other than the loopback.

    \b
    Examples:
      queuert-sa dashboard --db sqlite:///app.db
      queuert-sa dashboard myapp.ops:dashboard --host 0.0.0.0 --port 8080
    """
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException(f"the dashboard needs uvicorn: {INSTALL_HINT}") from None
    context = click.get_current_context()
    if app_path is not None and context.get_parameter_source("db_url") == (
        click.core.ParameterSource.ENVIRONMENT
    ):
        db_url = None  # APP_PATH given: the environment's database URL is not meant
    try:
        made = _dashboard(app_path, db_url, writable)
        with made as app:
            if not is_loopback(host) and app.authorize is None:
                raise click.UsageError(
                    f"Refusing to serve the dashboard on {host} without authorization: anyone "
                    "who reaches the port could read every job's input (and, if writable, "
                    "delete chains). Point APP_PATH at Dashboard(queuert, authorize=...) "
                    "(authorize=lambda request: True if the network itself is trusted), or "
                    "bind to 127.0.0.1 behind an authenticating proxy."
                )
            where = "read-only" if app.read_only else "writable"
            click.echo(f"queuert-sa dashboard ({where}) on http://{host}:{port}{root_path}/")
            uvicorn.run(app, host=host, port=port, root_path=root_path, log_level="warning")
    except ImportError as exc:
        if exc.name not in ("starlette", "jinja2", "markupsafe"):
            raise
        raise click.ClickException(f"the dashboard needs {exc.name}: {INSTALL_HINT}") from None
