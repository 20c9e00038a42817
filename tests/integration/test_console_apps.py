"""Panorama apps in the console, behind its login: status and video published on the real bus as the apps
service does (AppStatus, AppVideo on apps/<app>/), served by a real console process only for the apps and
cameras of the site file, and shown on the Apps page in a headless Chromium."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from common.bus import Publisher
from contracts import AppStatus, AppVideo, Message
from tests.integration.browser import page_waiter
from tests.integration.conftest import Services
from tests.integration.test_console import PASSWORD, TOKEN, Client, console_site, start_console
from tests.media import frame_at
from tests.support import bus_handshake, deadline, http_get, scaled

pytestmark = pytest.mark.slow

BEARER = {"Authorization": f"Bearer {TOKEN}"}
SCREENSHOT = Path(__file__).resolve().parents[2] / "services" / "console" / "screenshots" / "apps.jpg"
IGNORED = ("unknown_app", "unknown_camera", "wrong_topic", "not_jpeg")


def apps_site(tmp_path: Path) -> dict[str, Any]:
    """The console test site (cameras lobby and dock) with three apps: counter on lobby, idle on dock,
    waiting on both (never heard from)."""
    site = console_site(tmp_path)
    site["apps"] = {
        "counter": {"code": str(tmp_path / "counter"), "cameras": ["lobby"], "limits": {"memory_mb": 1024}},
        "idle": {"code": str(tmp_path / "idle"), "cameras": ["dock"]},
        "waiting": {"code": str(tmp_path / "waiting"), "cameras": ["dock", "lobby"]},
    }
    return site


def app_picture(shared_dir: Path) -> bytes:
    """What an app's video_out looks like: a frame of the shared clip with a box and a label drawn."""
    image = np.ascontiguousarray(frame_at(shared_dir / "media" / "people.mp4", 0))
    height, width = image.shape[:2]
    cv2.rectangle(image, (width // 3, height // 4), (width // 2, height * 3 // 4), (80, 220, 80), 3)
    cv2.putText(image, "person 0.91", (width // 3, height // 4 - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (80, 220, 80), 2)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return encoded.tobytes()


def counter_status(**fields: Any) -> AppStatus:
    values: dict[str, Any] = {
        "app": "counter",
        "instance": "apps-t",
        "state": "running",
        "ts_ns": time.time_ns(),
        "cameras": ["lobby"],
        "frames": 1234,
        "skipped": 5,
        "restarts": 2,
        "last_restart": "memory",
        "error": "restarted: resident memory 1100 MB over limits.memory_mb 1024",
        "memory_mb": 312.5,
        "sandbox": "uid 23417, network own, cgroup limits",
    }
    return AppStatus(**(values | fields))


def messages(jpeg: bytes) -> list[tuple[str, Message]]:
    """(topic key, message) in the order sent: what must be ignored around what must be kept. The picture
    that is not a JPEG comes after the real one: were it kept, it would be the newest."""
    now = time.time_ns()
    other = jpeg[:2] + b"\xff" + b"-not-this-one" + jpeg[3:]
    return [
        ("ghost", AppStatus(app="ghost", instance="apps-t", state="running", ts_ns=now)),  # not in the site file
        ("ghost", AppVideo(app="ghost", camera="lobby", ts_ns=now, jpeg=other)),
        ("counter", AppVideo(app="counter", camera="dock", ts_ns=now, jpeg=other)),  # not a camera of counter
        ("counter", AppVideo(app="idle", camera="dock", ts_ns=now, jpeg=other)),  # on another app's topic
        ("idle", AppStatus(app="idle", instance="apps-t", state="running", ts_ns=now - 60 * 10**9)),  # stale
        ("counter", counter_status(ts_ns=now)),
        ("counter", AppVideo(app="counter", camera="lobby", ts_ns=now, jpeg=jpeg)),
        ("counter", AppVideo(app="counter", camera="lobby", ts_ns=now, jpeg=b"<html><script>alert(1)</script>")),
    ]


def ignored(site: Services) -> dict[str, float]:
    """The console's edgesight_console_app_messages_ignored_total per reason."""
    _, text = http_get(f"{site.base('console')}/metrics")
    found = re.findall(r'^edgesight_console_app_messages_ignored_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    return {reason: float(value) for reason, value in found}


def api(site: Services, path: str) -> tuple[int, dict[str, str], bytes]:
    assert site.config.console is not None
    return Client(f"http://127.0.0.1:{site.config.console.port}").call("GET", path, headers=BEARER)


def kept(site: Services, jpeg: bytes) -> bool:
    """The console has both statuses and the picture, and has counted every kind of message it ignores
    (sent before or after them in the same round): what it keeps now is what it will keep."""
    status, _, body = api(site, "/api/apps")
    if status != 200:
        return False
    states = {app["name"]: app["reported_state"] for app in json.loads(body)}
    counted = ignored(site)
    return (
        states == {"counter": "running", "idle": "running", "waiting": None}
        and api(site, "/api/apps/counter/video/lobby.jpg")[0] == 200
        and all(counted.get(reason, 0) >= 1 for reason in IGNORED)
    )


def publish_until_kept(site: Services, jpeg: bytes) -> None:
    """Publishes as the apps service (its identity on the bus) until the console has it all. The publisher
    closes with linger 0, so what it has not sent at close is dropped: it sends again until confirmed."""

    async def publish() -> None:
        async with Publisher(site.config.bus.publish_endpoint("apps"), "apps", hwm=100) as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            end = deadline(60)
            while True:
                for key, message in messages(jpeg):
                    await publisher.publish("apps", key, message)
                for _ in range(10):
                    await asyncio.sleep(0.2)
                    if await asyncio.to_thread(kept, site, jpeg):
                        return
                assert time.monotonic() < end, f"the console did not keep the apps' messages: {ignored(site)}"

    asyncio.run(publish())


def first_mjpeg_part(port: int, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """Status, Content-Type and the first JPEG of a multipart/x-mixed-replace answer (then it hangs up)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(10))
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        if answer.status != 200:
            return answer.status, answer.getheader("Content-Type", ""), answer.read()
        length = None
        assert answer.fp is not None
        while (line := answer.fp.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        assert length is not None, "no part with a Content-Length"
        return answer.status, answer.getheader("Content-Type", ""), answer.fp.read(length)
    finally:
        connection.close()


def test_app_video_is_served_behind_the_login_and_only_for_the_site_files_apps(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(apps_site(tmp_path))
    client = start_console(site)
    assert site.config.console is not None
    port = site.config.console.port
    jpeg = app_picture(shared_dir)
    publish_until_kept(site, jpeg)
    site_text = site.site.read_text()

    # without credentials, as an attacker tries: nothing, not even which apps exist
    routes = [
        "/api/apps",
        "/api/apps/counter/video/lobby.jpg",
        "/api/apps/counter/video/lobby.mjpg",
        "/api/apps/idle/video/dock.jpg",
        "/api/apps/ghost/video/lobby.jpg",
        "/api/apps/counter/video/dock.jpg",
    ]
    traversals = [
        "/api/apps/..%2F..%2Fsite.yaml/video/lobby.jpg",
        "/api/apps/..%2F../video/lobby.jpg",
        "/api/apps/%2e%2e/video/lobby.jpg",
        "/api/apps/counter/video/..%2F..%2F..%2F..%2Fetc%2Fpasswd.jpg",
        "/api/apps/counter/video/..%2F..%2Fconsole_password.mjpg",
        "/api/apps/counter%00/video/lobby.jpg",
    ]
    for path in routes + traversals:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Cookie": "edgesight_session=forged"}):
            status, answer_headers, body = client.call("GET", path, headers=headers)
            assert status == 401, (path, headers, status)
            assert answer_headers["Content-Type"].startswith("application/json"), path
            assert jpeg not in body and b"counter" not in body and b"ghost" not in body, path
    status, headers, _ = client.call("GET", "/apps")
    assert status == 302 and headers["Location"] == "/login?next=/apps"

    # with the token: what was published, exactly
    status, headers, body = client.call("GET", "/api/apps", headers=BEARER)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    counter, idle, waiting = json.loads(body)
    assert counter == {
        "name": "counter",
        "enabled": True,
        "state": "running",
        "reported_state": "running",
        "stale": False,
        "age_s": counter["age_s"],
        "updated": counter["updated"],
        "instance": "apps-t",
        "frames": 1234,
        "skipped": 5,
        "restarts": 2,
        "last_restart": "memory",
        "error": "restarted: resident memory 1100 MB over limits.memory_mb 1024",
        "memory_mb": 312.5,
        "memory_limit_mb": 1024,
        "sandbox": "uid 23417, network own, cgroup limits",
        "cameras": [
            {
                "name": "lobby",
                "latest": "/api/apps/counter/video/lobby.jpg",
                "live": "/api/apps/counter/video/lobby.mjpg",
                "picture": True,
                "picture_age_s": counter["cameras"][0]["picture_age_s"],
            }
        ],
    }
    assert 0 <= counter["age_s"] < 15 and counter["updated"].endswith("+00:00")
    # a status a minute old says nothing about now: unknown, stale, and what it said
    assert (idle["name"], idle["state"], idle["stale"], idle["reported_state"]) == ("idle", "unknown", True, "running")
    assert idle["age_s"] >= 59 and idle["cameras"][0]["picture"] is False
    # nothing heard at all: unknown, and not stale either
    assert (waiting["state"], waiting["stale"], waiting["reported_state"], waiting["age_s"]) == (
        "unknown",
        False,
        None,
        None,
    )
    assert [c["name"] for c in waiting["cameras"]] == ["dock", "lobby"]  # the site file's order

    status, headers, body = client.call("GET", "/api/apps/counter/video/lobby.jpg", headers=BEARER)
    assert (status, headers["Content-Type"], headers["Cache-Control"]) == (200, "image/jpeg", "no-store")
    assert body == jpeg  # the newest real picture: the later one that is not a JPEG was dropped
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, content_type, part = first_mjpeg_part(port, "/api/apps/counter/video/lobby.mjpg", BEARER)
    assert status == 200 and content_type == "multipart/x-mixed-replace; boundary=edgesight-frame"
    assert part == jpeg

    # no picture yet: 503 and when to ask again, not an empty image
    status, headers, _ = client.call("GET", "/api/apps/idle/video/dock.jpg", headers=BEARER)
    assert (status, headers["Retry-After"], headers["Cache-Control"]) == (503, "1", "no-store")

    # never what the site file does not list, whatever the bus carried; never a file
    for path in [*routes[4:], "/api/apps/ghost/video/lobby.mjpg", "/api/apps/counter/video/nosuch.jpg", *traversals]:
        status, headers, body = client.call("GET", path, headers=BEARER)
        assert status == 404, (path, status)
        assert jpeg not in body and b"not-this-one" not in body and b"root:" not in body, path
        assert PASSWORD.encode() not in body and site_text.encode() not in body, path
    assert [app["name"] for app in json.loads(client.call("GET", "/api/apps", headers=BEARER)[2])] == [
        "counter",
        "idle",
        "waiting",
    ]

    # with a login, as the page does
    assert client.json("POST", "/api/login", {"password": PASSWORD})[0] == 200
    status, _, body = client.call("GET", "/api/apps/counter/video/lobby.jpg")
    assert (status, body) == (200, jpeg)
    assert client.json("GET", "/api/apps")[1][0]["frames"] == 1234
    assert client.cookie is not None
    status, _, part = first_mjpeg_part(port, "/api/apps/counter/video/lobby.mjpg", {"Cookie": client.cookie})
    assert (status, part) == (200, jpeg)
    assert 'msg="app messages ignored"' in site.log("console")


def test_the_apps_page_in_a_browser(
    tmp_path: Path,
    shared_dir: Path,
    services: Callable[[dict[str, Any]], Services],
    browser: WebDriver,
) -> None:
    site = services(apps_site(tmp_path))
    start_console(site)
    assert site.config.console is not None
    base = f"http://127.0.0.1:{site.config.console.port}"
    jpeg = app_picture(shared_dir)
    publish_until_kept(site, jpeg)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    wait = page_waiter(browser, shots)

    def card(app: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'[data-app="{app}"]')

    # the page is behind the login and comes back after it
    browser.get(base + "/apps")
    wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    wait(lambda d: d.current_url == base + "/apps", 10, "the apps page after login")

    # counter: its state coloured, its counters, why it restarted, its sandbox, its video
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-app="counter"] .badge.running'), 10, "counter running")
    loaded = "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;"
    wait(lambda d: d.execute_script(loaded, '[data-app="counter"] img'), 10, "counter's video")
    text = card("counter").text
    for shown in ("1234\nframes", "5\nskipped", "2\nrestarts (last: memory)", "313 MB\nmemory of 1024 MB"):
        assert shown in text, (shown, text)
    assert "restarted: resident memory 1100 MB over limits.memory_mb 1024" in text
    assert "Sandbox: uid 23417, network own, cgroup limits" in text
    width = browser.execute_script(
        "return document.querySelector(arguments[0]).naturalWidth", '[data-app="counter"] img'
    )
    published = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert published is not None and width == published.shape[1]

    # idle: nothing heard for a minute, no picture: said in words, no broken image
    idle = card("idle")
    assert idle.find_element(By.CSS_SELECTOR, ".badge").text == "unknown"
    assert re.search(r"No word from the apps service for 6\d s \(last: running\)", idle.text), idle.text
    assert idle.find_elements(By.TAG_NAME, "img") == []
    assert "No picture from idle on dock yet" in idle.find_element(By.CSS_SELECTOR, ".placeholder").text
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-app="ghost"]')
    # waiting: never heard from: no numbers that look measured, a placeholder per camera
    waiting = card("waiting")
    assert "Not heard from yet" in waiting.text and "—\nframes" in waiting.text
    assert len(waiting.find_elements(By.CSS_SELECTOR, ".placeholder")) == 2
    assert waiting.find_elements(By.TAG_NAME, "img") == []

    # the link in every page's header
    assert browser.find_element(By.CSS_SELECTOR, "header nav a.current").get_attribute("href") == base + "/apps"
    browser.set_window_size(1440, 1300)  # every card in the screenshot
    png = shots / "apps.png"
    browser.save_screenshot(str(png))
    image = cv2.imread(str(png))
    assert image is not None
    assert cv2.imwrite(str(SCREENSHOT), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    browser.get(base + "/events")
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, 'header nav a[href="/apps"]'), 10, "the Apps link on Events")
