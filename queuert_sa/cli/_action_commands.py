"""The operator commands that change state: ``jobs trigger``, ``jobs retry``, ``chains cancel``.

Each runs in one transaction of its own, committed before it prints what it
did; a refusal (a job that has not failed, an unknown id) rolls it back whole
and exits 1. They are added to the ``jobs`` and ``chains`` groups of
:mod:`._operator_commands`. Imports click.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import click
from sqlalchemy.orm import Session

from queuert_sa._errors import ChainNotFoundError, JobNotFoundError, JobNotRetryableError
from queuert_sa._rules import MAX_PAGE_SIZE
from queuert_sa.models import JobStatus

from ._format import chain_data, format_time, job_data, to_json
from ._operator_commands import chains as chains
from ._operator_commands import db_options, json_option, operator_client, time_callback
from ._operator_commands import jobs as jobs
from ._report import missing_chain_message


@jobs.command("retry")
@click.argument("job_ids", metavar="[ID]...", nargs=-1, type=click.UUID)
@db_options
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    help="Bulk: failed jobs of this type (the job's own type, not its chain's). Repeatable.",
)
@click.option(
    "--failed-since",
    metavar="TIME",
    callback=time_callback,
    help="Bulk: jobs that failed at or after TIME: ISO 8601 (UTC unless it has an offset) "
    "or a duration before now (30m, 2h, 7d).",
)
@click.option("--all", "every", is_flag=True, help="Bulk: every failed job.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="Bulk: at most N jobs, first created first. Default: all that match.",
)
@json_option
def retry_jobs(
    job_ids: tuple[uuid.UUID, ...],
    db_url: str,
    table_prefix: str,
    schema: str | None,
    types: tuple[str, ...],
    failed_since: dt.datetime | None,
    every: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """Make failed jobs pending and due now, keeping their attempt count and last error.

    Either the jobs ID... (all or nothing: if one cannot be retried, none is),
    or in bulk the failed jobs matching --type and --failed-since, or --all.
    A chain's failed job is its current job: `chain show` lists its id.
    """
    bulk = bool(types) or failed_since is not None or every or limit is not None
    if job_ids and bulk:
        raise click.UsageError("give job IDs or the bulk options (--type, --failed-since, --all).")
    if not job_ids and not bulk:
        raise click.UsageError(
            "give the IDs of failed jobs, or select them with --type, --failed-since or --all."
        )
    with (
        operator_client(db_url, table_prefix=table_prefix, schema=schema) as client,
        Session(client.engine) as session,
    ):
        if not job_ids:
            with session.begin():
                count = client.retry_jobs(
                    session, types=types or None, failed_since=failed_since, limit=limit
                )
            if as_json:
                click.echo(to_json({"retried": count}))
            else:
                click.echo(f"retried {count} failed {'job' if count == 1 else 'jobs'}")
            return
        try:
            with session.begin():
                retried = [client.retry_job(session, job_id) for job_id in job_ids]
        except (JobNotFoundError, JobNotRetryableError) as exc:
            raise click.ClickException(f"{exc} Nothing was retried.") from None
    if as_json:
        click.echo(to_json({"retried": [job_data(job) for job in retried]}))
        return
    for job in retried:
        click.echo(
            f"retried job {job.id} ({job.type_name}#{job.chain_index} of chain {job.chain_id}, "
            f"{job.attempt} attempts so far): pending, due {format_time(job.scheduled_at)} UTC"
        )


@jobs.command("trigger")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=click.UUID)
@db_options
@json_option
def trigger_jobs(
    job_ids: tuple[uuid.UUID, ...],
    db_url: str,
    table_prefix: str,
    schema: str | None,
    as_json: bool,
) -> None:
    """Make the pending jobs ID... due now, all or nothing.

    A job scheduled for later (run_at, a retry's backoff) becomes due at once;
    one already due keeps its place. If one ID is no job or not pending, none
    is triggered and every such ID is listed.
    """
    with (
        operator_client(db_url, table_prefix=table_prefix, schema=schema) as client,
        Session(client.engine) as session,
        session.begin(),
    ):
        triggered = client.trigger_jobs(session, job_ids)
    if as_json:
        click.echo(to_json({"triggered": [job_data(job) for job in triggered]}))
        return
    for job in triggered:
        click.echo(
            f"triggered job {job.id} ({job.type_name}#{job.chain_index} of chain "
            f"{job.chain_id}): due {format_time(job.scheduled_at)} UTC"
        )


@chains.command("cancel")
@click.argument("chain_id", metavar="ID", type=click.UUID)
@db_options
@click.option("--reason", metavar="TEXT", help="Why; kept as the cancelled job's cancel_reason.")
@click.option(
    "--cascade",
    is_flag=True,
    help="Also cancel the chains whose jobs are blocked on it, and theirs in turn.",
)
@json_option
def cancel_chain(
    chain_id: uuid.UUID,
    db_url: str,
    table_prefix: str,
    schema: str | None,
    reason: str | None,
    cascade: bool,
    as_json: bool,
) -> None:
    """Cancel chain ID: its current job (blocked, pending, running or failed) becomes cancelled.

    An atomic attempt running it is waited for; a staged one learns it at its
    next lease renewal and writes nothing. Jobs of other chains blocked on it
    stay blocked unless --cascade.
    """
    with (
        operator_client(db_url, table_prefix=table_prefix, schema=schema) as client,
        Session(client.engine) as session,
    ):
        try:
            with session.begin():
                cancelled = client.cancel_chain(session, chain_id, reason=reason, cascade=cascade)
                chain = client.get_chain(chain_id, session=session)
                blocked = [
                    job
                    for job in client.list_blocked_jobs(
                        chain_id, limit=MAX_PAGE_SIZE, session=session
                    )
                    if job.status == JobStatus.BLOCKED
                ]
        except ChainNotFoundError:
            where = client.engine.url.render_as_string(hide_password=True)
            raise click.ClickException(
                missing_chain_message(client, chain_id, where, session)
            ) from None
    if as_json:
        data: dict[str, Any] = {
            "cancelled": cancelled,
            "chain": chain_data(chain),
            "still_blocked": [job_data(job) for job in blocked],
        }
        click.echo(to_json(data))
        return
    if chain_id in cancelled:
        click.echo(f"cancelled chain {chain_id}")
    elif chain.is_cancelled:
        click.echo(f"chain {chain_id} was cancelled already")
    else:
        click.echo(f"chain {chain_id} is {chain.status.value}: nothing to cancel")
    for cancelled_id in cancelled:
        if cancelled_id != chain_id:
            click.echo(f"cancelled chain {cancelled_id} (blocked on a cancelled chain)")
    if blocked:
        noun = "job of another chain stays" if len(blocked) == 1 else "jobs of other chains stay"
        click.echo(
            f"{len(blocked)} {noun} blocked on it (queuert-sa chain show "
            f"{chain_id} lists them; --cascade cancels their chains)"
        )
