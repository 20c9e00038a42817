"""The console's pages and JSON API (aiohttp). Documented in services/console/openapi.yaml."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from common.audit import audit_path
from common.config.rules import LineRule, ZoneRule
from common.urls import redact_url
from services.console import apps_web, metrics, mjpeg, rule_policy
from services.console.auth import COOKIE
from services.console.context import CONSOLE, MAX_LIVE_FPS, iso
from services.console.history import EventQuery
from services.console.site_file import RulesRejected, SiteFileError, rule_changes

if TYPE_CHECKING:
    from services.console.service import ConsoleService

__all__ = ["build_app"]

STATIC = Path(__file__).parent / "static"
OPENAPI = Path(__file__).parent / "openapi.yaml"
FAVICON = STATIC / "favicon.svg"
# Everything from this console only; no inline script or style, no framing by other sites.
CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
MAX_NS = (1 << 63) - 1  # the largest time (and row id) SQLite stores
HEALTH_STALE_S = 3.0  # health intervals without a heartbeat before a service shows as missing
PAGES = {
    "/": "index.html",
    "/login": "login.html",
    "/events": "events.html",
    "/events/{id}": "events.html",  # an event's own URL: the timeline, opened at that event
    "/audit": "audit.html",
    "/apps": "apps.html",
    "/cameras/{name}": "camera.html",
    "/cameras/{name}/editor": "editor.html",
}


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


def build_app(console: ConsoleService) -> web.Application:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestsQuietly) for f in server_log.filters):
        server_log.addFilter(_BadRequestsQuietly())
    app = web.Application(middlewares=[_count, console.auth.middleware, _security_headers], client_max_size=1 << 20)
    app[CONSOLE] = console
    for path, page in PAGES.items():
        app.router.add_get(path, _page(page))
    app.router.add_static("/static/", STATIC, append_version=True)
    routes = [
        ("GET", "/favicon.ico", favicon),
        ("POST", "/api/login", login),
        ("POST", "/api/logout", logout),
        ("GET", "/api/session", session),
        ("GET", "/api/openapi.yaml", openapi),
        ("GET", "/api/cameras", cameras),
        ("GET", "/api/cameras/{name}/latest.jpg", latest_jpg),
        ("GET", "/api/cameras/{name}/live.mjpg", live_mjpg),
        ("GET", "/api/cameras/{name}/rules", get_rules),
        ("PUT", "/api/cameras/{name}/rules", put_rules),
        ("GET", "/api/counts", counts),
        ("GET", "/api/services", services),
        ("GET", "/api/events", events),
        ("GET", "/api/events/facets", event_facets),
        ("GET", "/api/events/{id}", event),
        ("GET", "/api/events/{id}/snapshot.jpg", snapshot),
        ("GET", "/api/audit", audit),
        *apps_web.ROUTES,
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    return app


@web.middleware
async def _count(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        metrics.REQUESTS.labels(str(exc.status)).inc()
        raise
    metrics.REQUESTS.labels(str(response.status)).inc()
    return response


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    if not response.prepared:  # a stream (MJPEG) has sent its headers already
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault(
            "Content-Security-Policy",
            CSP,
        )
    return response


def _page(name: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        console = request.app[CONSOLE]
        camera = request.match_info.get("name")
        if camera is not None and camera not in console.config.cameras:
            return _not_found_page(f"No camera named {camera[:64]!r}", "It is not in this site's file.")
        event_id = request.match_info.get("id")
        if event_id is not None and await asyncio.to_thread(console.history.get, event_id) is None:
            return _not_found_page("No such event", "It was pruned, or the console never saw it.")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    return handler


def _not_found_page(title: str, detail: str) -> web.Response:
    """A page's 404 for a person in a browser: a real page with a way back (the API answers JSON)."""
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Not found · EdgeSight</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<main class="notfound">
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(detail)}</p>
<p><a id="home" href="/">Back to the overview</a> · <a href="/events">Events</a></p>
</main>
</body>
</html>
"""
    return web.Response(status=404, text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        FAVICON, headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"}
    )


def _client(request: web.Request) -> str:
    """The client's address (through trusted proxies: see auth.client_address)."""
    return str(request.get("client") or request.remote or "?")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _camera(request: web.Request) -> str:
    name = request.match_info["name"]
    if name not in request.app[CONSOLE].config.cameras:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no camera {name[:64]!r}"}), content_type="application/json")
    return name


# -- session ------------------------------------------------------------------------------------
async def login(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    client = _client(request)
    limiter = console.auth.limiter
    wait = limiter.retry_after(client)
    if wait > 0:
        metrics.LOGINS.labels("limited").inc()
        return web.json_response(
            {"error": f"too many failed logins from {client}; try again in {int(wait) + 1} s"},
            status=429,
            headers={"Retry-After": str(int(wait) + 1)},
        )
    try:
        body = await request.json() if request.content_type == "application/json" else dict(await request.post())
        password = str(body.get("password", ""))
    except (ValueError, AttributeError, RecursionError):
        return _error(400, 'send {"password": "..."} as JSON')
    if not console.auth.check_password(password):
        limiter.failed(client)
        metrics.LOGINS.labels("failed").inc()
        await console.audit("console.login_failed", "admin", actor=f"console:?@{client}", address=client)
        if limiter.flooded():
            await asyncio.sleep(1.0)  # a site-wide flood is answered slowly; the right password never is
        return _error(401, "wrong password")
    limiter.succeeded(client)
    metrics.LOGINS.labels("ok").inc()
    await console.audit("console.login", "admin", actor=f"console:admin@{client}", address=client)
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
        request.app[CONSOLE].auth.close_session(session_.token)
        client = _client(request)
        await request.app[CONSOLE].audit("console.logout", "admin", actor=f"console:admin@{client}", address=client)
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
        }
    )


async def openapi(request: web.Request) -> web.FileResponse:
    # text/yaml and inline: a browser shows it (application/yaml was saved as a download); clients don't care
    headers = {"Content-Type": "text/yaml; charset=utf-8", "Content-Disposition": 'inline; filename="openapi.yaml"'}
    return web.FileResponse(OPENAPI, headers=headers)


# -- cameras ------------------------------------------------------------------------------------
def _public_url(url: str) -> str:
    """Where a camera is, without its secrets; a file by its name only."""
    if "://" in url and not url.startswith("file:"):
        return redact_url(url)
    return Path(urllib.parse.urlsplit(url).path or url).name


async def cameras(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    answer = []
    stale_ns = int(HEALTH_STALE_S * console.config.bus.health_interval_s * 1e9)
    now = time.time_ns()
    for name, config in console.config.cameras.items():
        view = console.live.cameras.get(name)
        status = view.status if view else None
        state = status.state if status else "unknown"
        if status is not None and now - status.ts_ns > stale_ns:
            state = "unknown"  # no word from its ingest for a while
        answer.append(
            {
                "name": name,
                "enabled": config.enabled,
                "state": state if config.enabled else "disabled",
                "fps": round(status.fps, 2) if status else 0.0,
                "error": status.error if status else "",
                "since": iso(status.since_ns) if status else None,
                "reconnects": status.reconnects if status else 0,
                "width": status.width if status else 0,
                "height": status.height if status else 0,
                "codec": status.codec if status else "",
                "source": _public_url(config.url),
                "models": config.models or sorted(console.config.models),
                "rules": {rule_name: rule.type for rule_name, rule in config.rules.items()},
                "labels": sorted(view.labels) if view else [],
                "latest": f"/api/cameras/{name}/latest.jpg",
                "live": f"/api/cameras/{name}/live.mjpg",
            }
        )
    return web.json_response(answer)


async def latest_jpg(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    name = _camera(request)
    overlay = request.query.get("overlay", "0") not in ("0", "", "false")
    picture = await asyncio.to_thread(console.live.picture, name, console.config.cameras[name], overlay=overlay)
    if picture is None:
        return web.Response(
            status=503,
            text="no frame from this camera yet\n",
            headers={"Retry-After": "1", "Cache-Control": "no-store"},
        )
    return web.Response(body=picture, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def live_mjpg(request: web.Request) -> web.StreamResponse:
    """MJPEG with tracks, lines and zones drawn, at most the camera's fps (and MAX_LIVE_FPS)."""
    console = request.app[CONSOLE]
    name = _camera(request)
    fps = min(MAX_LIVE_FPS, console.config.cameras[name].fps)
    return await mjpeg.stream(request, _CameraFeed(console, name), console.changes, name, fps)


class _CameraFeed:
    """A camera's live view: its newest frame, tracks, lines and zones drawn (by the rules in force)."""

    def __init__(self, console: ConsoleService, camera: str) -> None:
        self.console, self.camera = console, camera

    def version(self) -> int | None:
        view = self.console.live.cameras.get(self.camera)
        return view.version if view else None

    async def picture(self) -> bytes | None:
        config = self.console.config.cameras.get(self.camera)
        return await asyncio.to_thread(self.console.live.picture, self.camera, config, overlay=True)


async def counts(request: web.Request) -> web.Response:
    """camera -> lines (rule -> label -> in/out) and zones (rule -> label -> objects now)."""
    console = request.app[CONSOLE]
    answer: dict[str, Any] = {}
    for name in console.config.cameras:
        view = console.live.cameras.get(name)
        scene = view.scene if view else None
        answer[name] = {
            "lines": {
                rule: {label: {"in": c.in_, "out": c.out} for label, c in by_label.items()}
                for rule, by_label in (scene.lines.items() if scene else [])
            },
            "zones": dict(scene.zones) if scene else {},
            "updated": iso(scene.frame.capture_ns) if scene else None,
        }
    return web.json_response(answer)


async def services(request: web.Request) -> web.Response:
    """Every service instance heard from (its latest Health), and the uplink's spool and sinks."""
    console = request.app[CONSOLE]
    stale_s = HEALTH_STALE_S * console.config.bus.health_interval_s
    now = time.monotonic()
    answer = []
    uplink: dict[str, Any] = {}
    for (service, instance), (health, received) in sorted(console.live.health.items()):
        age = now - received
        answer.append(
            {
                "service": service,
                "instance": instance,
                "state": health.state if age <= stale_s else "missing",
                "age_s": round(age, 1),
                "uptime_s": round(health.uptime_s, 1),
                "counters": health.counters,
                "detail": health.detail,
            }
        )
        if service == "uplink" and age <= stale_s:
            counters = health.counters
            uplink = {
                "spooled": int(counters.get("spooled", 0)),
                "oldest_s": counters.get("oldest_s", 0.0),
                "sinks": {key[:-3]: bool(value) for key, value in counters.items() if key.endswith("_up")},
            }
    return web.json_response({"services": answer, "uplink": uplink or None})


# -- events -------------------------------------------------------------------------------------
def _time_ns(text: str | None, name: str) -> int | None:
    """Nanoseconds since the epoch, or an ISO 8601 time (a naive one is UTC)."""
    if not text:
        return None
    problem = web.HTTPBadRequest(
        text=json.dumps({"error": f"{name}: not an ISO 8601 time or nanoseconds since 1970: {text[:40]!r}"}),
        content_type="application/json",
    )
    if text.isdigit():
        if len(text) > 19 or int(text) > MAX_NS:  # SQLite integers are 64-bit
            raise problem
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        ns = int(when.timestamp() * 1e9)
    except (ValueError, OverflowError):
        raise problem from None
    if not 0 <= ns <= MAX_NS:
        raise problem
    return ns


async def events(request: web.Request) -> web.Response:
    """``?camera=&rule=&type=&since=&until=&limit=&before=`` -> newest first; ``next`` pages on."""
    query = request.query
    try:
        limit = max(1, min(500, int(query.get("limit", "50"))))
        before = None
        if query.get("before"):
            ts_ns, row = query["before"].split(":")
            before = (int(ts_ns), int(row))
            if not all(0 <= part <= MAX_NS for part in before):
                raise ValueError("out of range")
    except ValueError:
        return _error(400, "limit must be a number; before a cursor from a previous answer's next")
    found, cursor = await asyncio.to_thread(
        request.app[CONSOLE].history.query,
        EventQuery(
            camera=query.get("camera") or None,
            rule=query.get("rule") or None,
            event_type=query.get("type") or None,
            since_ns=_time_ns(query.get("since"), "since"),
            until_ns=_time_ns(query.get("until"), "until"),
            before=before,
            limit=limit,
        ),
    )
    return web.json_response({"events": found, "next": f"{cursor[0]}:{cursor[1]}" if cursor else None})


async def event_facets(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[CONSOLE].history.facets))


async def event(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(request.app[CONSOLE].history.get, request.match_info["id"])
    if found is None:
        return _error(404, "no such event (pruned, or never seen by the console)")
    return web.json_response(found)


async def snapshot(request: web.Request) -> web.Response:
    picture = await asyncio.to_thread(request.app[CONSOLE].history.snapshot, request.match_info["id"])
    if picture is None:
        return _error(404, "this event has no snapshot (the rule has snapshot: false, or it was pruned)")
    return web.Response(body=picture, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


# -- rules ----------------------------------------------------------------------------------------
async def get_rules(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    name = _camera(request)
    try:
        rules = await asyncio.to_thread(console.site_file.rules, name)
    except SiteFileError as exc:
        return _error(500, str(exc))
    except KeyError:
        return _error(404, f"camera {name!r} is not in the site file itself (defined elsewhere?)")
    return web.json_response({"camera": name, "rules": rules, "geometry": _geometry(console, name)})


def _geometry(console: ConsoleService, camera: str) -> dict[str, Any]:
    """The rules in force (validated, variables substituted) as drawn: kinds and points only."""
    shapes: dict[str, Any] = {}
    for rule_name, rule in console.config.cameras[camera].rules.items():
        if isinstance(rule, LineRule):
            shapes[rule_name] = {"type": "line", "line": [list(p) for p in rule.line], "in_side": rule.in_side}
        elif isinstance(rule, ZoneRule):
            shapes[rule_name] = {"type": "zone", "polygon": [list(p) for p in rule.polygon]}
    return shapes


async def put_rules(request: web.Request) -> web.Response:
    """Replaces one camera's rules. What may change is in rule_policy; refusals are audited too."""
    console = request.app[CONSOLE]
    name = _camera(request)
    actor = f"console:{'admin' if request['auth'] == 'session' else 'api-token'}@{_client(request)}"
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return _error(400, 'send {"rules": {...}} as JSON')
    rules = body.get("rules") if isinstance(body, dict) else None
    if not isinstance(rules, dict):
        return _error(400, 'send {"rules": {<name>: {<settings>}, ...}}')
    hosts = console.config.console.webhook_hosts if console.config.console else []

    def policy(on_disk: dict[str, Any], wanted: dict[str, Any]) -> None:
        rule_policy.check_rules(name, on_disk, wanted, hosts)

    try:
        rule_policy.check_shape(name, rules)
        saved = await asyncio.to_thread(console.site_file.replace_rules, name, rules, policy)
    except rule_policy.RulesRefused as exc:
        metrics.RULE_SAVES.labels("refused").inc()
        await console.audit(
            "config.save_refused", f"cameras.{name}.rules", actor=actor, key=exc.key, reason=exc.message
        )
        return _error(403, f"{exc.key}: {exc.message}", key=exc.key)
    except RulesRejected as exc:
        metrics.RULE_SAVES.labels("rejected").inc()
        return web.json_response(
            {"error": "the rules do not validate; nothing was saved", "errors": exc.problems}, status=422
        )
    except SiteFileError as exc:
        metrics.RULE_SAVES.labels("failed").inc()
        return _error(409, str(exc))
    except KeyError:
        return _error(404, f"camera {name!r} is not in the site file itself")
    metrics.RULE_SAVES.labels("saved").inc()
    await console.audit(
        "config.save",
        f"cameras.{name}.rules",
        actor=actor,
        file=console.config.source,
        added=",".join(sorted(set(saved.after) - set(saved.before))),
        removed=",".join(sorted(set(saved.before) - set(saved.after))),
        changed=",".join(sorted(r for r in set(saved.after) & set(saved.before) if saved.after[r] != saved.before[r])),
        unshared_from=",".join(saved.unshared_from) or None,
        changes=rule_changes(name, saved.before, saved.after),
    )
    await console.rules_saved(saved.config, name)
    written = await asyncio.to_thread(console.site_file.rules, name)
    return web.json_response({"camera": name, "rules": written, "geometry": _geometry(console, name), "reloaded": True})


# -- audit trail --------------------------------------------------------------------------------
AUDIT_TAIL_BYTES = 4 << 20  # the newest records: the page shows recent history, the uplink sends it all


def read_audit(path: Path, action: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` records of the audit trail (whose action starts with ``action``), newest first."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - AUDIT_TAIL_BYTES))
            chunk = file.read()
    except FileNotFoundError:
        return []
    lines = chunk.splitlines()
    if size > AUDIT_TAIL_BYTES:
        lines = lines[1:]  # the first may be cut
    records = []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written, or not a record: the uplink counts those
        if isinstance(record, dict) and str(record.get("action", "")).startswith(action):
            records.append(record)
            if len(records) >= limit:
                break
    return records


async def audit(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return _error(400, "limit: a whole number from 1 to 1000")
    if not 1 <= limit <= 1000:
        return _error(400, "limit: a whole number from 1 to 1000")
    path = audit_path(console.config.site.state_dir)
    records = await asyncio.to_thread(read_audit, path, request.query.get("action", ""), limit)
    return web.json_response({"records": records})
