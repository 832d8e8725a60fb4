"""The dashboard's guards: authorization, read-only, CSRF, and the response headers.

* ``authorize(request)`` is asked for every request (pages, API, assets); a
  false answer is a 401, and a ``Response`` it returns is sent as is (a Basic
  challenge, a redirect to a login page).
* Writes (``POST``, ``DELETE``) are refused with 403 unless the dashboard was
  made with ``read_only=False``.
* A write must come from the dashboard's own origin: a browser's ``Origin``
  (or ``Sec-Fetch-Site``) naming another site is refused. Forms carry a token
  that must match the ``queuert_csrf`` cookie (double submit); API writes
  need an ``X-Requested-With`` header, which no page of another site can send
  without a CORS grant, and the dashboard grants none.
* Every response says ``nosniff``, may not be framed, and carries a Content
  Security Policy allowing only the dashboard's own scripts and styles: a job
  input that smuggled markup past the escaping could still run nothing.
"""

from __future__ import annotations

import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

#: ``authorize``: true to let the request through, false for a 401, or a response to send.
Authorize = Callable[[Request], "bool | Response | Awaitable[bool | Response]"]

CSRF_COOKIE = "queuert_csrf"
CSRF_FIELD = "csrf_token"
API_WRITE_HEADER = "x-requested-with"

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


async def authorized(authorize: Authorize | None, request: Request) -> bool | Response:
    """What ``authorize`` says of ``request`` (True when there is none)."""
    if authorize is None:
        return True
    answer = authorize(request)
    if inspect.isawaitable(answer):
        answer = await answer
    if isinstance(answer, Response):
        return answer
    return bool(answer)


def cross_site(request: Request) -> str | None:
    """Why ``request`` looks sent by another site's page, or None if it does not."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the browser says it comes from a {fetch_site} page"
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        if origin == "null" or origin.rstrip("/") != own:
            return f"its Origin {origin[:80]!r} is not the dashboard's ({own})"
        return None
    referer = request.headers.get("referer")
    if referer is not None and urlsplit(referer).netloc != request.url.netloc:
        return "its Referer is another site"
    return None


def dashboard_base(request: Request) -> str:
    """The path the dashboard is mounted at (``""`` at the root), without a trailing slash."""
    base: str = request.scope.get("queuert_base", "")
    return base.rstrip("/")


def csrf_token(request: Request) -> str:
    """The request's CSRF token: its cookie's, or a new one (set by :func:`with_headers`)."""
    token = request.cookies.get(CSRF_COOKIE)
    if token and len(token) >= 32:
        return token
    found: str | None = request.scope.get("queuert_csrf")
    if found is None:
        found = secrets.token_urlsafe(32)
        request.scope["queuert_csrf"] = found
    return found


def form_token_matches(request: Request, submitted: str | None) -> bool:
    """Whether a form's token is the one in the request's cookie."""
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted) and hmac.compare_digest(cookie or "", submitted or "")


def with_headers(request: Request, response: Response) -> Response:
    """``response`` with the security headers, and the CSRF cookie if the page made one."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")
    made: str | None = request.scope.get("queuert_csrf")
    if made is not None:
        path = request.scope.get("queuert_base", "") or "/"
        response.set_cookie(
            CSRF_COOKIE,
            made,
            path=path,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response
