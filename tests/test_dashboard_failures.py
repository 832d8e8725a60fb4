"""The dashboard's writes when things go wrong: a failed COMMIT, an unreachable database,
and a worker running the very job an operator acts on, on real connections."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.dashboard import Dashboard

from . import app
from .conftest import Db
from .test_dashboard_api import WRITE, Site, fetch, run, types


async def call(dashboard: Dashboard, method: str, path: str, **options: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=dashboard)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
        return await http.request(method, path, **options)


def test_a_trigger_whose_commit_fails_changes_nothing_and_says_so(pg: Db) -> None:
    """A deferred constraint trigger fails the transaction at COMMIT, after the UPDATE ran."""
    client = q.Queuert(pg.engine, types)
    site = Site(pg, "sync", client)
    later = site.start(fetch, {"n": 1}, run_in=dt.timedelta(hours=1))
    notify = q.InMemoryNotify()
    woken: list[str] = []
    notify.listen_job_scheduled(["fetch"], lambda name, count: woken.append(name))
    dashboard = Dashboard(q.Queuert(pg.engine, types, notify=notify), read_only=False)
    with pg.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused at commit' USING ERRCODE = 'check_violation'; "
                "END $$"
            )
        )
        conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON queuert_job "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
            )
        )
    try:
        response = asyncio.run(
            call(dashboard, "POST", f"/api/jobs/{later.id}/trigger", headers=WRITE)
        )
    finally:
        with pg.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_at_commit ON queuert_job"))
            conn.execute(text("DROP FUNCTION refuse_at_commit()"))
    assert response.status_code == 500
    error = response.json()["error"]
    assert "refused at commit" in error
    assert "nothing was changed" in error
    assert response.headers["x-content-type-options"] == "nosniff"
    job = client.get_job(later.id)
    assert job.scheduled_at > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=50)
    assert woken == []  # no wake-up for a write that did not commit


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_unreachable_database_is_a_503_with_the_reason(flavour: str) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    if flavour == "sync":
        engine = create_engine(url)
        queuert: q.Queuert | q.AsyncQueuert = q.Queuert(engine, types)
    else:
        from sqlalchemy.ext.asyncio import create_async_engine

        async_engine = create_async_engine(url)
        queuert = q.AsyncQueuert(async_engine, types)

    async def scenario() -> None:
        dashboard = Dashboard(queuert)
        for path in ("/api/chains", "/chains", "/"):
            response = await call(dashboard, "GET", path)
            assert response.status_code == 503, path
            assert "The database is unreachable" in response.text
        if flavour == "async":
            await async_engine.dispose()

    run(scenario)
    if flavour == "sync":
        engine.dispose()


def test_deleting_a_chain_a_worker_is_running_waits_and_the_work_is_done_once(pg: Db) -> None:
    """An atomic attempt holds its job's row lock: the delete waits for its COMMIT, then
    deletes the completed chain; the handler's write stays, exactly once."""
    client = q.Queuert(pg.engine, app.job_types)
    with Session(pg.engine) as s, s.begin():
        chain = client.start_chain(s, app.work, {"n": 1, "sleep": 0.0})
    inside, release = threading.Event(), threading.Event()
    worker = client.worker(poll_interval=0.05)

    @worker.handler(app.work)
    def slow(attempt: q.Attempt[app.WorkIn, int]) -> q.Outcome:
        attempt.session.add(app.Effect(job_id=str(attempt.job.id), label="slow"))
        inside.set()
        assert release.wait(10)
        return attempt.complete(1)

    worker.start()
    try:
        assert inside.wait(10)
        dashboard = Dashboard(client, read_only=False)
        result: dict[str, httpx.Response] = {}
        deleting = threading.Thread(
            target=lambda: result.update(
                response=asyncio.run(
                    call(dashboard, "DELETE", f"/api/chains/{chain.id}", headers=WRITE)
                )
            )
        )
        deleting.start()
        deleting.join(0.5)
        assert deleting.is_alive(), "the delete did not wait for the attempt's row lock"
        release.set()
        deleting.join(10)
        assert result["response"].status_code == 200
        deleted = result["response"].json()["deleted"]
        assert [(c["id"], c["status"]) for c in deleted] == [(str(chain.id), "completed")]
    finally:
        release.set()
        assert worker.stop(timeout=10)
    with Session(pg.engine) as s:
        labels = s.scalars(select(app.Effect.label)).all()
    assert labels == ["slow"]
    with pytest.raises(q.ChainNotFoundError):
        client.get_chain(chain.id)


def test_a_bulk_trigger_racing_a_worker_skips_the_job_it_took(pg: Db) -> None:
    """Between the list the operator saw and the click, a worker took one job: the bulk
    trigger waits for the row, finds it no longer pending and reports it skipped."""
    client = q.Queuert(pg.engine, app.job_types)
    with Session(pg.engine) as s, s.begin():
        taken = client.start_chain(s, app.work, {"n": 2, "sleep": 0.0})
        later = client.start_chain(
            s, app.work, {"n": 3, "sleep": 0.0}, run_in=dt.timedelta(hours=1)
        )
    inside, release = threading.Event(), threading.Event()
    worker = client.worker(poll_interval=0.05)

    @worker.handler(app.work)
    def hold(attempt: q.Attempt[app.WorkIn, int]) -> q.Outcome:
        inside.set()
        assert release.wait(10)
        return attempt.complete(1)

    worker.start()
    try:
        assert inside.wait(10)
        dashboard = Dashboard(client, read_only=False)
        holder = threading.Timer(0.3, release.set)
        holder.start()
        ids = [str(taken.id), str(later.id)]
        response = asyncio.run(
            call(dashboard, "POST", "/api/jobs/trigger", json={"ids": ids}, headers=WRITE)
        )
        holder.join()
    finally:
        release.set()
        assert worker.stop(timeout=10)
    body = response.json()
    assert [s["id"] for s in body["skipped"]] == [str(taken.id)]
    assert body["done"] == [str(later.id)]
    assert client.get_job(taken.id).status == "completed"
