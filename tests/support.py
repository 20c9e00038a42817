"""Small helpers for tests: HTTP polling, tool lookup, placeholder bus messages."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from typing import Any

from contracts import FrameRef


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


def frame_ref(camera: str = "cam1", seq: int = 0, **fields: Any) -> FrameRef:
    """A FrameRef of a tiny 2x2 frame that lies nowhere: for tests of the bus, not of shared memory."""
    defaults: dict[str, Any] = {"capture_ns": 1, "monotonic_ns": 1, "slot": 0, "generation": 2}
    defaults["segment"] = "edgesight.site.cam"
    geometry = {"width": 2, "height": 2, "stride": 6}
    return FrameRef(camera=camera, seq=seq, **(defaults | geometry | fields))


def hall_camera(**overrides: Any) -> dict[str, Any]:
    """The shared crowd clip as a looping 5 fps camera with a line across its middle and a zone in its centre."""
    rules = {
        "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"]},
        "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]},
    }
    return {"url": "people.mp4", "loop": True, "fps": 5, "rules": rules, **overrides}


def prometheus_query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    """An instant PromQL query through Prometheus' HTTP API; the result vector."""
    import json
    import urllib.parse

    status, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expression})}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (expression, answer)
    return list(answer["data"]["result"])
