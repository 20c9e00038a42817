"""Logging in and out of the console, and what a page learns of its session (its CSRF token).

The sessions, tokens and login limits themselves are in services/console/auth.py; every login, failed
login and logout is audited.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.console import metrics
from services.console.auth import COOKIE
from services.console.context import CONSOLE, client, error

__all__ = ["ROUTES"]


async def login(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    address = client(request)
    limiter = console.auth.limiter
    wait = limiter.retry_after(address)
    if wait > 0:
        metrics.LOGINS.labels("limited").inc()
        return web.json_response(
            {"error": f"too many failed logins from {address}; try again in {int(wait) + 1} s"},
            status=429,
            headers={"Retry-After": str(int(wait) + 1)},
        )
    try:
        body = await request.json() if request.content_type == "application/json" else dict(await request.post())
        password = str(body.get("password", ""))
    except (ValueError, AttributeError, RecursionError):
        return error(400, 'send {"password": "..."} as JSON')
    if not console.auth.check_password(password):
        limiter.failed(address)
        metrics.LOGINS.labels("failed").inc()
        await console.audit("console.login_failed", "admin", actor=f"console:?@{address}", address=address)
        if limiter.flooded():
            await asyncio.sleep(1.0)  # a site-wide flood is answered slowly; the right password never is
        return error(401, "wrong password")
    limiter.succeeded(address)
    metrics.LOGINS.labels("ok").inc()
    await console.audit("console.login", "admin", actor=f"console:admin@{address}", address=address)
    opened = console.auth.open_session()
    response = web.json_response({"csrf": opened.csrf})
    response.set_cookie(
        COOKIE,
        opened.token,
        httponly=True,
        samesite="Strict",
        path="/",
        max_age=int(console.auth.session_s),
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    session_ = request.get("session")
    if session_ is not None:
        console = request.app[CONSOLE]
        console.auth.close_session(session_.token)
        address = client(request)
        await console.audit("console.logout", "admin", actor=f"console:admin@{address}", address=address)
    response = web.json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


async def session(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    session_ = request.get("session")
    return web.json_response(
        {
            "auth": request["auth"],
            "csrf": session_.csrf if session_ is not None else None,
            "site": console.config.site.name,
            "fleet": console.fleet is not None,  # console.fleet: the pages link the Fleet page only then
        }
    )


ROUTES = [
    ("POST", "/api/login", login),
    ("POST", "/api/logout", logout),
    ("GET", "/api/session", session),
]
