"""``queuert-sa schedules APP_PATH``: the recurring schedules a worker keeps, and how they stand.

Imports click; reads through the worker's own client.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from queuert_sa._schedule_report import ScheduleState, schedule_states

from ._app import AppPathError, import_worker
from ._format import format_table, to_json


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _row(state: ScheduleState) -> list[str]:
    schedule = state.schedule
    last = "-"
    if state.last is not None:
        status = state.last_status.value if state.last_status is not None else "deleted"
        last = f"{_when(state.last.tick)} {status}"
    return [
        schedule.name,
        schedule.job_type.name,
        schedule.description,
        schedule.missed,
        _when(state.next_tick),
        last,
    ]


def _data(state: ScheduleState) -> dict[str, Any]:
    schedule = state.schedule
    return {
        "name": schedule.name,
        "type_name": schedule.job_type.name,
        "cron": schedule.cron,
        "every_seconds": None if schedule.every is None else schedule.every.total_seconds(),
        "tz": str(schedule.tz),
        "missed": schedule.missed,
        "grace_seconds": schedule.grace.total_seconds(),
        "next_tick": state.next_tick,
        "last_tick": None if state.last is None else state.last.tick,
        "last_chain_id": None if state.last is None else state.last.chain_id,
        "last_status": None if state.last_status is None else state.last_status.value,
        "started_ahead": state.pending,
    }


@click.command()
@click.argument("app_path", metavar="APP_PATH")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def schedules(app_path: str, as_json: bool) -> None:
    """List the recurring schedules of the worker named by APP_PATH (module:attribute).

    For each: its job type, how it recurs, what a missed tick does, the next
    tick and the latest tick's chain with its status. Reads the worker's
    database; starts nothing.
    """
    try:
        worker = import_worker(app_path)
    except AppPathError as exc:
        raise click.BadParameter(exc.problem, param_hint="APP_PATH") from exc
    ctx = worker.ctx
    engine: Any = worker.engine
    sync_engine: Engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine's own
    with Session(sync_engine) as session:
        states = schedule_states(session, ctx, worker.schedules, ctx.clock())
    if as_json:
        click.echo(to_json([_data(state) for state in states]))
        return
    if not states:
        click.echo(f"{app_path}: no schedules (declare them with worker.recurring(...)).")
        return
    headers = ["NAME", "TYPE", "RECURS", "MISSED", "NEXT TICK", "LAST TICK"]
    for line in format_table(headers, [_row(state) for state in states]):
        click.echo(line)
