"""A dashboard for ``queuert-sa dashboard tests.dashboard_app:dashboard`` (the CLI tests).

Its database is ``$QUEUERT_DATABASE_URL``; requests need ``Authorization: Bearer ops``.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from starlette.requests import Request

import queuert_sa as q
from queuert_sa.dashboard import Dashboard

from .app import job_types

engine = create_engine(os.environ.get("QUEUERT_DATABASE_URL", "sqlite://"))


def bearer_ops(request: Request) -> bool:
    return request.headers.get("authorization") == "Bearer ops"


queuert = q.Queuert(engine, job_types)
dashboard = Dashboard(queuert, authorize=bearer_ops)
