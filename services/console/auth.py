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
import ipaddress
import secrets
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["COOKIE", "Auth", "LoginLimiter", "Session", "client_address"]

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
    """Failed logins slow down the address they come from, never anybody else.

    Per address, ``per_client`` failures within ``window_s`` are free; each one after that doubles the
    wait before the next try (30 s, 60 s, 120 s ... up to ``max_wait_s``). Site-wide, more than ``overall``
    failures a minute is a flood: it is reported (and wrong passwords are answered slowly), but the
    right password from an address that has not failed is never refused — one attacker must not lock
    the admin out, and behind a proxy the address is the client's (see ``console.trusted_proxies``).
    """

    def __init__(
        self,
        per_client: int = 5,
        overall: int = 30,
        window_s: float = 900.0,
        first_wait_s: float = 30.0,
        max_wait_s: float = 300.0,
    ) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self.first_wait_s, self.max_wait_s = first_wait_s, max_wait_s
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def retry_after(self, client: str, now: float | None = None) -> float:
        """Seconds until this client may try again; 0 when it may now."""
        now = time.monotonic() if now is None else now
        failures = self._failures.get(client)
        if not failures:
            return 0.0
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        excess = len(failures) - self.per_client
        if excess < 0:
            return 0.0
        return max(0.0, failures[-1] + min(self.max_wait_s, self.first_wait_s * 2.0**excess) - now)

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._failures.setdefault(client, deque(maxlen=64)).append(now)
        self._all.append(now)
        while self._all and self._all[0] <= now - 60.0:
            self._all.popleft()
        if len(self._failures) > 10_000:  # an address sweep must not grow this without bound
            self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self.window_s}

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    def flooded(self, now: float | None = None) -> bool:
        """More than ``overall`` failed logins site-wide in the last minute."""
        now = time.monotonic() if now is None else now
        while self._all and self._all[0] <= now - 60.0:
            self._all.popleft()
        return len(self._all) > self.overall


def client_address(request: web.Request, trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address: the peer's, or — where the peer is a trusted proxy — the rightmost
    X-Forwarded-For entry that is not one (anything left of it could be written by the client)."""
    peer = request.remote or "?"
    if not trusted_proxies or not _within(peer, trusted_proxies):
        return peer
    hops = [hop.strip() for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
    for hop in reversed([hop for hop in hops if hop]):
        if not _within(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # not an address: the proxy did not write it
    return peer


def _within(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class Auth:
    def __init__(
        self, password: str, tokens: list[str], *, session_s: float, trusted_proxies: list[str] | None = None
    ) -> None:
        self.trusted_proxies = [ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies or []]
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
        request["client"] = client_address(request, self.trusted_proxies)
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
    if request.path == "/":
        raise web.HTTPFound("/login")
    raise web.HTTPFound(f"/login?next={urllib.parse.quote(request.path_qs, safe='/')}")
