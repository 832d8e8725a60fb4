"""``Dashboard``: the ASGI application, its routes and the guard every endpoint passes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from queuert_sa._client import Queuert
from queuert_sa._errors import (
    BlockerReferenceError,
    ChainNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidCursorError,
    InvalidJobIdError,
    JobNotFoundError,
    JobNotRetryableError,
    JobNotTriggerableError,
)
from queuert_sa._logs import get_logger
from queuert_sa._schedules import Schedule

from . import _api, _pages
from . import _security as security
from ._params import BadRequest
from ._security import Authorize
from ._source import Source

if TYPE_CHECKING:
    from a2wsgi.wsgi_typing import WSGIApp

    from queuert_sa._async_client import AsyncQueuert

__all__ = ["Authorize", "Dashboard"]

log = get_logger("queuert_sa.dashboard")

_STATUS_OF: list[tuple[tuple[type[Exception], ...], int]] = [
    ((BadRequest, InvalidCursorError, InvalidJobIdError), 400),
    ((ChainNotFoundError, JobNotFoundError), 404),
    ((BlockerReferenceError, JobNotTriggerableError, JobNotRetryableError), 409),
]


def status_of(exc: Exception) -> int | None:
    """The HTTP status of an error the dashboard answers (None: a bug, re-raised)."""
    for kinds, status in _STATUS_OF:
        if isinstance(exc, kinds):
            return status
    if isinstance(exc, (DatabaseUnavailableError, sa_exc.OperationalError)):
        return 503
    if isinstance(exc, (DatabaseError, sa_exc.SQLAlchemyError)):
        return 500
    return None


def message_of(exc: Exception, status: int) -> str:
    """What the answer says of ``exc``: its own message, or the database's first line."""
    if status < 500:
        return str(exc)
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
    what = "is unreachable" if status == 503 else "failed the request"
    return f"The database {what} ({first}); nothing was changed. Try again."


class Core:
    """What every endpoint needs: the client, the guards' settings, the page templates."""

    def __init__(
        self,
        source: Source,
        *,
        authorize: Authorize | None,
        read_only: bool,
        title: str,
        schedules: Sequence[Schedule],
    ) -> None:
        self.source = source
        self.schedules = list(schedules)
        self.authorize = authorize
        self.read_only = read_only
        self.title = title
        self.pages = _pages.Templates(self)


Handler = Callable[[Core, Request], Awaitable[Any]]


async def _refusal(core: Core, request: Request, *, api: bool, writes: bool) -> Response | None:
    """The response refusing ``request``, or None to let it through."""
    answer = await security.authorized(core.authorize, request)
    if isinstance(answer, Response):
        return answer
    if not answer:
        return _error(core, request, 401, "Not authorized to use this dashboard.", api=api)
    if not writes:
        return None
    if core.read_only:
        message = (
            "This dashboard is read-only: create it with Dashboard(queuert, read_only=False) "
            "to allow triggering, retrying, cancelling and deleting."
        )
        return _error(core, request, 403, message, api=api)
    why = security.cross_site(request)
    if why is not None:
        return _error(core, request, 403, f"Refused a cross-site write: {why}.", api=api)
    if api and security.API_WRITE_HEADER not in request.headers:
        message = (
            "API writes need the header X-Requested-With (any value, e.g. 'queuert'): "
            "it shows the request is not a form posted from another site."
        )
        return _error(core, request, 403, message, api=api)
    return None


def _error(core: Core, request: Request, status: int, message: str, *, api: bool) -> Response:
    if api:
        response: Response = JSONResponse({"error": message}, status_code=status)
    else:
        response = core.pages.error(request, status, message)
    return security.with_headers(request, response)


def _endpoint(core: Core, handler: Handler, *, api: bool, writes: bool) -> Callable[..., Any]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        refusal = await _refusal(core, request, api=api, writes=writes)
        if refusal is not None:
            return refusal
        if writes and not api:
            form = await _pages.read_form(request)
            if not security.form_token_matches(request, form.get(security.CSRF_FIELD)):
                message = "The form's security token is missing or stale; reload the page."
                return _error(core, request, 403, message, api=False)
            request.scope["queuert_form"] = form
        try:
            result = await handler(core, request)
        except Exception as exc:
            status = status_of(exc)
            if status is None:
                raise
            if status >= 500:
                log.warning("dashboard %s %s: %s", request.method, request.url.path, exc)
            return _error(core, request, status, message_of(exc, status), api=api)
        response = result if isinstance(result, Response) else JSONResponse(result)
        return security.with_headers(request, response)

    return endpoint


def _static(core: Core) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    files = StaticFiles(directory=str(resources.files("queuert_sa.dashboard") / "static"))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        answer = await security.authorized(core.authorize, request)
        if answer is not True:
            refused = answer if isinstance(answer, Response) else PlainTextResponse("", 401)
            await refused(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Cache-Control"] = "public, max-age=300"
            await send(message)

        await files(scope, receive, send_with_headers)

    return app


def _routes(core: Core) -> list[BaseRoute]:
    api = [
        Route(path, _endpoint(core, fn, api=True, writes=w), methods=[method])
        for path, method, fn, w in _api.ROUTES
    ]
    pages = [
        Route(path, _endpoint(core, fn, api=False, writes=w), methods=[method])
        for path, method, fn, w in _pages.ROUTES
    ]
    return [Mount("/api", routes=api), Mount("/static", app=_static(core)), *pages]


class Dashboard:
    """The web dashboard of a :class:`~queuert_sa.Queuert` or :class:`~queuert_sa.AsyncQueuert`.

    An ASGI application: mount it in FastAPI or Starlette
    (``app.mount("/queuert", dashboard)``), or serve it alone (``uvicorn``,
    ``queuert-sa dashboard``); :meth:`wsgi` serves it to Flask or Django.
    Links and assets follow the mount prefix (ASGI ``root_path``).

    Args:
        queuert: The client whose database it shows.
        authorize: Called with every request (a Starlette ``Request``); return
            True to serve it, False for a 401, or a ``Response`` to send
            instead (a Basic-auth challenge, a redirect to a login page). May
            be ``async``. None serves everyone: only for a dashboard reachable
            by its operators alone.
        read_only: When True (the default) every write (trigger, retry,
            cancel, delete) is refused with 403 and the pages offer none.
        title: The name in the pages' header and titles.
        schedules: Recurring schedules to show (``worker.schedules``): a
            page and ``/api/schedules`` with each one's next and last tick.
    """

    def __init__(
        self,
        queuert: Queuert | AsyncQueuert,
        *,
        authorize: Authorize | None = None,
        read_only: bool = True,
        title: str = "queuert",
        schedules: Sequence[Schedule] = (),
    ) -> None:
        self.core = Core(
            Source(queuert),
            authorize=authorize,
            read_only=read_only,
            title=title,
            schedules=schedules,
        )
        handlers: dict[Any, Callable[[Request, Exception], Any]] = {HTTPException: self._http_error}
        self.app = Starlette(routes=_routes(self.core), exception_handlers=handlers)

    @property
    def read_only(self) -> bool:
        return self.core.read_only

    @property
    def authorize(self) -> Authorize | None:
        return self.core.authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope["queuert_base"] = scope.get("root_path", "")
        await self.app(scope, receive, send)

    def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: "Not found.", 405: "Method not allowed."}.get(exc.status_code, exc.detail)
        path, root = request.scope.get("path", ""), security.dashboard_base(request)
        local = path[len(root) :] if root and path.startswith(root) else path
        api = local == "/api" or local.startswith("/api/")
        response = _error(self.core, request, exc.status_code, message, api=api)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    def wsgi(self) -> WSGIApp:
        """This dashboard as a WSGI application, for Flask or Django.

        Mount it under a prefix with Werkzeug's ``DispatcherMiddleware``::

            app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/queuert": dashboard.wsgi()})

        Needs the ``dashboard`` extra (it brings ``a2wsgi``). With an
        ``AsyncQueuert`` the dashboard runs on a2wsgi's event loop thread.
        """
        from a2wsgi import ASGIMiddleware

        return ASGIMiddleware(self)  # type: ignore[arg-type]
