"""Line counts through the real services at the frame rate edge boxes run: the shared clip as a file
camera at ``fps: 8`` -> ingest -> inference (YOLOX-Nano) -> rules, against the tracker and the same
lines run in-process on every frame of the same clip."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._tracking import PEOPLE_LINES, count_crossings, people_frames
from tests.integration.conftest import Services
from tests.support import deadline, http_get, scaled

pytestmark = pytest.mark.slow


def camera_state(services: Services) -> str | None:
    _, body = http_get(f"{services.base('ingest')}/metrics")
    found = re.search(r'edgesight_camera_state\{camera="hall",state="(\w+)"\} 1\.0', body)
    return found.group(1) if found else None


def test_line_counts_at_8_fps_match_a_full_rate_run(
    shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    rules = {name: {"type": "line", "line": line, "classes": ["person"]} for name, line in PEOPLE_LINES.items()}
    camera = {"url": str(shared_dir / "media" / "people.mp4"), "fps": 8, "loop": False, "rules": rules}
    site = services(
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "score_threshold": 0.1}},
            "cameras": {"hall": camera},
            "events": {"jsonl": "events.jsonl"},
        }
    )
    for name in ("broker", "inference", "rules", "ingest"):  # consumers first: no frame goes unheard
        site.start(name)
    end = deadline(60)
    while camera_state(site) != "stopped":  # the file has been played once, at its own pace
        assert time.monotonic() < end, f"ingest never finished the clip:\n{site.log('ingest')[-2000:]}"
        time.sleep(0.5)
    events_file = Path(site.config.site.state_dir) / "events.jsonl"
    counted: list[dict[str, Any]] = []
    settled_at = time.monotonic()
    while time.monotonic() - settled_at < scaled(3):  # the last frames' detections and events drain
        now = [json.loads(line) for line in events_file.read_text().splitlines()] if events_file.exists() else []
        if len(now) != len(counted):
            counted, settled_at = now, time.monotonic()
        time.sleep(0.3)
    crossings = [event for event in counted if event["event_type"] == "line_cross"]
    _, body = http_get(f"{site.base('ingest')}/metrics")
    published = float(re.search(r'edgesight_camera_frames_total\{camera="hall"\} (\S+)', body).group(1))  # type: ignore[union-attr]
    assert 100 <= published <= 125, published  # 13.6 s of clip at 8 fps: every third frame, about

    reference = len(count_crossings(people_frames()).crossings)
    print(f"crossings: {len(crossings)} at 8 fps through the services, {reference} in-process at full rate")
    assert abs(len(crossings) - reference) <= 0.15 * reference, (len(crossings), reference)
    assert {event["attributes"]["direction"] for event in crossings} == {"in", "out"}
