"""Who may use the console: browser sessions after a login, API clients with bearer tokens.

Sessions live in this process's memory (a console restart logs everybody out), keyed by a random
token in an HttpOnly, SameSite=Strict cookie; each carries its own CSRF token, required in the
``X-CSRF-Token`` header of every change made with the cookie. Kept here rather than in aiohttp-session
because the server must be able to forget a session (logout, expiry), which a signed cookie cannot.
Comparisons of secrets are constant-time; failed logins are limited per client address and in all.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["COOKIE", "Auth", "LoginLimiter", "Session"]

COOKIE = "edgesight_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Reachable without credentials: the login page, its API and the static assets (no data in them).
PUBLIC_PATHS = frozenset({"/login", "/api/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class Session:
    token: str
    csrf: str
    expires: float  # time.monotonic()
    user: str = "admin"


class LoginLimiter:
    """At most ``per_client`` failed logins per address and ``overall`` in all within ``window_s``."""

    def __init__(self, per_client: int = 5, overall: int = 30, window_s: float = 60.0) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        waits = [0.0]
        for failures, limit in ((self._failures.get(client, deque()), self.per_client), (self._all, self.overall)):
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) >= limit:
                waits.append(failures[0] + self.window_s - now)
        return max(waits)

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._failures.setdefault(client, deque()).append(now)
        self._all.append(now)
        if len(self._failures) > 10_000:  # an address sweep must not grow this without bound
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self.window_s}


class Auth:
    def __init__(self, password: str, tokens: list[str], *, session_s: float) -> None:
        self._password = password.encode()
        self._tokens = [token.encode() for token in tokens]
        self.session_s = session_s
        self.sessions: dict[str, Session] = {}
        self.limiter = LoginLimiter()

    # -- logins ------------------------------------------------------------------------------
    def check_password(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._password)

    def open_session(self) -> Session:
        now = time.monotonic()
        self.sessions = {k: s for k, s in self.sessions.items() if s.expires > now}
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.session_s)
        self.sessions[session.token] = session
        return session

    def close_session(self, token: str) -> None:
        self.sessions.pop(token, None)

    def session_of(self, request: web.Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        session = self.sessions.get(token) if token else None
        if session is None or session.expires <= time.monotonic():
            return None
        return session

    def token_ok(self, request: web.Request) -> bool | None:
        """True/False for a request with a bearer token (right/wrong), None for one without."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        candidate = token.strip().encode()
        # every token is compared, so the time taken does not tell which one was near
        return any([hmac.compare_digest(candidate, known) for known in self._tokens])

    # -- the middleware ------------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        bearer = self.token_ok(request)
        if bearer is not None:
            if not bearer:
                return _unauthorized(request, "invalid bearer token")
            request["auth"] = "token"
            return await handler(request)
        session = self.session_of(request)
        if session is None:
            return _unauthorized(request, "log in first (or send Authorization: Bearer <token>)")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and origin.split("://", 1)[-1] != request.host:
                return web.json_response({"error": "cross-origin request refused"}, status=403)
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                return web.json_response({"error": f"missing or wrong {CSRF_HEADER} header"}, status=403)
        request["auth"] = "session"
        request["session"] = session
        return await handler(request)


def _unauthorized(request: web.Request, reason: str) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        return web.json_response(
            {"error": reason}, status=401, headers={"WWW-Authenticate": 'Bearer realm="edgesight"'}
        )
    raise web.HTTPFound(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
