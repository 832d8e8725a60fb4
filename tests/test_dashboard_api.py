"""The dashboard's JSON API and its guards, through an ASGI client, on both databases,
with the sync and the async client behind it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.dashboard import Dashboard
from queuert_sa.models import Job

from .conftest import Db
from .test_async import async_url

types = q.JobTypes()
fetch = types.entry("fetch", input=dict, output=dict)
report = types.entry("report", input=dict, output=dict, blockers=[fetch])
flow = types.entry("flow", input=dict, continues_with=["flow-end"])
flow_end = types.define("flow-end", input=dict, output=dict)

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
WRITE = {"X-Requested-With": "queuert"}


@dataclass
class Site:
    """The test database, a sync client to set it up, and dashboards over it."""

    db: Db
    flavour: str
    client: q.Queuert

    @contextlib.asynccontextmanager
    async def http(self, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
        engine = None
        if self.flavour == "async":
            engine = create_async_engine(async_url(self.db))
            queuert: q.Queuert | q.AsyncQueuert = q.AsyncQueuert(engine, types)
        else:
            queuert = q.Queuert(self.db.engine, types)
        transport = httpx.ASGITransport(app=Dashboard(queuert, **options))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
                yield http
        finally:
            if engine is not None:
                await engine.dispose()

    def start(self, job_type: q.JobType[Any, Any], input: Any, **options: Any) -> q.Chain[Any, Any]:
        with Session(self.db.engine) as s, s.begin():
            return self.client.start_chain(s, job_type, input, **options)

    def status(self, job_id: uuid.UUID) -> str:
        with Session(self.db.engine) as s:
            return str(s.scalar(select(Job.status).where(Job.id == job_id)))

    def set_job(self, job_id: uuid.UUID, **values: Any) -> None:
        with Session(self.db.engine) as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id).values(**values))


@pytest.fixture(params=["sync", "async"])
def site(request: pytest.FixtureRequest, db: Db) -> Site:
    return Site(db, request.param, q.Queuert(db.engine, types))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


# --- reading ------------------------------------------------------------------------


def test_chain_list_hides_blockers_by_default_and_filters(site: Site) -> None:
    blocker = site.start(fetch, {"n": 1})
    dependent = site.start(report, {"n": 2}, blockers=[blocker])
    other = site.start(flow, {"n": 3})

    async def scenario() -> None:
        async with site.http() as http:
            roots = (await http.get("/api/chains")).json()
            assert [c["id"] for c in roots["items"]] == [str(other.id), str(dependent.id)]
            everything = (await http.get("/api/chains", params={"roots": "false"})).json()
            assert {c["id"] for c in everything["items"]} == {
                str(blocker.id),
                str(dependent.id),
                str(other.id),
            }
            typed = await http.get("/api/chains", params={"type": "report,flow"})
            assert {c["type_name"] for c in typed.json()["items"]} == {"report", "flow"}
            blocked = await http.get("/api/chains", params={"status": "blocked"})
            assert [c["id"] for c in blocked.json()["items"]] == [str(dependent.id)]
            by_id = await http.get("/api/chains", params={"id": str(other.id)})
            assert [c["id"] for c in by_id.json()["items"]] == [str(other.id)]
            by_job = await http.get("/api/chains", params={"job_id": str(dependent.id)})
            assert [c["id"] for c in by_job.json()["items"]] == [str(dependent.id)]

    run(scenario)


def test_listings_page_with_cursors_newest_first(site: Site) -> None:
    started = [site.start(fetch, {"n": i}) for i in range(5)]

    async def scenario() -> None:
        async with site.http() as http:
            seen: list[str] = []
            cursor: str | None = None
            while True:
                query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
                page = (await http.get("/api/jobs", params=query)).json()
                seen += [j["id"] for j in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == [str(c.id) for c in reversed(started)]

    run(scenario)


def test_chain_detail_has_jobs_blockers_and_what_it_blocks(site: Site) -> None:
    first = site.start(fetch, {"n": 1})
    second = site.start(fetch, {"n": 2})
    dependent = site.start(report, {"title": XSS}, blockers=[first])
    also = site.start(report, {"n": 3}, blockers=[first])

    async def scenario() -> None:
        async with site.http() as http:
            body = (await http.get(f"/api/chains/{dependent.id}")).json()
            assert body["chain"]["status"] == "blocked"
            assert body["chain"]["input"] == {"title": XSS}
            assert [j["id"] for j in body["jobs"]] == [str(dependent.id)]
            assert [c["id"] for c in body["job_blockers"][str(dependent.id)]] == [str(first.id)]
            assert body["blocking"] == []
            blocker = (await http.get(f"/api/chains/{first.id}")).json()
            assert {j["id"] for j in blocker["blocking"]} == {str(dependent.id), str(also.id)}
            assert blocker["job_blockers"] == {}
            unrelated = (await http.get(f"/api/chains/{second.id}")).json()
            assert unrelated["blocking"] == []

    run(scenario)


def test_job_detail_has_its_chain_continuation_and_blockers(site: Site) -> None:
    chain = site.start(flow, {"n": 1})
    with Session(site.db.engine) as s, s.begin():
        site.client.complete_chain(s, chain.id, flow, lambda c: c.continue_with(flow_end, {"n": 2}))
    with Session(site.db.engine) as s:
        end = site.client.list_chain_jobs(chain.id, session=s).items[-1]

    async def scenario() -> None:
        async with site.http() as http:
            body = (await http.get(f"/api/jobs/{chain.id}")).json()
            assert body["job"]["status"] == "completed"
            assert body["continuation"]["id"] == str(end.id)
            assert body["chain"]["current_type_name"] == "flow-end"
            last = (await http.get(f"/api/jobs/{end.id}")).json()
            assert last["continuation"] is None
            assert last["job"]["chain_index"] == 1

    run(scenario)


def test_stats_count_by_type_and_status_and_per_minute(site: Site) -> None:
    done = site.start(fetch, {"n": 1})
    failed = site.start(fetch, {"n": 2})
    site.start(fetch, {"n": 3})
    ready = site.start(flow, {"n": 4})
    now = dt.datetime.now(dt.UTC)
    site.set_job(done.id, status="completed", completed_at=now, output={"ok": True})
    site.set_job(failed.id, status="failed", completed_at=now - dt.timedelta(minutes=2))
    site.set_job(ready.id, scheduled_at=now - dt.timedelta(seconds=90))

    async def scenario() -> None:
        async with site.http() as http:
            body = (await http.get("/api/stats")).json()
            counts = {(c["type_name"], c["status"]): c["count"] for c in body["counts"]}
            assert counts == {
                ("fetch", "completed"): 1,
                ("fetch", "failed"): 1,
                ("fetch", "pending"): 1,
                ("flow", "pending"): 1,
            }
            assert body["totals"]["pending"] == 2
            assert body["oldest_ready_age_seconds"] >= 89
            per_minute = body["ended_per_minute"]
            assert len(per_minute["minutes"]) == 60
            assert sum(per_minute["completed"]) == 1
            assert per_minute["completed"][-1] == 1
            assert sum(per_minute["failed"]) == 1
            assert per_minute["failed"][-3] == 1

    run(scenario)


# --- errors -------------------------------------------------------------------------


def test_bad_input_is_a_400_unknown_a_404_wrong_method_a_405(site: Site) -> None:
    async def scenario() -> None:
        async with site.http() as http:
            for path, params in [
                ("/api/chains", {"cursor": "not-a-cursor"}),
                ("/api/chains", {"status": "finished"}),
                ("/api/chains", {"limit": "0"}),
                ("/api/chains", {"limit": "many"}),
                ("/api/chains", {"roots": "maybe"}),
                ("/api/chains", {"id": "42"}),
                ("/api/jobs", {"chain_id": "x"}),
                ("/api/chains/not-an-id", {}),
                ("/api/jobs/not-an-id", {}),
            ]:
                response = await http.get(path, params=params)
                assert response.status_code == 400, (path, params)
                assert response.json()["error"]
            jobs_cursor = (await http.get("/api/jobs", params={"limit": "1"})).json()
            assert jobs_cursor["next_cursor"] is None
            missing = uuid.uuid4()
            for path in (f"/api/chains/{missing}", f"/api/jobs/{missing}"):
                response = await http.get(path)
                assert response.status_code == 404
                assert str(missing) in response.json()["error"]
            assert (await http.get("/api/nothing-here")).status_code == 404
            for method, path in [
                ("PUT", "/api/chains"),
                ("POST", "/api/stats"),
                ("GET", f"/api/jobs/{missing}/trigger"),
            ]:
                response = await http.request(method, path)
                assert response.status_code == 405, (method, path)
                assert response.json() == {"error": "Method not allowed."}

    run(scenario)


def test_a_cursor_of_one_listing_is_refused_by_another(site: Site) -> None:
    for i in range(3):
        site.start(fetch, {"n": i})

    async def scenario() -> None:
        async with site.http() as http:
            cursor = (await http.get("/api/jobs", params={"limit": "1"})).json()["next_cursor"]
            response = await http.get("/api/chains", params={"cursor": cursor})
            assert response.status_code == 400
            assert "jobs" in response.json()["error"]

    run(scenario)


# --- writes -------------------------------------------------------------------------


def test_trigger_makes_a_scheduled_job_due_and_refuses_a_blocked_one(site: Site) -> None:
    later = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))
    blocked = site.start(report, {"n": 2}, blockers=[later])

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            response = await http.post(f"/api/jobs/{later.id}/trigger", headers=WRITE)
            assert response.status_code == 200
            due = dt.datetime.fromisoformat(response.json()["job"]["scheduled_at"])
            assert due <= dt.datetime.now(dt.UTC)
            refused = await http.post(f"/api/jobs/{blocked.id}/trigger", headers=WRITE)
            assert refused.status_code == 409
            assert "blocked" in refused.json()["error"]
            unknown = await http.post(f"/api/jobs/{uuid.uuid4()}/trigger", headers=WRITE)
            assert unknown.status_code == 404

    run(scenario)


def test_delete_refuses_a_referenced_blocker_then_cascades(site: Site) -> None:
    blocker = site.start(fetch, {"n": 1})
    dependent = site.start(report, {"n": 2}, blockers=[blocker])

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            refused = await http.delete(f"/api/chains/{blocker.id}", headers=WRITE)
            assert refused.status_code == 409
            assert str(dependent.id) in refused.json()["error"]
            assert site.status(blocker.id) == "pending"
            gone = await http.delete(
                f"/api/chains/{dependent.id}", params={"cascade": "true"}, headers=WRITE
            )
            assert gone.status_code == 200
            assert {c["id"] for c in gone.json()["deleted"]} == {str(dependent.id), str(blocker.id)}
            assert (await http.get(f"/api/chains/{blocker.id}")).status_code == 404
            again = await http.delete(f"/api/chains/{dependent.id}", headers=WRITE)
            assert again.status_code == 404

    run(scenario)


def test_retry_and_cancel_through_the_api(site: Site) -> None:
    failed = site.start(fetch, {"n": 1})
    site.set_job(failed.id, status="failed", completed_at=dt.datetime.now(dt.UTC))
    open_chain = site.start(fetch, {"n": 2})

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            retried = await http.post(f"/api/jobs/{failed.id}/retry", headers=WRITE)
            assert retried.status_code == 200
            assert retried.json()["job"]["status"] == "pending"
            again = await http.post(f"/api/jobs/{failed.id}/retry", headers=WRITE)
            assert again.status_code == 409
            cancelled = await http.post(
                f"/api/chains/{open_chain.id}/cancel",
                json={"reason": "no longer needed"},
                headers=WRITE,
            )
            assert cancelled.json() == {"cancelled": [str(open_chain.id)]}
            assert site.status(open_chain.id) == "cancelled"

    run(scenario)


def test_bulk_trigger_skips_what_it_cannot_and_bulk_delete_is_all_or_nothing(site: Site) -> None:
    later = [site.start(fetch, {"n": i}, run_in=dt.timedelta(hours=1)) for i in range(3)]
    blocked = site.start(report, {"n": 9}, blockers=[later[0]])

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            ids = [str(c.id) for c in later] + [str(blocked.id)]
            body = (await http.post("/api/jobs/trigger", json={"ids": ids}, headers=WRITE)).json()
            assert body["done"] == ids[:3]
            assert [s["id"] for s in body["skipped"]] == [str(blocked.id)]
            assert "blocked" in body["skipped"][0]["error"]
            refused = await http.post("/api/chains/delete", json={"ids": ids[:2]}, headers=WRITE)
            assert refused.status_code == 409
            assert site.status(later[1].id) == "pending"
            deleted = await http.post("/api/chains/delete", json={"ids": ids}, headers=WRITE)
            assert len(deleted.json()["deleted"]) == 4
            for bad in ({"ids": []}, {"ids": ["nope"]}, {"nothing": 1}):
                response = await http.post("/api/jobs/trigger", json=bad, headers=WRITE)
                assert response.status_code == 400
            not_json = await http.post("/api/jobs/trigger", content=b"{", headers=WRITE)
            assert not_json.status_code == 400

    run(scenario)


# --- guards -------------------------------------------------------------------------


def test_read_only_refuses_every_write_and_changes_nothing(site: Site) -> None:
    later = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))

    async def scenario() -> None:
        async with site.http() as http:
            for method, path in [
                ("POST", f"/api/jobs/{later.id}/trigger"),
                ("POST", f"/api/jobs/{later.id}/retry"),
                ("POST", f"/api/chains/{later.id}/cancel"),
                ("DELETE", f"/api/chains/{later.id}"),
            ]:
                response = await http.request(method, path, headers=WRITE)
                assert response.status_code == 403
                assert "read_only=False" in response.json()["error"]
            assert (await http.get(f"/api/chains/{later.id}")).status_code == 200

    run(scenario)
    assert site.status(later.id) == "pending"


def test_authorize_is_asked_for_every_request(site: Site) -> None:
    chain = site.start(fetch, {"n": 1})
    asked: list[str] = []

    def authorize(request: Any) -> bool:
        asked.append(request.url.path)
        return request.headers.get("authorization") == "Bearer ops"

    async def scenario() -> None:
        async with site.http(authorize=authorize, read_only=False) as http:
            for path in ("/api/chains", f"/api/chains/{chain.id}", "/", "/static/app.css"):
                assert (await http.get(path)).status_code == 401, path
            refused = await http.delete(f"/api/chains/{chain.id}", headers=WRITE)
            assert refused.status_code == 401
            ok = await http.get("/api/chains", headers={"Authorization": "Bearer ops"})
            assert ok.status_code == 200

    run(scenario)
    assert len(asked) == 6
    assert site.status(chain.id) == "pending"


def test_an_async_authorize_may_answer_with_its_own_response(site: Site) -> None:
    from starlette.responses import Response

    async def authorize(request: Any) -> bool | Response:
        if request.headers.get("authorization") == "Basic b3BzOm9wcw==":
            return True
        return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="queuert"'})

    async def scenario() -> None:
        async with site.http(authorize=authorize) as http:
            challenged = await http.get("/api/stats")
            assert challenged.status_code == 401
            assert challenged.headers["www-authenticate"] == 'Basic realm="queuert"'
            ok = await http.get("/api/stats", auth=("ops", "ops"))
            assert ok.status_code == 200

    run(scenario)


def test_cross_site_writes_are_refused(site: Site) -> None:
    later = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))
    path = f"/api/jobs/{later.id}/trigger"

    async def scenario() -> None:
        async with site.http(read_only=False) as http:
            for headers in [
                {},  # a plain form post from anywhere cannot add X-Requested-With
                {**WRITE, "Origin": "https://evil.example"},
                {**WRITE, "Origin": "null"},
                {**WRITE, "Sec-Fetch-Site": "cross-site"},
                {**WRITE, "Referer": "https://evil.example/page"},
            ]:
                response = await http.post(path, headers=headers)
                assert response.status_code == 403, headers
            assert site.status(later.id) == "pending"
            same = await http.post(path, headers={**WRITE, "Origin": "http://dash"})
            assert same.status_code == 200

    run(scenario)


def test_every_response_carries_the_security_headers(site: Site) -> None:
    async def scenario() -> None:
        async with site.http() as http:
            for path in ("/api/chains", "/", "/chains", f"/api/chains/{uuid.uuid4()}"):
                headers = (await http.get(path)).headers
                csp = headers["content-security-policy"]
                assert "script-src 'self'" in csp
                assert "frame-ancestors 'none'" in csp
                assert "unsafe-inline" not in csp
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["x-frame-options"] == "DENY"
            assert (await http.get("/static/app.js")).headers["x-content-type-options"] == "nosniff"

    run(scenario)
