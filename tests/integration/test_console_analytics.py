"""The Analytics page in a real headless Chromium, served by a real console over a rules.sqlite filled by
SeriesWriter as rules fills it: a day of crossings and occupancy, and a heatmap of where the people of the
shared clip really stood (the anchors of real detections: ingest -> inference on the looping clip, read off
the bus). The page's bars add up to the API's totals, the heatmap is hot where people walked and cold
where nobody did, and the downloaded CSV is the JSON. Its screenshot is services/console/screenshots/analytics.jpg."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import math
import sqlite3
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from common.analytics import SeriesWriter
from common.bus import Subscriber
from contracts import Detections, topic
from tests.conftest import free_port
from tests.integration.browser import page_waiter
from tests.integration.conftest import Services
from tests.support import bus_handshake, hall_camera, scaled

pytestmark = pytest.mark.slow

PASSWORD = "analytics-browser-password"
TOKEN = "analytics-browser-token-0123456789"
SCREENSHOT = Path(__file__).resolve().parents[2] / "services" / "console" / "screenshots" / "analytics.jpg"
HOURS = 12  # the day shown: the last twelve hours, whole
COLUMNS, ROWS = 64, 36  # analytics.heatmap's default grid


def api(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status, dict(answer.headers), answer.read()


async def detected_anchors(site: Services, seconds: float) -> list[tuple[float, float]]:
    """Where people stood in the clip: the bottom centre of every box inference found, for ``seconds``."""
    anchors: list[tuple[float, float]] = []
    async with Subscriber(site.config.bus.subscribe, "test", [topic("detections")], hwm=1000) as subscriber:
        await bus_handshake(subscriber=subscriber, bus=site.config.bus)
        end = time.monotonic() + scaled(seconds)
        while time.monotonic() < end:
            try:
                received = await asyncio.wait_for(subscriber.receive(), timeout=1.0)
            except asyncio.TimeoutError:
                continue
            if isinstance(received.message, Detections):
                for x1, _, x2, y2 in received.message.boxes.to_numpy():
                    anchors.append((float(x1 + x2) / 2, float(y2)))
    return anchors


def traffic(hour: int) -> tuple[int, int]:
    """People in and out in an hour of the day shown: a morning and a lunchtime peak."""
    crowd = 6 + 34 * math.exp(-(((hour - 3) / 1.4) ** 2)) + 26 * math.exp(-(((hour - 8) / 1.2) ** 2))
    leaving = 5 + 12 * math.exp(-(((hour - 4) / 2.0) ** 2)) + 30 * math.exp(-(((hour - 9) / 1.3) ** 2))
    return round(crowd), round(leaving)


def fill(site: Services, first_hour_s: int, anchors: list[tuple[float, float]]) -> None:
    """What rules would have kept: crossings of the middle line, the centre zone's occupancy and the
    queue's dwell times over the day, and the detected anchors as the heatmap (spread over the day)."""
    db = sqlite3.connect(Path(site.config.site.state_dir) / "rules.sqlite")
    writer = SeriesWriter(db, site.config.analytics)
    rng = np.random.default_rng(27)
    now_ns = time.time_ns()
    with db:
        for hour in range(HOURS):
            for direction, count in zip(("in", "out"), traffic(hour), strict=True):
                for minute in rng.integers(0, 60, count):
                    wall_ns = (first_hour_s + hour * 3600 + int(minute) * 60) * 10**9
                    if wall_ns < now_ns:
                        writer.crossing("hall", "middle", "person", direction, wall_ns)
    for minute in range(HOURS * 60):
        wall_ns = (first_hour_s + minute * 60) * 10**9
        if wall_ns < now_ns:
            inside = sum(traffic(minute // 60)) / 12
            writer.occupancy("hall", "centre", "person", int(rng.poisson(inside)), wall_ns)
            if minute % 7 == 0:
                writer.dwell("hall", "queue", "person", float(rng.gamma(2.0, 20.0)), wall_ns)
    for index, (x, y) in enumerate(anchors):
        writer.heat("hall", "person", x, y, (first_hour_s + (index % HOURS) * 3600) * 10**9)
    writer.flush(now_ns)
    db.close()


def cells(anchors: list[tuple[float, float]]) -> np.ndarray:
    grid = np.zeros((ROWS, COLUMNS))
    for x, y in anchors:
        grid[min(ROWS - 1, max(0, int(y * ROWS))), min(COLUMNS - 1, max(0, int(x * COLUMNS)))] += 1
    return grid


def test_the_analytics_page_in_a_browser(
    tmp_path: Path,
    services: Callable[[dict[str, Any]], Services],
    browser: WebDriver,
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    wait = page_waiter(browser, shots)

    hall = hall_camera()
    hall["rules"]["queue"] = {"type": "dwell", "zone": "centre", "seconds": 10}
    (tmp_path / "password").write_text(PASSWORD)
    port = free_port()
    site = services(
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}},
            "cameras": {"hall": hall},
            "console": {"port": port, "admin_password": f"${{file:{tmp_path / 'password'}}}", "api_tokens": [TOKEN]},
        }
    )
    for name in ("broker", "ingest", "inference", "console"):  # no rules: the test writes its file
        site.start(name)

    anchors = asyncio.run(detected_anchors(site, 20))
    assert len(anchors) > 500, f"only {len(anchors)} people detected"
    first_hour_s = (int(time.time()) // 3600 - HOURS + 1) * 3600
    fill(site, first_hour_s, anchors)
    grid = cells(anchors)
    # the busiest cell, and the cell farthest from anybody (nobody within three cells of it)
    busiest = np.unravel_index(int(grid.argmax()), grid.shape)
    near = cv2.dilate((grid > 0).astype(np.uint8), np.ones((7, 7), np.uint8))
    empty_cells = np.argwhere(near == 0)
    assert len(empty_cells), "people were detected all over the frame: no empty region to compare with"
    empty = tuple(empty_cells[len(empty_cells) // 2])

    # log in, then the page for the day shown (custom range, as the browser's local times)
    base = f"http://127.0.0.1:{port}"
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    browser.get(base + "/analytics")
    wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    wait(lambda d: d.current_url.startswith(base + "/analytics"), 10, "the analytics page after login")
    local = (  # a datetime-local input's value: the browser's own time zone
        "const d = new Date(arguments[0] * 1000);"
        " return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);"
    )
    start, end = (browser.execute_script(local, s) for s in (first_hour_s, first_hour_s + HOURS * 3600))
    choice = {
        "camera": "hall",
        "rule": "middle",
        "label": "",
        "range": "custom",
        "bucket": "3600",
        "from": start,
        "to": end,
    }
    browser.get(f"{base}/analytics?{urllib.parse.urlencode(choice)}")
    wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#series-chart rect.bar")) > 0, 20, "the bars")
    assert browser.find_element(By.CSS_SELECTOR, "header nav a.current").get_attribute("href") == base + "/analytics"

    # the bars add up to the API's totals, asked with the page's own query (the CSV link's)
    href = browser.find_element(By.ID, "csv").get_attribute("href")
    assert href.startswith(base + "/api/series.csv?")
    query = href.split("?", 1)[1]
    assert dict(urllib.parse.parse_qsl(query))["metric"] == "in,out"
    answer = json.loads(api(port, f"/api/series?{query}")[2])
    assert len(answer["points"]) == HOURS and answer["totals"]["in"] > 100
    for metric in ("in", "out"):
        bars = browser.find_elements(By.CSS_SELECTOR, f'#series-chart rect.bar[data-metric="{metric}"]')
        assert len(bars) == HOURS
        assert sum(int(bar.get_attribute("data-value")) for bar in bars) == answer["totals"][metric]
        shown = browser.find_element(By.CSS_SELECTOR, f'[data-total="{metric}"] b').text
        assert int(shown.replace(",", "")) == answer["totals"][metric]
    assert [int(bar.get_attribute("data-value")) for bar in bars] == [p["out"] for p in answer["points"]]

    # the heatmap: hot where people walked, the frame untouched where nobody did
    loaded = "const i = document.getElementById('heatmap'); return i.complete && i.naturalWidth > 0;"
    wait(lambda d: d.execute_script(loaded), 20, "the heatmap")
    colourfulness = """
        const image = document.getElementById('heatmap'), [cx, cy] = [arguments[0], arguments[1]];
        const canvas = document.createElement('canvas');
        canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(image, 0, 0);
        const w = Math.round(canvas.width / arguments[2]), h = Math.round(canvas.height / arguments[3]);
        const x = Math.round(cx * canvas.width - w / 2), y = Math.round(cy * canvas.height - h / 2);
        const data = context.getImageData(x, y, w, h).data;
        let total = 0;  // how far from grey: max - min of r, g, b
        for (let i = 0; i < data.length; i += 4) {
          total += Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]);
        }
        return total / (data.length / 4);"""

    def colour_at(row: int, column: int) -> float:
        at = ((column + 0.5) / COLUMNS, (row + 0.5) / ROWS)
        return float(browser.execute_script(colourfulness, *at, COLUMNS, ROWS))

    hot, cold = colour_at(*busiest), colour_at(*empty)
    assert hot > 100 and cold < 15, (hot, cold, busiest, empty)  # the clip is black and white: colour is heat

    # the CSV the page offers, downloaded by the browser, is the JSON
    browser.find_element(By.ID, "csv").click()
    wait(lambda d: [f for f in downloads.iterdir() if f.suffix == ".csv"], 20, "the CSV download")
    (saved,) = [f for f in downloads.iterdir() if f.suffix == ".csv"]
    assert saved.name.startswith("hall-middle-all-")
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows == [["start", "in", "out"], *([p["start"], str(p["in"]), str(p["out"])] for p in answer["points"])]

    # the screenshot: the day's crossings, their totals and the heatmap
    browser.set_window_size(1440, 1450)  # the heatmap and its scale too
    time.sleep(0.5)
    png = shots / "analytics.png"
    browser.save_screenshot(str(png))
    image = cv2.imread(str(png))
    assert image is not None
    assert cv2.imwrite(str(SCREENSHOT), image, [cv2.IMWRITE_JPEG_QUALITY, 85])

    # the zone: its occupancy as lines, the peak as the API says
    browser.find_element(By.CSS_SELECTOR, '#rule option[value="centre"]').click()
    wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#series-chart path.line[data-metric="occupancy_max"]'),
        20,
        "the zone",
    )
    zone = json.loads(
        api(port, f"/api/series?{browser.find_element(By.ID, 'csv').get_attribute('href').split('?', 1)[1]}")[2]
    )
    assert (
        float(browser.find_element(By.CSS_SELECTOR, '[data-total="occupancy_max"] b').text)
        == zone["totals"]["occupancy_max"]
    )
    browser.save_screenshot(str(shots / "analytics-zone.png"))
    # the dwell rule: its histogram holds every departure
    browser.find_element(By.CSS_SELECTOR, '#rule option[value="queue"]').click()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#dwell-chart rect.bar"), 20, "the dwell histogram")
    bins = browser.find_elements(By.CSS_SELECTOR, "#dwell-chart rect.bar")
    departures = int(browser.find_element(By.CSS_SELECTOR, '[data-total="dwell_count"] b').text.replace(",", ""))
    assert sum(int(b.get_attribute("data-value")) for b in bins) == departures > 0
    browser.save_screenshot(str(shots / "analytics-dwell.png"))
    # every bin labelled, the open one too
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#dwell-chart text.tick") if t.text[:1] in "≤>"]
    assert len(ticks) == len(bins) == 12 and ticks[-1] == "> 30 min", ticks
    # at a phone's width nothing scrolls sideways
    browser.set_window_size(420, 1400)
    time.sleep(0.5)
    width = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    scrolled, client = browser.execute_script(width)
    assert scrolled <= client, (scrolled, client)
    browser.save_screenshot(str(shots / "analytics-narrow.png"))
    browser.set_window_size(1440, 1000)

    # a preset range: the From and To shown are the bounds the chart and the CSV cover; a week of days is 7
    browser.get(f"{base}/analytics?camera=hall&rule=middle&label=&range=7d&bucket=86400")
    wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#series-chart rect.bar[data-metric="in"]')) == 7, 20, "7 days")
    assert "Day buckets are UTC days" in browser.find_element(By.ID, "range-note").text
    assert "all labels" in browser.find_element(By.ID, "chart-title").text
    week = json.loads(
        api(port, f"/api/series?{browser.find_element(By.ID, 'csv').get_attribute('href').split('?', 1)[1]}")[2]
    )
    assert len(week["points"]) == 7
    shown_bounds = [browser.find_element(By.ID, key).get_attribute("value") for key in ("from", "to")]
    epoch = [dt.datetime.fromisoformat(week[key]).timestamp() for key in ("from", "to")]
    assert shown_bounds == [browser.execute_script(local, s) for s in epoch], (shown_bounds, week)

    # a link to what is not there says so, and what it shows instead
    browser.get(f"{base}/analytics?camera=hall&rule=nosuch&range=today")
    notice = wait(lambda d: d.find_elements(By.ID, "url-notice"), 20, "the notice")[0]
    assert 'rule "nosuch" was not found' in notice.text and "Showing camera hall, rule middle" in notice.text
