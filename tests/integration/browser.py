"""A real headless Chromium for the console's browser tests, and a wait that leaves a screenshot behind."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import scaled

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

Wait = Callable[[Callable[[WebDriver], Any], float, str], Any]


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


def page_waiter(browser: WebDriver, shots: Path) -> Wait:
    """``wait(condition, seconds, what)``: the condition's value, or an AssertionError naming ``what`` with a
    screenshot of the page as it was left in ``shots`` (seconds scaled for a loaded machine)."""

    def wait(condition: Callable[[WebDriver], Any], seconds: float, what: str) -> Any:
        try:
            return WebDriverWait(browser, scaled(seconds), poll_frequency=0.25).until(condition)
        except WebDriverException:
            browser.save_screenshot(str(shots / f"timeout-{what.replace(' ', '-')}.png"))
            raise AssertionError(f"waited {seconds} s for {what} (screenshots in {shots})") from None

    return wait
