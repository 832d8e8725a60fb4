"""The JSON API under ``/api/``: the listings, a chain's and a job's details, the
statistics, and the writes (trigger, retry, cancel, delete, and their bulk forms).

Errors are ``{"error": message}`` with the status: 400 for a bad id, cursor
or filter, 404 for an unknown chain or job, 405 for a wrong method, 409 when
the state refuses (a job that cannot be triggered, a chain other jobs still
wait for).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request

from . import _actions as actions
from . import _params as params
from . import _reading as reading
from ._records import chain_record, job_record, when

if TYPE_CHECKING:
    from ._app import Core


def _id(request: Request, what: str) -> uuid.UUID:
    return params.parse_id(request.path_params["id"], what)


async def _listing(core: Core, request: Request, kind: str) -> dict[str, Any]:
    wanted = params.listing(kind, request.query_params, default_limit=50)
    client = core.source.client
    page = await core.source.run(lambda s: reading.listing_page(client, s, wanted))
    record = chain_record if kind == "chains" else job_record
    return {"items": [record(item) for item in page], "next_cursor": page.next_cursor}


async def list_chains(core: Core, request: Request) -> dict[str, Any]:
    return await _listing(core, request, "chains")


async def list_jobs(core: Core, request: Request) -> dict[str, Any]:
    return await _listing(core, request, "jobs")


async def get_chain(core: Core, request: Request) -> dict[str, Any]:
    chain_id = _id(request, "chain id")
    client = core.source.client
    found = await core.source.run(lambda s: reading.chain_detail(client, s, chain_id))
    return {
        "chain": chain_record(found.chain),
        "jobs": [job_record(j) for j in found.jobs],
        "more_jobs": found.more_jobs,
        "job_blockers": {
            str(job_id): [chain_record(c) for c in chains]
            for job_id, chains in found.job_blockers.items()
        },
        "blocking": [job_record(j) for j in found.blocking],
    }


async def get_job(core: Core, request: Request) -> dict[str, Any]:
    job_id = _id(request, "job id")
    client = core.source.client
    found = await core.source.run(lambda s: reading.job_detail(client, s, job_id))
    return {
        "job": job_record(found.job),
        "chain": chain_record(found.chain),
        "continuation": None if found.continuation is None else job_record(found.continuation),
        "blockers": [chain_record(c) for c in found.blockers],
    }


async def stats(core: Core, request: Request) -> dict[str, Any]:
    client = core.source.client
    now = dt.datetime.now(dt.UTC)
    found = await core.source.run(lambda s: reading.stats(client, s, now))
    return {
        "now": when(found.now),
        "counts": [
            {"type_name": name, "status": status, "count": count}
            for name, by_status in sorted(found.counts.items())
            for status, count in by_status.items()
            if count
        ],
        "totals": found.totals,
        "ready": [
            {"type_name": name, "count": count, "oldest_age_seconds": round(age, 3)}
            for name, (count, age) in sorted(found.ready.items())
        ],
        "oldest_ready_age_seconds": (
            None if found.oldest_ready_age is None else round(found.oldest_ready_age, 3)
        ),
        "ended_per_minute": {
            "minutes": [when(m) for m in found.minutes],
            **found.ended,
        },
    }


async def schedules(core: Core, request: Request) -> dict[str, Any]:
    client = core.source.client
    now = dt.datetime.now(dt.UTC)
    found = await core.source.run(lambda s: reading.schedules(client, s, core.schedules, now))
    return {
        "items": [
            {
                "name": state.schedule.name,
                "type_name": state.schedule.job_type.name,
                "recurs": state.schedule.description,
                "cron": state.schedule.cron,
                "every_seconds": (
                    None if state.schedule.every is None else state.schedule.every.total_seconds()
                ),
                "tz": str(state.schedule.tz),
                "missed": state.schedule.missed,
                "next_tick": when(state.next_tick),
                "last_tick": None if state.last is None else when(state.last.tick),
                "last_chain_id": None if state.last is None else str(state.last.chain_id),
                "last_status": None if state.last_status is None else state.last_status.value,
            }
            for state in found
        ]
    }


async def trigger_job(core: Core, request: Request) -> dict[str, Any]:
    job = await core.source.run(actions.trigger(core.source.client, _id(request, "job id")))
    return {"job": job_record(job)}


async def retry_job(core: Core, request: Request) -> dict[str, Any]:
    job = await core.source.run(actions.retry(core.source.client, _id(request, "job id")))
    return {"job": job_record(job)}


async def cancel_chain(core: Core, request: Request) -> dict[str, Any]:
    chain_id = _id(request, "chain id")
    body = await _body(request)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise params.BadRequest('"reason" must be a string.')
    cascade = params.cascade_flag(request.query_params) or body.get("cascade") is True
    client = core.source.client
    run = actions.cancel(client, chain_id, cascade=cascade, reason=reason)
    cancelled = await core.source.run(run)
    return {"cancelled": [str(c) for c in cancelled]}


async def delete_chain(core: Core, request: Request) -> dict[str, Any]:
    chain_id = _id(request, "chain id")
    cascade = params.cascade_flag(request.query_params)
    run = actions.delete(core.source.client, [chain_id], cascade=cascade, must_exist=True)
    deleted = await core.source.run(run)
    return {"deleted": [chain_record(c) for c in deleted]}


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise params.BadRequest("The request body is not JSON.") from None
    if not isinstance(body, dict):
        raise params.BadRequest("The request body must be a JSON object.")
    return body  # pyright: ignore[reportUnknownVariableType]


async def _ids(request: Request) -> tuple[list[uuid.UUID], dict[str, Any]]:
    body = await _body(request)
    given: object = body.get("ids")
    if not isinstance(given, list) or not given:
        raise params.BadRequest('The body must hold "ids": a non-empty list of ids.')
    texts = [str(i) for i in cast("list[object]", given)]
    if len(texts) > actions.MAX_BULK:
        raise params.BadRequest(f"At most {actions.MAX_BULK} ids at once.")
    ids = [params.parse_id(text, "id") for text in texts]
    return list(dict.fromkeys(ids)), body


async def _bulk_jobs(core: Core, request: Request, action: str) -> dict[str, Any]:
    ids, _ = await _ids(request)
    client = core.source.client
    one = client.trigger_job if action == "trigger" else client.retry_job
    result = await core.source.run(actions.each_job(client, one, ids))
    return {
        "done": [str(i) for i in result.done],
        "skipped": [{"id": str(i), "error": error} for i, error in result.skipped],
    }


async def trigger_jobs(core: Core, request: Request) -> dict[str, Any]:
    return await _bulk_jobs(core, request, "trigger")


async def retry_jobs(core: Core, request: Request) -> dict[str, Any]:
    return await _bulk_jobs(core, request, "retry")


async def delete_chains(core: Core, request: Request) -> dict[str, Any]:
    ids, body = await _ids(request)
    cascade = body.get("cascade") is True
    run = actions.delete(core.source.client, ids, cascade=cascade, must_exist=False)
    deleted = await core.source.run(run)
    return {"deleted": [chain_record(c) for c in deleted]}


#: (path, method, handler, writes)
ROUTES = [
    ("/chains", "GET", list_chains, False),
    ("/chains/delete", "POST", delete_chains, True),
    ("/chains/{id}", "GET", get_chain, False),
    ("/chains/{id}", "DELETE", delete_chain, True),
    ("/chains/{id}/cancel", "POST", cancel_chain, True),
    ("/jobs", "GET", list_jobs, False),
    ("/jobs/trigger", "POST", trigger_jobs, True),
    ("/jobs/retry", "POST", retry_jobs, True),
    ("/jobs/{id}", "GET", get_job, False),
    ("/jobs/{id}/trigger", "POST", trigger_job, True),
    ("/jobs/{id}/retry", "POST", retry_job, True),
    ("/stats", "GET", stats, False),
    ("/schedules", "GET", schedules, False),
]
