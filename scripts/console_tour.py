"""`make demo`'s look at the web console: logs in with a headless Chromium, waits for the cameras and a
first event, and saves a screenshot of the overview, a camera page and the events page.

    python scripts/console_tour.py --url http://127.0.0.1:8080 --password ... --out DIR [--camera hall]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

LOADED = "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--camera", default="hall")
    args = parser.parse_args()
    deadline = time.monotonic() + 60
    while True:  # `edgesight run` has just been started: wait for the console to answer
        try:
            urllib.request.urlopen(args.url + "/login", timeout=2).close()
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                print(f"-- the console did not answer at {args.url} within 60 s: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    )
    saved = []
    try:
        wait = WebDriverWait(browser, 60, poll_frequency=0.5)
        browser.get(args.url + "/login")
        browser.find_element(By.ID, "password").send_keys(args.password)
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.execute_script(LOADED, f'[data-camera="{args.camera}"] img'))
        wait.until(lambda d: "rules" in d.find_element(By.ID, "services").text)
        pages = [
            ("overview", "/", None),
            ("camera", f"/cameras/{args.camera}", "#live"),
            ("events", f"/events?camera={args.camera}", "#timeline img.thumb"),
        ]
        for name, path, ready in pages:
            browser.get(args.url + path)
            if ready:
                wait.until(lambda d, selector=ready: d.execute_script(LOADED, selector))
            else:
                wait.until(lambda d: d.execute_script(LOADED, f'[data-camera="{args.camera}"] img'))
            shot = args.out / f"console_{name}.png"
            browser.save_screenshot(str(shot))
            saved.append(str(shot))
    except WebDriverException as exc:
        print(f"-- the console tour stopped: {exc.msg}", file=sys.stderr)
        return 1
    finally:
        browser.quit()
    print("-- screenshots of the console:", *saved, sep="\n   ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
