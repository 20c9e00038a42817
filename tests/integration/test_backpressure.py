"""A recording read faster than real time (``realtime: false``) goes at inference's pace: ingest publishes a
frame only when inference has answered the one before it, so no decoded frame is thrown away and
decoding never starves the model. With no inference at all the file slows down; it never stops."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Services
from tests.support import deadline, http_get

pytestmark = pytest.mark.slow

CLIP_FRAMES = 341  # people.mp4: 13.6 s at 25 fps


def metric(services: Services, service: str, name: str, labels: str) -> float:
    _, body = http_get(f"{services.base(service)}/metrics")
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", body, re.MULTILINE)
    assert found, f"{name}{{{labels}}} not in {service}'s metrics"
    return float(found.group(1))


def camera_state(services: Services) -> str:
    _, body = http_get(f"{services.base('ingest')}/metrics")
    found = re.search(r'edgesight_camera_state\{camera="archive",state="(\w+)"\} 1\.0', body)
    return found.group(1) if found else "-"


def recording_site(shared_dir: Path, services: Callable[[dict[str, Any]], Services], **camera: Any) -> Services:
    archive = {
        "url": str(shared_dir / "media" / "people.mp4"),
        "realtime": False,
        "fps": 120,  # above the clip's 25: no frame is rate-limited
        "motion": {"enabled": False},
        **camera,
    }
    return services(
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "max_batch": 1}},
            "cameras": {"archive": archive},
        }
    )


def test_a_recording_goes_at_inference_pace_and_every_frame_is_answered(
    shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = recording_site(shared_dir, services, loop=False)
    for name in ("broker", "inference", "ingest"):  # consumers first: the first frames are heard
        site.start(name)
    started, end = time.monotonic(), deadline(120)
    while camera_state(site) != "stopped":  # the whole file has been read
        assert time.monotonic() < end, f"the recording never finished:\n{site.log('ingest')[-2000:]}"
        time.sleep(0.3)
    took = time.monotonic() - started
    published = metric(site, "ingest", "edgesight_camera_frames_total", 'camera="archive"')

    def answered_now() -> float:
        return metric(site, "inference", "edgesight_inference_frames_total", 'model="people"')

    end = deadline(30)  # for the last frames' Detections (a fixed second was short on a loaded machine)
    while answered_now() < 0.95 * published and time.monotonic() < end:
        time.sleep(0.2)
    answered = answered_now()
    behind = metric(site, "inference", "edgesight_inference_frames_skipped_total", 'model="people",reason="behind"')
    waited = metric(site, "ingest", "edgesight_camera_consumer_wait_seconds_total", 'camera="archive"')
    timeouts = metric(site, "ingest", "edgesight_camera_consumer_timeouts_total", 'camera="archive"')
    print(
        f"{published:.0f} published, {answered:.0f} answered, {behind:.0f} skipped",
        f"in {took:.1f} s ({waited:.1f} s waiting)",
    )
    assert published >= CLIP_FRAMES - 2, published  # every frame of the file, none rate-limited
    # Newest-wins had dropped most of them (inference answered about a third on this machine); now the
    # decoder waits for the model, so (almost) every frame is answered.
    assert answered >= 0.95 * published, (answered, published, behind)
    assert waited > 1.0  # the decoder did wait: it is faster than the model
    assert timeouts <= 2, timeouts  # only a frame published before inference subscribed may go unanswered


def test_without_inference_the_recording_slows_down_but_never_stops(
    shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = recording_site(shared_dir, services, loop=True)
    site.start("broker")
    site.start("ingest")  # a model is configured but no inference runs
    time.sleep(4.0)
    published = metric(site, "ingest", "edgesight_camera_frames_total", 'camera="archive"')
    timeouts = metric(site, "ingest", "edgesight_camera_consumer_timeouts_total", 'camera="archive"')
    # One frame in flight, given up after 0.5 s: about 2 frames a second, not the 150+ it decodes.
    assert 5 <= published <= 16, published
    assert timeouts >= published - 4, (timeouts, published)
    assert camera_state(site) == "streaming"  # waiting for an answer is not a stalled camera

    site.start("inference")  # the model arrives: answers come, the file speeds up
    before, since = metric(site, "ingest", "edgesight_camera_frames_total", 'camera="archive"'), time.monotonic()
    time.sleep(3.0)
    rate = (metric(site, "ingest", "edgesight_camera_frames_total", 'camera="archive"') - before) / (
        time.monotonic() - since
    )
    assert rate > 10, f"{rate:.1f} frames/s once inference answers"
