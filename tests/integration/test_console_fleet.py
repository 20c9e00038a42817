"""The Fleet page in a real headless Chromium, served by a real console that follows a real Mosquitto: three
sites' fleet services (played by the test: each publishes its reported state, retained, every second)
appear with their versions; one that falls silent shows offline within twice its interval, without a
reload; a site whose name is markup and whose link is javascript: shows as plain text, without a link;
a phone's width does not scroll sideways. The screenshot is also copied to /tmp/fleet/console_fleet.png."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import free_port
from tests.integration.browser import page_waiter
from tests.integration.conftest import Mosquitto, Services
from tests.support import scaled

pytestmark = pytest.mark.slow

PASSWORD = "fleet-browser-password"
TOKEN = "fleet-browser-token-0123456789"
INTERVAL_S = 4.0  # each site's report_interval_s: offline after 8 s of silence
REFRESH_S = 3.0  # fleet.js's REFRESH_MS
VERSIONS = {"site-a": "1.4.0", "site-b": "1.4.1", "site-c": "1.3.9"}
REVIEW = Path("/tmp/fleet/console_fleet.png")
HOSTILE = '<img src=x onerror="window.pwned=1">'


def reported(thing: str, **fields: Any) -> dict[str, Any]:
    """A site's REPORTED as its fleet service sends it (brief: common/fleet)."""
    return {
        "schema": 1,
        "site": thing,
        "thing": thing,
        "edgesight": VERSIONS.get(thing, "1.4.0"),
        "reported_at": time.time(),
        "interval_s": INTERVAL_S,
        "console_url": f"http://{thing}.example:8080/",
        "models": {"people": {"version": "2", "signer": "ops", "loaded": "ok"}},
        "apps": {},
        "cameras": {
            "hall": {"state": "streaming", "fps": 5.0},
            "dock": {"state": "stalled" if thing == "site-b" else "streaming", "fps": 0.0},
        },
        "services": {"inference@0": {"state": "ready", "uptime_s": 100.0}},
        "spool": {"depth": 0, "oldest_s": 0.0},
        "events_last_hour": {"site-a": 42, "site-b": 7}.get(thing, 0),
        "last_error": None,
        "job": {"current": None, "last": None, "last_status": None, "last_reason": None},
        "desired": None,
        **fields,
    }


class Sites:
    """Fleet services as the console hears them: each site's state published retained every second, until
    the site is silenced (``silence``) or the test ends; ``last[thing]`` is its last reported_at."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.speaking: dict[str, dict[str, Any]] = {}
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._publish(),), daemon=True)

    def add(self, thing: str, **fields: Any) -> None:
        with self.lock:
            self.speaking[thing] = fields

    def silence(self, thing: str) -> float:
        with self.lock:
            self.speaking.pop(thing)
            return self.last[thing]

    async def _publish(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier="test-sites") as client:
            while not self.stop.is_set():
                with self.lock:
                    states = {thing: reported(thing, **fields) for thing, fields in self.speaking.items()}
                for thing, state in states.items():
                    payload = json.dumps({"state": {"reported": state}, "clientToken": thing})
                    await client.publish(
                        f"$aws/things/{thing}/shadow/name/edgesight/update", payload, qos=1, retain=True
                    )
                    with self.lock:
                        self.last[thing] = state["reported_at"]
                await asyncio.sleep(1.0)


def api(port: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


SHOWN = """
const shown = (id) => { const node = document.getElementById(id); return node.offsetParent ? node.innerText : null; };
const count = (key) => document.querySelector(`[data-count="${key}"] b`)?.textContent;
return {
  counts: {sites: count("sites"), online: count("online"), offline: count("offline")},
  empty: shown("empty"), banner: shown("connection"),
  rows: Object.fromEntries([...document.querySelectorAll("#sites tr")].map((row) => [row.dataset.thing, {
    cells: [...row.cells].map((cell) => cell.innerText.trim()),
    links: [...row.querySelectorAll("a")].map((a) => a.href),
    elements: row.querySelectorAll("img, script, iframe, svg").length,
  }])),
};"""


def shown(browser: WebDriver) -> dict[str, Any]:
    """What the page shows, read in one go (it replaces its rows at every refresh: an element found
    by one call may be gone by the next)."""
    return dict(browser.execute_script(SHOWN))


def cells(browser: WebDriver) -> dict[str, list[str]]:
    return {thing: row["cells"] for thing, row in shown(browser)["rows"].items()}


def test_the_fleet_page_in_a_browser(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services], browser: WebDriver
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    wait = page_waiter(browser, shots)
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    sites = Sites(mosquitto)
    try:
        (tmp_path / "password").write_text(PASSWORD)
        port = free_port()
        site = services(
            {
                "site": {"name": "ops"},
                "fleet": {"mqtt": {"host": "127.0.0.1", "port": mosquitto.port}},  # the hub's own broker
                "console": {
                    "port": port,
                    "admin_password": f"${{file:{tmp_path / 'password'}}}",
                    "api_tokens": [TOKEN],
                    "fleet": True,
                },
            }
        )
        site.start("broker")
        site.start("console")
        mosquitto.wait_subscribed("$aws/things/+/shadow/name/edgesight/update", "edgesight-ops-console-fleet")

        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/fleet")
        wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "submit").click()
        wait(lambda d: d.current_url.startswith(base + "/fleet"), 10, "the fleet page after login")
        assert browser.find_element(By.CSS_SELECTOR, "header nav a.current").get_attribute("href") == base + "/fleet"
        browser.execute_script("window.sameDocument = true;")  # gone if the page reloads

        # no site yet: the page says how to add one
        empty = wait(lambda d: shown(d)["empty"], 20, "the empty page")
        assert "No site has reported yet" in empty and "topic root ($aws)" in empty, empty
        assert shown(browser)["counts"] == {"sites": "0", "online": "0", "offline": "0"}
        browser.save_screenshot(str(shots / "fleet-empty.png"))
        for thing in VERSIONS:
            sites.add(thing)
        sites.thread.start()

        # the three sites, their versions, all online, linked to their consoles
        wait(lambda d: len(shown(d)["rows"]) == 3, 20, "three sites")
        page = shown(browser)
        rows = {thing: row["cells"] for thing, row in page["rows"].items()}
        for thing, version in VERSIONS.items():
            assert rows[thing][0] == thing and rows[thing][2] == version, rows[thing]
            assert rows[thing][1].startswith("online"), rows[thing]
            assert page["rows"][thing]["links"] == [f"http://{thing}.example:8080/"]
        assert page["counts"] == {"sites": "3", "online": "3", "offline": "0"} and page["empty"] is None
        assert rows["site-b"][6] == "camera dock stalled" and rows["site-a"][6] == "none", rows
        assert rows["site-a"][3:6] == ["people 2", "2/2", "42"], rows["site-a"]

        # site-c falls silent: online while within its interval, offline within twice it (plus a page refresh)
        last = sites.silence("site-c")
        time.sleep(max(0.0, last + INTERVAL_S - time.time()))
        assert {s["thing"]: s["online"] for s in api(port, "/api/fleet")["sites"]}["site-c"] is True
        offline = 'return document.querySelector(\'tr[data-thing="site-c"] .badge\').textContent === "offline";'
        wait(lambda d: d.execute_script(offline), 2 * INTERVAL_S + REFRESH_S + 5, "site-c offline")
        assert time.time() - last <= scaled(2 * INTERVAL_S + REFRESH_S + 2), time.time() - last
        assert shown(browser)["counts"] == {"sites": "3", "online": "2", "offline": "1"}
        assert cells(browser)["site-c"][6] == "offline"
        assert browser.execute_script("return window.sameDocument === true;"), "the page reloaded"
        answer = api(port, "/api/fleet")
        assert (answer["online"], answer["offline"]) == (2, 1)

        browser.save_screenshot(str(shots / "fleet.png"))
        REVIEW.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / "fleet.png", REVIEW)

        # a site whose name is markup and whose link is javascript: plain text, no link, nothing run
        sites.add("site-x", site=HOSTILE, console_url="javascript:window.pwned=2")
        wait(lambda d: "site-x" in shown(d)["rows"], 20, "the hostile site")
        hostile = shown(browser)["rows"]["site-x"]
        assert hostile["cells"][0].startswith(HOSTILE), hostile
        assert hostile["links"] == [] and hostile["elements"] == 0, hostile
        assert browser.execute_script("return window.pwned === undefined;")

        # a phone: nothing scrolls sideways, every site still there
        browser.set_window_size(420, 1200)
        time.sleep(0.5)
        scrolled, client = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
        )
        assert scrolled <= client, (scrolled, client)
        assert len(shown(browser)["rows"]) == 4
        browser.save_screenshot(str(shots / "fleet-narrow.png"))
        browser.set_window_size(1440, 1000)

        # the broker gone: the page says so and keeps what it heard
        sites.stop.set()
        sites.thread.join(timeout=10)
        mosquitto.stop()
        banner = wait(lambda d: shown(d)["banner"], 20, "the banner")
        assert banner.startswith(f"Not connected to the fleet's broker 127.0.0.1:{mosquitto.port}"), banner
        assert len(shown(browser)["rows"]) == 4
        assert browser.execute_script("return window.sameDocument === true;"), "the page reloaded"
    finally:
        sites.stop.set()
        if sites.thread.is_alive():
            sites.thread.join(timeout=10)
        mosquitto.stop()
