"""The HTML pages: overview, chains, a chain, jobs, a job; and the forms that write.

Pages are rendered on the server with Jinja2 (autoescaping on: inputs,
outputs, errors and type names are untrusted text). Forms post back here and
are answered with a redirect (303) to the page they came from, with what was
done in the query string as a code, never as text (a link cannot make the
dashboard say something of its own choosing).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from queuert_sa.models import JobStatus

from . import _actions as actions
from . import _charts as charts
from . import _params as params
from . import _reading as reading
from . import _security as security
from ._records import pretty

if TYPE_CHECKING:
    from ._app import Core

#: Rows per page of the chain and job lists.
PAGE_SIZE = 25

#: The statuses of a chain that ``cancel_chain`` can still end.
CANCELLABLE = frozenset({"blocked", "pending", "running", "failed"})

#: What a form did, by the code in the redirect's query string.
NOTICES = {
    "trigger": "{count} job(s) triggered: due now.",
    "retry": "{count} job(s) retried: pending and due now.",
    "cancel": "{count} chain(s) cancelled.",
    "delete": "{count} chain(s) deleted.",
}


class Form:
    """A submitted ``application/x-www-form-urlencoded`` form."""

    def __init__(self, fields: Mapping[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))


async def read_form(request: Request) -> Form:
    """The request's form (an empty one if it sent something else)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        return Form({})
    body = (await request.body()).decode("utf-8", errors="replace")
    return Form(parse_qs(body, keep_blank_values=True, max_num_fields=2 * actions.MAX_BULK))


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or size == 1:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return ""


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


def _short(value: Any, size: int = 80) -> str:
    text = pretty(value).replace("\n", " ")
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1] + "…"


class Templates:
    """The Jinja2 environment, and rendering with what every page needs."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.env = Environment(
            loader=PackageLoader("queuert_sa.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(ago=_ago, when=_when, short=_short, pretty=pretty)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        base = security.dashboard_base(request)
        notice = None
        done = request.query_params.get("done")
        if done in NOTICES:
            count = request.query_params.get("count", "0")
            notice = NOTICES[done].format(count=int(count) if count.isdigit() else 0)
            skipped = request.query_params.get("skipped", "0")
            if skipped.isdigit() and int(skipped):
                notice += f" {int(skipped)} skipped: they could not be (see their status)."
        html = self.env.get_template(name).render(
            base=base,
            title=self.core.title,
            has_schedules=bool(self.core.schedules),
            writable=not self.core.read_only,
            csrf_token=security.csrf_token(request),
            csrf_field=security.CSRF_FIELD,
            notice=notice,
            statuses=params.STATUSES,
            now=dt.datetime.now(dt.UTC),
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.render(
            request, "error.html", status=status, status_code=status, message=message
        )


def _redirect(request: Request, to: str, **query: Any) -> Response:
    base = security.dashboard_base(request)
    wanted = {k: v for k, v in query.items() if v is not None}
    target = f"{base}{to}" + (f"?{urlencode(wanted)}" if wanted else "")
    return RedirectResponse(target, status_code=303)


def _back(form: Any, default: str) -> str:
    """Where a form returns to: its ``back`` field if it is a local path of the dashboard."""
    back = form.get("back") or ""
    if back.startswith("/") and not back.startswith("//") and "\\" not in back:
        return back.split("?", 1)[0]
    return default


def _form(request: Request) -> Form:
    form: Form = request.scope["queuert_form"]
    return form


def _id(request: Request, what: str) -> uuid.UUID:
    return params.parse_id(request.path_params["id"], what)


async def overview(core: Core, request: Request) -> Response:
    client = core.source.client
    found = await core.source.run(lambda s: reading.stats(client, s, dt.datetime.now(dt.UTC)))
    return core.pages.render(
        request,
        "overview.html",
        stats=found,
        throughput=charts.throughput(found.minutes, found.ended),
        backlog=charts.backlog(found.counts),
        per_minute=sum(found.ended["completed"][-5:]) / 5,
    )


async def _listing(core: Core, request: Request, kind: str) -> Response:
    wanted = params.listing(kind, request.query_params, default_limit=PAGE_SIZE)
    client = core.source.client
    page = await core.source.run(lambda s: reading.listing_page(client, s, wanted))
    return core.pages.render(request, f"{kind}.html", listing=wanted, page=page)


async def chains(core: Core, request: Request) -> Response:
    return await _listing(core, request, "chains")


async def jobs(core: Core, request: Request) -> Response:
    return await _listing(core, request, "jobs")


async def chain(core: Core, request: Request) -> Response:
    chain_id = _id(request, "chain id")
    client = core.source.client
    found = await core.source.run(lambda s: reading.chain_detail(client, s, chain_id))
    cancellable = found.chain.status.value in CANCELLABLE
    return core.pages.render(request, "chain.html", detail=found, cancellable=cancellable)


async def job(core: Core, request: Request) -> Response:
    job_id = _id(request, "job id")
    client = core.source.client
    found = await core.source.run(lambda s: reading.job_detail(client, s, job_id))
    current = found.job
    triggerable = current.status == JobStatus.PENDING and current.scheduled_at > dt.datetime.now(
        dt.UTC
    )
    return core.pages.render(
        request,
        "job.html",
        detail=found,
        triggerable=triggerable,
        retryable=current.status == JobStatus.FAILED,
        cancellable=found.chain.status.value in CANCELLABLE,
    )


async def schedules(core: Core, request: Request) -> Response:
    client = core.source.client
    now = dt.datetime.now(dt.UTC)
    found = await core.source.run(lambda s: reading.schedules(client, s, core.schedules, now))
    return core.pages.render(request, "schedules.html", states=found)


async def trigger_job(core: Core, request: Request) -> Response:
    job_id = _id(request, "job id")
    await core.source.run(actions.trigger(core.source.client, job_id))
    return _redirect(request, f"/jobs/{job_id}", done="trigger", count=1)


async def retry_job(core: Core, request: Request) -> Response:
    job_id = _id(request, "job id")
    await core.source.run(actions.retry(core.source.client, job_id))
    return _redirect(request, f"/jobs/{job_id}", done="retry", count=1)


async def cancel_chain(core: Core, request: Request) -> Response:
    chain_id = _id(request, "chain id")
    form = _form(request)
    reason = (form.get("reason") or "").strip() or "cancelled from the dashboard"
    cascade = form.get("cascade") == "on"
    run = actions.cancel(core.source.client, chain_id, cascade=cascade, reason=reason)
    cancelled = await core.source.run(run)
    back = _back(form, f"/chains/{chain_id}")
    return _redirect(request, back, done="cancel", count=len(cancelled))


async def delete_chain(core: Core, request: Request) -> Response:
    chain_id = _id(request, "chain id")
    form = _form(request)
    if (form.get("confirm") or "").strip() != str(chain_id):
        raise params.BadRequest("Type the chain's id to confirm its deletion.")
    cascade = form.get("cascade") == "on"
    run = actions.delete(core.source.client, [chain_id], cascade=cascade, must_exist=True)
    deleted = await core.source.run(run)
    return _redirect(request, "/chains", done="delete", count=len(deleted))


def _selected(form: Form) -> list[uuid.UUID]:
    ids = [params.parse_id(text, "id") for text in form.getlist("ids")]
    if not ids:
        raise params.BadRequest("Select at least one row first.")
    if len(ids) > actions.MAX_BULK:
        raise params.BadRequest(f"At most {actions.MAX_BULK} rows at once.")
    return list(dict.fromkeys(ids))


async def bulk_jobs(core: Core, request: Request) -> Response:
    form = _form(request)
    action = form.get("action")
    client = core.source.client
    if action not in ("trigger", "retry"):
        raise params.BadRequest("Choose trigger or retry.")
    one = client.trigger_job if action == "trigger" else client.retry_job
    result = await core.source.run(actions.each_job(client, one, _selected(form)))
    back = _back(form, "/jobs")
    return _redirect(
        request, back, done=action, count=len(result.done), skipped=len(result.skipped)
    )


async def bulk_chains(core: Core, request: Request) -> Response:
    form = _form(request)
    action = form.get("action")
    ids = _selected(form)
    cascade = form.get("cascade") == "on"
    client = core.source.client
    if action == "delete":
        deleted = await core.source.run(
            actions.delete(client, ids, cascade=cascade, must_exist=False)
        )
        return _redirect(request, "/chains", done="delete", count=len(deleted))
    if action == "cancel":
        reason = "cancelled from the dashboard"

        def cancel_all(session: Any) -> int:
            return sum(
                len(client.cancel_chain(session, i, reason=reason, cascade=cascade)) for i in ids
            )

        count = await core.source.run(cancel_all)
        return _redirect(request, _back(form, "/chains"), done="cancel", count=count)
    raise params.BadRequest("Choose delete or cancel.")


#: (path, method, handler, writes)
ROUTES = [
    ("/", "GET", overview, False),
    ("/chains", "GET", chains, False),
    ("/chains/bulk", "POST", bulk_chains, True),
    ("/chains/{id}", "GET", chain, False),
    ("/chains/{id}/cancel", "POST", cancel_chain, True),
    ("/chains/{id}/delete", "POST", delete_chain, True),
    ("/jobs", "GET", jobs, False),
    ("/schedules", "GET", schedules, False),
    ("/jobs/bulk", "POST", bulk_jobs, True),
    ("/jobs/{id}", "GET", job, False),
    ("/jobs/{id}/trigger", "POST", trigger_job, True),
    ("/jobs/{id}/retry", "POST", retry_job, True),
]
