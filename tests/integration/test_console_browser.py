"""The console in a real headless Chromium, on the real pipeline (ingest -> inference -> rules) over the
looping shared clip: log in, see the cameras, find a line crossing and its snapshot, draw a new line and
watch it count without rules restarting. Screenshots of every page are kept under the test's temp dir."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from common.bus import Publisher
from contracts import Event, Snapshot, TrackedObject
from tests.conftest import free_port
from tests.integration.browser import page_waiter
from tests.integration.conftest import Services
from tests.media import frame_at
from tests.support import bus_handshake, deadline, hall_camera

pytestmark = pytest.mark.slow

PASSWORD = "console-test-password"
TOKEN = "browser-test-token-0123456789"


def api(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def test_console_in_a_browser(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services], browser: WebDriver
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def screenshot(name: str) -> None:
        path = shots / f"{name}.png"
        browser.save_screenshot(str(path))
        print(f"screenshot: {path}")

    wait = page_waiter(browser, shots)

    def loaded(selector: str) -> Callable[[WebDriver], bool]:
        script = "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;"
        return lambda driver: bool(driver.execute_script(script, selector))

    hall = hall_camera()
    hall["rules"]["middle"]["snapshot"] = True
    (tmp_path / "password").write_text(PASSWORD)
    port = free_port()
    site = services(
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}},
            "cameras": {"hall": hall},
            "console": {"port": port, "admin_password": f"${{file:{tmp_path / 'password'}}}", "api_tokens": [TOKEN]},
        }
    )
    text = site.site.read_text().replace("      middle:", "      # people crossing the hall's middle\n      middle:")
    site.site.write_text("# the test's site: comments must survive a save from the console\n" + text)
    for name in ("broker", "ingest", "inference", "rules", "console"):
        site.start(name)
    rules_pid = site.processes["rules"].pid
    base = f"http://127.0.0.1:{port}"

    # log in
    browser.get(base + "/")
    wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
    screenshot("1-login")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    wait(lambda d: d.current_url == base + "/", 10, "the overview after login")

    # the overview: the camera's tile shows a frame, its state and fps; the services' health
    wait(loaded('[data-camera="hall"] img'), 30, "the hall tile's image")
    wait(lambda d: "streaming" in d.find_element(By.CSS_SELECTOR, '[data-camera="hall"]').text, 10, "streaming")
    wait(lambda d: "rules" in d.find_element(By.ID, "services").text, 10, "the services table")
    screenshot("2-overview")

    # the camera page: the live view and the line's counts
    browser.get(base + "/cameras/hall")
    wait(loaded("#live"), 20, "the live view")
    wait(lambda d: "middle" in d.find_element(By.ID, "lines").text, 20, "the middle line's counts")
    screenshot("3-camera")

    # events: a line crossing appears in the timeline; its detail shows the snapshot
    browser.get(base + "/events")
    crossing = wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline tr[data-type="line_cross"]'), 90, "a line_cross event"
    )[0]
    screenshot("4-events")
    crossing.click()
    wait(loaded("#snapshot"), 10, "the event's snapshot")
    assert "before (dashed)" in browser.find_element(By.ID, "detail").text.lower()
    screenshot("5-event-detail")
    browser.find_element(By.ID, "close").click()

    # the editor: draw a new line across the upper hall, with a name that does not validate first
    browser.get(base + "/cameras/hall/editor")
    wait(loaded("#frame"), 20, "the frozen frame")
    stage = browser.find_element(By.ID, "stage")
    size = stage.size
    browser.find_element(By.ID, "tool-line").click()
    left, right, y = -size["width"] * 0.47, size["width"] * 0.47, -size["height"] * 0.15  # offsets from the centre
    ActionChains(browser).move_to_element_with_offset(stage, left, y).click_and_hold().move_by_offset(
        right - left, 0
    ).release().perform()
    name = wait(lambda d: d.find_element(By.ID, "rule-name"), 5, "the new line's properties")
    name.clear()
    name.send_keys("not a name!")
    before = site.site.read_bytes()
    browser.find_element(By.ID, "save").click()
    banner = wait(lambda d: d.find_element(By.CSS_SELECTOR, "#banner.bad"), 10, "the validation error")
    assert "cameras.hall.rules.not a name!" in banner.text and "do not validate" in banner.text
    assert site.site.read_bytes() == before  # nothing saved
    screenshot("6-editor-error")

    browser.find_element(By.CSS_SELECTOR, '#rules li[data-rule="not a name!"]').click()
    name = browser.find_element(By.ID, "rule-name")
    name.clear()
    name.send_keys("upper")
    browser.find_element(By.ID, "save").click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#banner.ok"), 10, "the save")
    screenshot("7-editor-saved")
    saved = site.site.read_text()
    assert "# the test's site: comments must survive a save from the console" in saved
    assert "# people crossing the hall's middle" in saved
    assert "upper:\n        type: line\n        line: [[0.0" in saved

    # rules applies it without a restart: crossings of the new line are counted
    deadline = time.monotonic() + 120
    counted = 0
    while time.monotonic() < deadline:
        lines = api(port, "/api/counts")["hall"]["lines"]
        counted = sum(c["in"] + c["out"] for c in lines.get("upper", {}).values())
        if counted:
            break
        time.sleep(1)
    assert counted > 0, f"no crossing of the new line counted: {lines}"
    assert site.processes["rules"].pid == rules_pid and site.processes["rules"].poll() is None
    assert "rules reloaded" in site.log("rules")

    browser.get(base + "/cameras/hall")
    wait(lambda d: "upper" in d.find_element(By.ID, "lines").text, 20, "the new line on the camera page")
    wait(loaded("#live"), 20, "the live view")
    time.sleep(1)  # a frame or two with the new line drawn
    screenshot("8-camera-new-line")

    browser.get(base + "/audit")  # the save and the login, as the uplink also sends them upstream
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-action="config.save"]'), 20, "the save in the audit trail")
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-action="console.login"]')
    screenshot("9-audit")


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_console_details_in_a_browser(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services], browser: WebDriver
) -> None:
    """What a new user noticed (issue #25, 12): a favicon, a real page for an unknown camera, the API
    description shown rather than downloaded, an event's own URL, no empty box for a missing snapshot."""
    import cv2

    shots = tmp_path / "screenshots"
    shots.mkdir()

    def screenshot(name: str) -> None:
        browser.save_screenshot(str(shots / f"{name}.png"))
        print(f"screenshot: {shots / name}.png")

    wait = page_waiter(browser, shots)

    (tmp_path / "password").write_text(PASSWORD)
    port = free_port()
    site = services(
        {
            "cameras": {"hall": hall_camera()},
            "console": {"port": port, "admin_password": f"${{file:{tmp_path / 'password'}}}", "api_tokens": [TOKEN]},
        }
    )
    site.start("broker")
    site.start("console")
    base = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    # two events: a line crossing with a snapshot, a zone entry without one
    ok, jpeg = cv2.imencode(".jpg", frame_at(shared_dir / "media" / "people.mp4", 0))
    assert ok
    person = TrackedObject(track_id=7, label="person", score=0.9, box=(0.4, 0.3, 0.5, 0.7))
    now = time.time_ns()
    crossing = Event(
        id="evt-with",
        event_type="line_cross",
        site="test",
        camera="hall",
        rule="middle",
        ts_ns=now - 2 * 10**9,
        object=person,
        attributes={"direction": "in"},
        snapshot=Snapshot(width=854, height=480, data=jpeg.tobytes()),
    )
    entry = Event(
        id="evt-without", event_type="zone_enter", site="test", camera="hall", rule="centre", ts_ns=now, object=person
    )

    async def publish() -> None:
        """Until the console has both: the publisher closes with linger 0, so what it has not sent yet is
        dropped at close; a resend is harmless (the history keeps an event id once)."""
        async with Publisher(site.config.bus.publish, "rules", hwm=100) as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            end = deadline(60)
            while True:
                for event in (crossing, entry):
                    await publisher.publish("events", event.camera, event)
                for _ in range(10):
                    await asyncio.sleep(0.2)
                    if len((await asyncio.to_thread(api, port, "/api/events"))["events"]) >= 2:
                        return
                assert time.monotonic() < end, "the console did not keep the two events"

    asyncio.run(publish())

    # a favicon, without logging in (browsers ask before any page)
    status, headers, body = fetch(base + "/favicon.ico")
    assert status == 200 and headers["Content-Type"] == "image/svg+xml" and body.startswith(b"<svg"), headers
    # the API description is shown by a browser, not saved as a download
    status, headers, body = fetch(base + "/api/openapi.yaml", bearer)
    assert status == 200 and headers["Content-Type"].startswith("text/yaml"), headers
    assert headers["Content-Disposition"].startswith("inline") and body.startswith(b"openapi: 3")
    # an unknown camera's page is a page, with a way home; the JSON API still answers JSON
    status, headers, body = fetch(base + "/cameras/nosuch", bearer)
    assert status == 404 and headers["Content-Type"].startswith("text/html"), headers
    assert b'<a id="home" href="/">' in body and b"No camera named &#x27;nosuch&#x27;" in body
    status, headers, body = fetch(base + "/api/cameras/nosuch/rules", bearer)
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    status, headers, _ = fetch(base + "/events/no-such-event", bearer)
    assert status == 404 and headers["Content-Type"].startswith("text/html")

    # log in through an event's own URL: it comes back to that event, opened
    browser.get(base + "/events/evt-with")
    wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    detail = wait(lambda d: d.find_element(By.CSS_SELECTOR, "#detail[open]"), 15, "the event opened")
    assert "id evt-with" in detail.text and "line_cross · hall · middle" in detail.text
    assert browser.current_url == base + "/events/evt-with"
    assert browser.find_element(By.ID, "permalink").get_attribute("href") == base + "/events/evt-with"
    icon = browser.find_element(By.CSS_SELECTOR, 'link[rel="icon"]')
    assert icon.get_attribute("href") == base + "/favicon.ico"
    screenshot("1-event-permalink")
    browser.find_element(By.ID, "close").click()
    wait(lambda d: d.current_url == base + "/events", 5, "the timeline's URL after closing")

    # the timeline: a thumbnail where there is a snapshot, words (no image, no grey box) where there is none
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-id="evt-without"]'), 10, "the rows")
    assert browser.find_elements(By.CSS_SELECTOR, 'tr[data-id="evt-with"] img.thumb')
    without = browser.find_element(By.CSS_SELECTOR, 'tr[data-id="evt-without"]')
    assert without.find_elements(By.TAG_NAME, "img") == []
    assert "no snapshot" in without.text
    link = without.find_element(By.CSS_SELECTOR, "a.permalink")
    assert link.get_attribute("href") == base + "/events/evt-without"
    screenshot("2-events")
    without.click()  # a click opens it in place, under its own URL
    wait(lambda d: "id evt-without" in d.find_element(By.ID, "detail").text, 5, "the zone entry's detail")
    assert browser.current_url == base + "/events/evt-without"
    assert "No snapshot" in browser.find_element(By.ID, "detail").text
    browser.back()  # Back closes it again
    wait(lambda d: not d.find_element(By.ID, "detail").get_attribute("open"), 5, "the detail closed by Back")

    # the API description in the browser: shown as text
    browser.get(base + "/api/openapi.yaml")
    wait(lambda d: "openapi: 3" in d.find_element(By.TAG_NAME, "body").text, 10, "the YAML shown")
    screenshot("3-openapi")

    # an unknown camera: a page saying so, a link home that works
    browser.get(base + "/cameras/nosuch")
    assert "No camera named 'nosuch'" in browser.find_element(By.TAG_NAME, "h1").text
    screenshot("4-unknown-camera")
    browser.find_element(By.ID, "home").click()
    wait(lambda d: d.current_url == base + "/", 10, "the overview")
