"""The dashboard's HTML pages and forms through an ASGI client: escaping of untrusted
text, the CSRF token, typed confirmation, read-only pages, and mounting under a
prefix in FastAPI (ASGI) and Flask (WSGI)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import httpx
import pytest
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client as WerkzeugClient

import queuert_sa as q
from queuert_sa.dashboard import Dashboard

from .conftest import Db
from .test_dashboard_api import XSS, Site, fetch, flow, report, run, site, types

__all__ = ["site"]  # the fixture, shared with the API tests

RAW = re.compile(r"<script>alert|<img src=x", re.IGNORECASE)


def token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no form token"
    return found.group(1)


async def page_and_token(http: httpx.AsyncClient, path: str) -> tuple[str, str]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.text, token_of(response.text)


def test_every_page_renders_untrusted_text_escaped(site: Site) -> None:
    blocker = site.start(fetch, {"name": XSS})
    dependent = site.start(report, {"title": XSS}, blockers=[blocker])
    site.set_job(
        blocker.id,
        status="failed",
        last_attempt_error=f"ValueError: {XSS}",
        completed_at=dt.datetime.now(dt.UTC),
    )
    odd = site.start(flow, {"n": 1})
    site.set_job(odd.id, type_name=XSS, chain_type_name=XSS)  # a type no code declares

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            for path in [
                "/",
                "/chains",
                "/chains?roots=false",
                f"/chains/{blocker.id}",
                f"/chains/{dependent.id}",
                f"/chains/{odd.id}",
                "/jobs",
                f"/jobs/{blocker.id}",
                f"/jobs/{odd.id}",
                "/jobs?status=failed",
            ]:
                response = await http.get(path)
                assert response.status_code == 200, path
                assert not RAW.search(response.text), path
            chain_page = (await http.get(f"/chains/{blocker.id}")).text
            assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in chain_page
            assert "ValueError: &lt;script&gt;" in chain_page
            bad_id = await http.get(f"/chains/{XSS}")
            assert bad_id.status_code in (400, 404)
            assert not RAW.search(bad_id.text)

    run(scenario)


def test_pages_show_counts_chains_steps_and_blockers(site: Site) -> None:
    blocker = site.start(fetch, {"n": 1})
    dependent = site.start(report, {"n": 2}, blockers=[blocker])

    async def scenario() -> None:
        async with site.http() as http:
            overview = (await http.get("/")).text
            assert 'id="counts"' in overview
            assert "<svg" in overview
            assert "Jobs ended per minute" in overview
            chains = (await http.get("/chains")).text
            assert str(dependent.id) in chains
            assert f'data-id="{blocker.id}"' not in chains  # a blocker, hidden by default
            assert f'data-id="{blocker.id}"' in (await http.get("/chains?roots=false")).text
            detail = (await http.get(f"/chains/{dependent.id}")).text
            assert 'class="steps"' in detail
            assert f'href="/chains/{blocker.id}"' in detail
            blocking = (await http.get(f"/chains/{blocker.id}")).text
            assert 'id="blocking"' in blocking
            assert f'href="/jobs/{dependent.id}"' in blocking

    run(scenario)


def test_the_chain_list_pages_with_load_more_keeping_the_filters(site: Site) -> None:
    for i in range(30):
        site.start(fetch, {"n": i})
    site.start(flow, {"n": 99})

    async def scenario() -> None:
        async with site.http() as http:
            first = (await http.get("/chains?type=fetch")).text
            assert first.count('class="row"') == 25
            more = re.search(r'id="load-more" href="([^"]+)"', first)
            assert more is not None
            href = more.group(1).replace("&amp;", "&")
            assert "type=fetch" in href
            second = (await http.get(href)).text
            assert second.count('class="row"') == 5
            assert 'id="load-more"' not in second

    run(scenario)


def test_read_only_pages_offer_no_writes(site: Site) -> None:
    chain = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))

    async def scenario() -> None:
        async with site.http() as http:
            for path in (f"/chains/{chain.id}", f"/jobs/{chain.id}", "/chains", "/jobs"):
                html = (await http.get(path)).text
                assert "read-only" in html
                assert 'method="post"' not in html or 'name="ids"' not in html
                assert "Delete chain" not in html
                assert "Trigger now" not in html
            refused = await http.post(f"/jobs/{chain.id}/trigger", data={"csrf_token": "x"})
            assert refused.status_code == 403

    run(scenario)
    assert site.status(chain.id) == "pending"


def test_forms_need_the_token_of_the_cookie(site: Site) -> None:
    chain = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            html, token = await page_and_token(http, f"/jobs/{chain.id}")
            assert "Trigger now" in html
            path = f"/jobs/{chain.id}/trigger"
            assert (await http.post(path)).status_code == 403
            assert (await http.post(path, data={"csrf_token": "forged" * 8})).status_code == 403
            cross = await http.post(
                path, data={"csrf_token": token}, headers={"Origin": "https://evil.example"}
            )
            assert cross.status_code == 403
            assert site.status(chain.id) == "pending"
            done = await http.post(path, data={"csrf_token": token})
            assert done.status_code == 303
            assert done.headers["location"] == f"/jobs/{chain.id}?done=trigger&count=1"
            after = (await http.get(done.headers["location"])).text
            assert "1 job(s) triggered" in after
            assert "Trigger now" not in after

    run(scenario)


def test_delete_needs_the_typed_id_and_cascades_on_request(site: Site) -> None:
    blocker = site.start(fetch, {"n": 1})
    dependent = site.start(report, {"n": 2}, blockers=[blocker])

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            _, token = await page_and_token(http, f"/chains/{dependent.id}")
            path = f"/chains/{dependent.id}/delete"
            wrong = await http.post(path, data={"csrf_token": token, "confirm": "yes"})
            assert wrong.status_code == 400
            assert "Type the chain" in wrong.text
            referenced = await http.post(
                f"/chains/{blocker.id}/delete", data={"csrf_token": token, "confirm": blocker.id}
            )
            assert referenced.status_code == 409
            done = await http.post(
                path, data={"csrf_token": token, "confirm": str(dependent.id), "cascade": "on"}
            )
            assert done.status_code == 303
            assert "done=delete&count=2" in done.headers["location"]
            assert (await http.get(f"/chains/{blocker.id}")).status_code == 404

    run(scenario)


def test_bulk_forms_trigger_retry_cancel_and_delete(site: Site) -> None:
    later = [site.start(fetch, {"n": i}, run_in=dt.timedelta(hours=1)) for i in range(3)]
    failed = site.start(flow, {"n": 9})
    site.set_job(failed.id, status="failed", completed_at=dt.datetime.now(dt.UTC))

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            _, token = await page_and_token(http, "/jobs")
            ids = [str(c.id) for c in later]
            triggered = await http.post(
                "/jobs/bulk",
                data={"csrf_token": token, "action": "trigger", "ids": [*ids, str(failed.id)]},
            )
            assert "done=trigger&count=3&skipped=1" in triggered.headers["location"]
            retried = await http.post(
                "/jobs/bulk", data={"csrf_token": token, "action": "retry", "ids": [failed.id]}
            )
            assert "done=retry&count=1" in retried.headers["location"]
            cancelled = await http.post(
                "/chains/bulk", data={"csrf_token": token, "action": "cancel", "ids": ids[:1]}
            )
            assert "done=cancel&count=1" in cancelled.headers["location"]
            deleted = await http.post(
                "/chains/bulk", data={"csrf_token": token, "action": "delete", "ids": ids[1:]}
            )
            assert "done=delete&count=2" in deleted.headers["location"]
            nothing = await http.post(
                "/chains/bulk", data={"csrf_token": token, "action": "delete"}
            )
            assert nothing.status_code == 400

    run(scenario)
    assert site.status(later[0].id) == "cancelled"
    assert site.status(failed.id) == "pending"
    assert site.status(later[1].id) == "None"  # deleted


def test_a_redirect_never_leaves_the_dashboard(site: Site) -> None:
    chain = site.start(fetch, {"n": 1})

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            _, token = await page_and_token(http, f"/chains/{chain.id}")
            for back in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
                response = await http.post(
                    f"/chains/{chain.id}/cancel", data={"csrf_token": token, "back": back}
                )
                assert response.headers["location"].startswith(f"/chains/{chain.id}?")

    run(scenario)


# --- mounting ---------------------------------------------------------------------------


def test_mounted_in_fastapi_links_follow_the_prefix(db: Db) -> None:
    from fastapi import FastAPI

    client = q.Queuert(db.engine, types)
    site = Site(db, "sync", client)
    chain = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))
    api = FastAPI()
    api.mount("/ops/queuert", Dashboard(client, read_only=False))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            html = (await http.get("/ops/queuert/chains")).text
            assert 'href="/ops/queuert/static/app.css"' in html
            assert f'href="/ops/queuert/chains/{chain.id}"' in html
            assert (await http.get("/ops/queuert/static/app.js")).status_code == 200
            api_page = (await http.get("/ops/queuert/api/chains")).json()
            assert [c["id"] for c in api_page["items"]] == [str(chain.id)]
            assert (await http.get("/ops/queuert/api/nothing")).json()["error"] == "Not found."
            job_page = await http.get(f"/ops/queuert/jobs/{chain.id}")
            token = token_of(job_page.text)
            assert job_page.cookies.get("queuert_csrf") or http.cookies.get("queuert_csrf")
            done = await http.post(
                f"/ops/queuert/jobs/{chain.id}/trigger", data={"csrf_token": token}
            )
            assert done.headers["location"].startswith(f"/ops/queuert/jobs/{chain.id}?")

    run(scenario)


def test_mounted_in_flask_through_wsgi(db: Db) -> None:
    client = q.Queuert(db.engine, types)
    site = Site(db, "sync", client)
    chain = site.start(fetch, {"name": XSS})
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def home() -> str:
        return "the app"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/queuert": Dashboard(client).wsgi()}
    )
    http = WerkzeugClient(flask_app)

    def get(path: str) -> tuple[int, str, Any]:
        response = http.get(path)
        try:
            return response.status_code, response.get_data(as_text=True), response.headers
        finally:
            response.close()

    assert get("/")[1] == "the app"
    status, html, headers = get("/queuert/chains")
    assert status == 200
    assert f'href="/queuert/chains/{chain.id}"' in html
    assert not RAW.search(html)
    assert headers["X-Frame-Options"] == "DENY"
    found: Any = json.loads(get(f"/queuert/api/chains/{chain.id}")[1])
    assert found["chain"]["input"] == {"name": XSS}
    assert get(f"/queuert/api/chains/{uuid.uuid4()}")[0] == 404
    status, css, _ = get("/queuert/static/app.css")
    assert status == 200
    assert "--completed" in css


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_dashboard_needs_a_client(flavour: str) -> None:
    with pytest.raises(TypeError, match="takes a Queuert or an AsyncQueuert"):
        Dashboard(object())  # type: ignore[arg-type]


def test_schedules_page_and_api_show_next_and_last_tick(site: Site) -> None:
    worker = site.client.worker(poll_interval=1)
    worker.handler(fetch)(lambda attempt: attempt.complete({}))
    schedule = worker.recurring("hourly-fetch", fetch, every=3600, input={"source": XSS})
    worker.drain()

    async def scenario() -> None:
        async with site.http(schedules=worker.schedules) as http:
            items = (await http.get("/api/schedules")).json()["items"]
            assert [(s["name"], s["type_name"], s["every_seconds"]) for s in items] == [
                ("hourly-fetch", "fetch", 3600.0)
            ]
            next_tick = dt.datetime.fromisoformat(items[0]["next_tick"])
            assert next_tick == schedule.next_tick(dt.datetime.now(dt.UTC))
            assert items[0]["last_tick"] is None
            html = (await http.get("/schedules")).text
            assert "hourly-fetch" in html
            assert "every 1:00:00" in html
            assert 'href="/schedules"' in (await http.get("/")).text
        async with site.http() as http:
            assert 'href="/schedules"' not in (await http.get("/")).text
            assert (await http.get("/api/schedules")).json() == {"items": []}

    run(scenario)
