"""The console as a process, over HTTP: who gets in, CSRF, the event history, rule saves that do not validate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.bus import Publisher
from contracts import Event, Snapshot, TrackedObject
from tests.integration.conftest import Services
from tests.support import bus_handshake, deadline

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
TOKEN = "token-0123456789abcdef"
CAMERA_PASSWORD = "hunter2-camera"


def console_site(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "console_password").write_text(PASSWORD + "\n")
    rules = {
        "door": {"type": "line", "line": [[0.1, 0.5], [0.9, 0.5]], "classes": ["person"]},
        "desk": {"type": "zone", "polygon": [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4]]},
    }
    return {
        "cameras": {
            "lobby": {"url": f"rtsp://admin:{CAMERA_PASSWORD}@10.9.9.9:554/stream?token=abc", "rules": rules},
            "dock": {"url": "rtsp://10.9.9.10/stream", "username": "admin", "password": CAMERA_PASSWORD},
        },
        "console": {
            "port": _free_port(),
            "admin_password": f"${{file:{tmp_path / 'console_password'}}}",
            "api_tokens": [TOKEN],
        },
    }


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


class Client:
    """urllib with a cookie and headers: enough of a browser for the API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie: str | None = None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.cookie:
            request.add_header("Cookie", self.cookie)
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=10) as answer:
                status, answer_headers, content = answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, content = error.code, dict(error.headers), error.read()
        cookie = answer_headers.get("Set-Cookie")
        if cookie and "edgesight_session=" in cookie:
            self.cookie = cookie.split(";", 1)[0]
            self.set_cookie = cookie
        return status, answer_headers, content

    def json(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        status, _, content = self.call(method, path, body, headers)
        return status, json.loads(content) if content else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def start_console(site: Services) -> Client:
    site.start("broker")
    site.start("console")
    assert site.config.console is not None
    return Client(f"http://127.0.0.1:{site.config.console.port}")


def test_nothing_without_credentials_and_no_change_without_csrf(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(console_site(tmp_path))
    client = start_console(site)
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    # only the login page and static assets without credentials
    assert client.call("GET", "/login")[0] == 200
    assert client.call("GET", "/static/app.css")[0] == 200
    status, headers, _ = client.call("GET", "/")
    assert status == 302 and headers["Location"].startswith("/login")
    for path in (
        "/api/cameras",
        "/api/events",
        "/api/counts",
        "/api/cameras/lobby/rules",
        "/api/events/x/snapshot.jpg",
        "/api/audit",
    ):
        assert client.call("GET", path)[0] == 401, path
        assert client.call("GET", path, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401, path
        assert client.call("GET", path, headers={"Cookie": "edgesight_session=forged"})[0] == 401, path
    assert client.call("PUT", "/api/cameras/lobby/rules", {"rules": {}})[0] == 401
    assert client.json("POST", "/api/login", {"password": "wrong"})[0] == 401

    # a login: an HttpOnly, SameSite=Strict cookie and a CSRF token
    status, answer = client.json("POST", "/api/login", {"password": PASSWORD})
    assert status == 200
    csrf = answer["csrf"]
    assert "HttpOnly" in client.set_cookie and "SameSite=Strict" in client.set_cookie
    status, cameras = client.json("GET", "/api/cameras")
    assert status == 200 and [c["name"] for c in cameras] == ["lobby", "dock"]
    assert cameras[0]["source"] == "rtsp://admin:***@10.9.9.9:554/stream?token=***"

    # camera credentials reach no answer
    for path in ("/api/cameras", "/api/cameras/lobby/rules", "/api/cameras/dock/rules", "/api/services"):
        assert CAMERA_PASSWORD not in client.call("GET", path)[2].decode(), path
    assert client.json("GET", "/api/session")[1]["auth"] == "session"

    # changes with the cookie need the CSRF header, and the same origin
    site_text = site.site.read_bytes()
    _, current = client.json("GET", "/api/cameras/lobby/rules")
    moved = json.loads(json.dumps(current["rules"]))
    moved["door"]["line"] = [[0.1, 0.6], [0.9, 0.6]]
    assert client.json("PUT", "/api/cameras/lobby/rules", {"rules": moved})[0] == 403
    assert client.json("PUT", "/api/cameras/lobby/rules", {"rules": moved}, **{"X-CSRF-Token": "guess"})[0] == 403
    cross_site = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert client.json("PUT", "/api/cameras/lobby/rules", {"rules": moved}, **cross_site)[0] == 403
    assert site.site.read_bytes() == site_text

    # a rule that does not validate changes nothing and says which key is wrong
    broken = json.loads(json.dumps(moved))
    broken["door"]["line"] = [[0.1, 0.6], [0.9, 1.6]]
    status, answer = client.json("PUT", "/api/cameras/lobby/rules", {"rules": broken}, **{"X-CSRF-Token": csrf})
    assert status == 422
    assert [e["key"] for e in answer["errors"]] == ["cameras.lobby.rules.door.line[1][1]"]
    assert "less than or equal to 1" in answer["errors"][0]["message"] and answer["errors"][0]["line"] > 1
    assert site.site.read_bytes() == site_text

    # with the token: no CSRF (no cookie to ride on); saved and the geometry in force follows
    status, answer = client.json("PUT", "/api/cameras/lobby/rules", {"rules": moved}, **bearer)
    assert status == 200, answer
    assert answer["geometry"]["door"]["line"] == [[0.1, 0.6], [0.9, 0.6]]
    assert "line: [[0.1, 0.6], [0.9, 0.6]]" in site.site.read_text()

    # logout ends the session on the server
    assert client.json("POST", "/api/logout", None, **{"X-CSRF-Token": csrf})[0] == 200
    assert client.call("GET", "/api/cameras")[0] == 401

    # the audit trail: who did what, newest first, no secret
    status, trail = client.json("GET", "/api/audit", None, **bearer)
    assert status == 200
    actions = [r["action"] for r in trail["records"]]
    assert actions[:4] == ["console.logout", "config.save", "console.login", "console.login_failed"], actions
    save = trail["records"][1]
    assert save["actor"] == "console:api-token@127.0.0.1" and save["target"] == "cameras.lobby.rules"
    assert save["detail"]["changed"] == "door" and save["detail"]["added"] == ""
    assert all(
        r["action"].startswith("console.")
        for r in client.json("GET", "/api/audit?action=console.", None, **bearer)[1]["records"]
    )
    assert client.json("GET", "/api/audit?limit=x", None, **bearer)[0] == 400
    assert PASSWORD not in json.dumps(trail) and TOKEN not in json.dumps(trail)

    # failed logins are limited per address
    statuses = [client.json("POST", "/api/login", {"password": f"guess-{i}"})[0] for i in range(7)]
    assert statuses[:4] == [401] * 4 and statuses[-1] == 429
    assert client.json("POST", "/api/login", {"password": PASSWORD})[0] == 429  # even the right one, for now
    metrics = urllib.request.urlopen(f"{site.base('console')}/metrics", timeout=5).read().decode()
    assert 'edgesight_console_logins_total{result="limited"}' in metrics


def make_event(number: int, camera: str, rule: str, kind: str, ts_ns: int) -> Event:
    return Event(
        id=f"evt-{number}",
        event_type=kind,
        site="test",
        camera=camera,
        rule=rule,
        ts_ns=ts_ns,
        object=TrackedObject(track_id=number, label="person", score=0.9, box=(0.1, 0.2, 0.3, 0.6)),
        before=TrackedObject(track_id=number, label="person", score=0.8, box=(0.1, 0.1, 0.3, 0.5)),
        counts={"person": number},
        attributes={"direction": "in"} if kind == "line_cross" else {},
        snapshot=Snapshot(width=2, height=2, data=f"jpeg-{number}".encode()),
    )


def test_events_newest_first_filtered_paged_with_snapshots(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(console_site(tmp_path))
    client = start_console(site)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    base_ns = time.time_ns() - 60 * 10**9
    published = [
        make_event(
            i,
            "lobby" if i % 2 else "dock",
            "door" if i % 3 else "desk",
            "line_cross" if i % 3 else "zone_enter",
            base_ns + i * 10**9,
        )
        for i in range(12)
    ]

    async def publish() -> None:
        async with Publisher(site.config.bus.publish, "rules", hwm=1000) as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)  # our connection reaches the broker
            for event in reversed(published):  # arrival order is not time order
                await publisher.publish("events", event.camera, event)
            await publisher.publish("events", "lobby", published[3])  # a duplicate (a resend)

    asyncio.run(publish())
    end = deadline(30)
    while time.monotonic() < end:
        status, answer = client.json("GET", "/api/events?limit=100", **bearer)
        if status == 200 and len(answer["events"]) == 12:
            break
        time.sleep(0.2)
    assert [e["id"] for e in answer["events"]] == [f"evt-{i}" for i in range(11, -1, -1)]
    first = answer["events"][0]
    assert first["object"]["box"] == [0.1, 0.2, 0.3, 0.6] and first["before"]["box"] == [0.1, 0.1, 0.3, 0.5]
    assert first["snapshot"] == {"content_type": "image/jpeg", "width": 2, "height": 2, "bytes": 7}

    def ids(query: str) -> list[str]:
        status, answer = client.json("GET", f"/api/events?{query}", **bearer)
        assert status == 200, answer
        return [e["id"] for e in answer["events"]]

    assert ids("camera=lobby") == [f"evt-{i}" for i in (11, 9, 7, 5, 3, 1)]
    assert ids("type=zone_enter") == ["evt-9", "evt-6", "evt-3", "evt-0"]
    assert ids("camera=dock&rule=door") == ["evt-10", "evt-8", "evt-4", "evt-2"]
    assert ids(f"since={base_ns + 5 * 10**9}&until={base_ns + 8 * 10**9}") == ["evt-7", "evt-6", "evt-5"]
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base_ns + 10 * 10**9) / 1e9 + 1))
    assert ids(f"since={since_iso}Z") == ["evt-11"]
    assert client.json("GET", "/api/events?since=yesterday", **bearer)[0] == 400

    pages, cursor = [], ""
    for _ in range(5):
        status, answer = client.json("GET", f"/api/events?limit=5{cursor}", **bearer)
        pages.append([e["id"] for e in answer["events"]])
        if answer["next"] is None:
            break
        cursor = f"&before={answer['next']}"
    assert [len(page) for page in pages] == [5, 5, 2]
    assert [event_id for page in pages for event_id in page] == [f"evt-{i}" for i in range(11, -1, -1)]

    status, _, picture = client.call("GET", "/api/events/evt-4/snapshot.jpg", headers=bearer)
    assert (status, picture) == (200, b"jpeg-4")
    assert client.json("GET", "/api/events/evt-4", **bearer)[1]["counts"] == {"person": 4}
    assert client.json("GET", "/api/events/nothing", **bearer)[0] == 404
    assert client.json("GET", "/api/events/facets", **bearer)[1] == {
        "camera": ["dock", "lobby"],
        "rule": ["desk", "door"],
        "event_type": ["line_cross", "zone_enter"],
    }


def test_no_password_no_console(tmp_path: Path, python_env: dict[str, str]) -> None:
    from tests.conftest import write_site

    site = write_site(tmp_path, {"console": {"port": _free_port()}})
    result = subprocess.run(
        [sys.executable, "-m", "services.console", "--config", str(site)],
        env=python_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "console.admin_password: the console has no default password" in result.stderr
    assert "Traceback" not in result.stderr
    check = subprocess.run(
        [str(Path(sys.executable).parent / "edgesight"), "config", "check", str(site)],
        env=python_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 2 and "admin_password" in check.stderr
