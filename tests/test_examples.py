"""The Flask example behaves as its docstring says, on a real SQLite file."""

from __future__ import annotations

import importlib
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import queuert_sa as q

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'flask.db'}")
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("flask_app", None)
    module = importlib.import_module("flask_app")
    yield module
    module.engine.dispose()
    sys.modules.pop("flask_app", None)


def test_signup_commits_user_and_chain_and_worker_welcomes(flask_example: ModuleType) -> None:
    app = flask_example.create_app()
    http = app.test_client()
    done = threading.Event()
    flask_example.worker.start()
    try:
        response = http.post("/signup", json={"email": "ada@example.com"})
        assert response.status_code == 201
        chain_id = response.get_json()["chain_id"]
        # Subscribe, then check: a completion before the subscription is seen by the check.
        flask_example.queuert.notify.listen_chain_completed(
            uuid.UUID(chain_id), lambda _id: done.set()
        )
        chain = flask_example.queuert.get_chain(chain_id)
        assert chain.is_completed or done.wait(20)
    finally:
        assert flask_example.worker.stop()

    body = http.get(f"/chains/{chain_id}").get_json()
    assert body["status"] == "completed"
    assert body["output"]["to"] == "ada@example.com"
    with Session(flask_example.engine) as s:
        user = s.scalars(select(flask_example.User)).one()
        assert user.welcomed_at is not None


def test_invalid_signup_stores_neither_user_nor_job(flask_example: ModuleType) -> None:
    app = flask_example.create_app()
    response = app.test_client().post("/signup", json={"email": "not-an-email"})
    assert response.status_code == 400
    with Session(flask_example.engine) as s:
        assert s.execute(select(func.count()).select_from(flask_example.User)).scalar_one() == 0
        assert s.execute(select(func.count()).select_from(q.models.Job)).scalar_one() == 0
    assert app.test_client().get("/chains/not-a-uuid").status_code == 404
