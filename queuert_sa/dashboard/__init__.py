"""The web dashboard: chains, jobs, counts and charts, with auth, in any ASGI or WSGI app.

::

    from queuert_sa.dashboard import Dashboard

    dashboard = Dashboard(queuert, authorize=is_operator, read_only=False)
    app.mount("/queuert", dashboard)                      # FastAPI / Starlette
    flask_app.wsgi_app = DispatcherMiddleware(            # Flask / Django
        flask_app.wsgi_app, {"/queuert": dashboard.wsgi()})

Needs the ``dashboard`` extra (``pip install 'queuert_sa[dashboard]'``:
Starlette, Jinja2 and a2wsgi). Every asset ships in the package: no CDN, no
build step, works offline. See ``docs/dashboard.md``.
"""

from __future__ import annotations

from ._app import Authorize, Dashboard

__all__ = ["Authorize", "Dashboard"]
