"""The ``queuert-sa`` command line: ``demo``, ``worker``, ``bench``, the
operator commands ``chains list``, ``jobs list``, ``chain show``, ``jobs
trigger``, ``jobs retry``, ``chains cancel`` and ``cleanup``, and ``dashboard``.

click is an optional dependency (``pip install 'queuert_sa[cli]'``). This package
imports without it; :func:`main` then explains what to install and exits 2. So
only :func:`build_cli` imports the modules that need click.

Exit codes: 0 success (the worker stopped gracefully), 1 an error at run time
(the application raised while being imported, the demo timed out, a library
error such as missing tables or an unreachable database, an unknown chain id),
2 a usage error (bad option, bad ``APP_PATH``, the target is not a ``Worker``,
a malformed ``--db`` URL, duration, time or cursor), and ``128 + signal`` when a
second SIGINT/SIGTERM abandons in-flight attempts.

This module owns :func:`main` and the root group; the rest is in

* ``_run_commands``: ``demo``, ``worker``, ``bench`` (click);
* ``_operator_commands``: ``chains list``, ``jobs list``, ``chain show``,
  ``cleanup``, their options and the ``Queuert`` they use (click);
* ``_action_commands``: ``jobs trigger``, ``jobs retry``, ``chains cancel`` (click);
* ``_dashboard_command``: ``dashboard``, served with uvicorn (click);
* ``_schedules_command``: ``schedules``, a worker's recurring schedules (click);
* ``_app``: :func:`import_worker`, :class:`AppPathError`;
* ``_format``: parsing and printing durations, times, tables and JSON;
* ``_report``: what ``chain show`` reads and prints;
* ``_bench_phases``: the names ``bench --mode`` takes, without importing bench.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from queuert_sa import __version__

from ._app import AppPathError as AppPathError
from ._app import import_worker as import_worker
from ._format import format_duration as format_duration
from ._format import format_table as format_table
from ._format import parse_duration as parse_duration
from ._format import parse_time as parse_time

if TYPE_CHECKING:
    import click

__all__ = [
    "AppPathError",
    "build_cli",
    "format_duration",
    "format_table",
    "import_worker",
    "main",
    "parse_duration",
    "parse_time",
]

INSTALL_HINT = "pip install 'queuert_sa[cli]'"


def build_cli() -> click.Group:
    """Build the ``queuert-sa`` click group (imports click; see :func:`main`)."""
    # Imported here, not at the top: these raise ImportError without click, which
    # main() turns into the install hint.
    import click

    # The groups with the commands that change state added (jobs trigger/retry, chains cancel).
    from ._action_commands import chains, jobs
    from ._dashboard_command import dashboard
    from ._operator_commands import chain, cleanup
    from ._run_commands import bench, demo, worker
    from ._schedules_command import schedules

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, "-V", "--version", prog_name="queuert-sa")
    def cli() -> None:
        """Transactional job chains in your own database, for SQLAlchemy.

        \b
        Examples:
          queuert-sa demo
          queuert-sa worker myapp.jobs:worker
          queuert-sa schedules myapp.jobs:worker
          queuert-sa chains list --db sqlite:///app.db --status running
          queuert-sa chain show 0190a7c2-8d3e-7b61-9a53-3c9f4e2d1a7b
          queuert-sa jobs list --status failed --db "$QUEUERT_DATABASE_URL"
          queuert-sa jobs retry --failed-since 1h --db "$QUEUERT_DATABASE_URL"
          queuert-sa chains cancel 0190a7c2-8d3e-7b61-9a53-3c9f4e2d1a7b --reason "duplicate"
          queuert-sa cleanup --db "$QUEUERT_DATABASE_URL" --older-than 30d --dry-run
          queuert-sa dashboard --db "$QUEUERT_DATABASE_URL"

        The operator commands (chains, chain, jobs, cleanup) read --db from
        QUEUERT_DATABASE_URL when it is not given.
        """

    for command in (demo, worker, schedules, chains, chain, jobs, cleanup, dashboard, bench):
        cli.add_command(command)
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
