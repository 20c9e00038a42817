"""Small helpers for tests that talk to real processes over HTTP."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, status: int = 200, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            code, body = http_get(url)
            if code == status:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {seconds}s")


def tool(name: str) -> str:
    """The path of a command the suite needs; a failure that says how to get it."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make bootstrap`"
    return path
