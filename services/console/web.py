"""The console's web application (aiohttp): its routes and what every answer goes through (the request
count, the login check, the security headers). Documented in services/console/openapi.yaml.

The handlers are in one module per subject (``*_web.py``) and reach the console only through the
:class:`~services.console.context.ConsoleContext` kept in the application.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from services.console import (
    analytics_web,
    apps_web,
    audit_web,
    events_web,
    fleet_web,
    live_web,
    metrics,
    pages_web,
    rules_web,
    session_web,
)
from services.console.context import CONSOLE, ConsoleContext

__all__ = ["build_app"]

# Everything from this console only; no inline script or style, no framing by other sites.
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
MAX_BODY = 1 << 20  # a request body's bytes, at most: a larger one is answered 413


class _BadRequestsQuietly(logging.Filter):
    """aiohttp logs a request it cannot parse (a 200 KB header, a broken request line) with a traceback
    at error level; it already answered 400. One warning line without the traceback is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "bad HTTP request refused", ()
            record.exc_info, record.exc_text = None, None
            record.__dict__["error"] = f"{type(error).__name__}: {error.code}"
        return True


def build_app(console: ConsoleContext) -> web.Application:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestsQuietly) for f in server_log.filters):
        server_log.addFilter(_BadRequestsQuietly())
    app = web.Application(middlewares=[_count, console.auth.middleware, _security_headers], client_max_size=MAX_BODY)
    app[CONSOLE] = console
    for path, page in pages_web.PAGES.items():
        app.router.add_get(path, pages_web.page(page))
    app.router.add_static("/static/", pages_web.STATIC, append_version=True)
    routes = [
        *pages_web.ROUTES,
        *session_web.ROUTES,
        *live_web.ROUTES,
        *rules_web.ROUTES,
        *events_web.ROUTES,
        *audit_web.ROUTES,
        *apps_web.ROUTES,
        *analytics_web.ROUTES,
        *fleet_web.ROUTES,
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.REQUESTS.labels(str(exc.status)).inc()
        raise
    metrics.REQUESTS.labels(str(response.status)).inc()
    return response


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:  # a stream (MJPEG) has sent its headers already
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy", CSP)
    return response
