"""A Flask app that starts job chains in its request transactions.

    pip install 'queuert_sa[dashboard]' flask
    python examples/flask_app.py            # serves on http://127.0.0.1:5000 (or $PORT)
    curl -X POST localhost:5000/signup -H 'content-type: application/json' -d '{"email": "ada@example.com"}'
    curl localhost:5000/chains/<chain id>
    open http://127.0.0.1:5000/queuert/     # the dashboard: user "ops", password
                                            # $DASHBOARD_PASSWORD (default "ops")

POST /signup inserts a user and starts a "welcome" chain in ONE transaction:
an invalid email rolls back both. A worker running in the same process (a
background thread here; ``queuert-sa worker examples.flask_app:worker``, run
from the repository root, in its own process in production) sends the welcome
email and marks the user. The database is ``flask_example.db`` or
``$QUEUERT_DATABASE_URL``; importing this module creates the tables if missing, so
either way works on a fresh database. Ctrl+C stops the server and the worker.
The queuert dashboard is mounted at /queuert (WSGI, through Werkzeug's
DispatcherMiddleware), read-only, behind HTTP Basic auth.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import os
from typing import TypedDict

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from starlette.requests import Request
from starlette.responses import Response
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import queuert_sa as q
from queuert_sa.dashboard import Dashboard


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "example_user"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    welcomed_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class UserIn(TypedDict):
    user_id: int


class Sent(TypedDict):
    to: str
    message_id: str


job_types = q.JobTypes()
welcome = job_types.entry("send-welcome", input=UserIn, output=Sent)

engine = create_engine(os.environ.get("QUEUERT_DATABASE_URL", "sqlite:///flask_example.db"))
# Before any worker or request uses them. Production: the Alembic branch (docs/alembic.md).
q.metadata.create_all(engine)
Base.metadata.create_all(engine)
queuert = q.Queuert(engine, job_types)
worker = queuert.worker(concurrency=2)


@worker.handler(welcome)
def send_welcome(attempt: q.Attempt[UserIn, Sent]) -> q.Outcome:
    user = attempt.session.get_one(User, attempt.input["user_id"])
    message_id = f"msg-{attempt.job.id.hex[:12]}"  # a real app calls its mailer here
    user.welcomed_at = dt.datetime.now(dt.UTC)  # commits together with the completion
    return attempt.complete({"to": user.email, "message_id": message_id})


DASHBOARD_PASSWORD = os.environ.get("DASHBOARD_PASSWORD", "ops")


def operators_only(request: Request) -> bool | Response:
    """HTTP Basic auth as "ops"; a real app checks its own login here."""
    expected = base64.b64encode(f"ops:{DASHBOARD_PASSWORD}".encode()).decode()
    if hmac.compare_digest(request.headers.get("authorization", ""), f"Basic {expected}"):
        return True
    return Response(status_code=401, headers={"WWW-Authenticate": 'Basic realm="queuert"'})


def create_app() -> Flask:
    app = Flask(__name__)
    dashboard = Dashboard(queuert, authorize=operators_only)  # read-only by default
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/queuert": dashboard.wsgi()}
    )

    @app.post("/signup")
    def signup() -> ResponseReturnValue:
        email = str((request.get_json(silent=True) or {}).get("email", ""))
        with Session(engine) as session, session.begin():
            user = User(email=email)
            session.add(user)
            session.flush()
            chain = queuert.start_chain(session, welcome, {"user_id": user.id})
            if "@" not in email:
                # Raising inside the transaction rolls back the user AND the job.
                abort(400, description="invalid email: nothing was stored")
            user_id = user.id
        return jsonify(user_id=user_id, chain_id=str(chain.id)), 201

    @app.get("/chains/<chain_id>")
    def chain_status(chain_id: str) -> ResponseReturnValue:
        try:
            chain = queuert.get_chain(chain_id, welcome)
        except (q.ChainNotFoundError, q.InvalidJobIdError):
            abort(404)
        return jsonify(id=str(chain.id), status=chain.status, output=chain.output)

    return app


if __name__ == "__main__":
    worker.start()
    try:
        create_app().run(port=int(os.environ.get("PORT", "5000")))
    finally:
        worker.stop()
