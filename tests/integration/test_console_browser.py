"""The console in a real headless Chromium, on the real pipeline (ingest -> inference -> rules) over the
looping shared clip: log in, see the cameras, find a line crossing and its snapshot, draw a new line and
watch it count without rules restarting. Screenshots of every page are kept under the test's temp dir."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import free_port
from tests.integration.conftest import Services
from tests.support import hall_camera

pytestmark = pytest.mark.slow

PASSWORD = "console-test-password"
TOKEN = "browser-test-token-0123456789"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(tool), f"{tool} is missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


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

    def wait(condition: Callable[[WebDriver], Any], seconds: float, what: str) -> Any:
        try:
            return WebDriverWait(browser, seconds, poll_frequency=0.25).until(condition)
        except WebDriverException:
            screenshot(f"timeout-{what.replace(' ', '-')}")
            raise AssertionError(f"waited {seconds} s for {what}") from None

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
