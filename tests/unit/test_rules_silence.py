"""``edgesight_tracks_active{camera,model}`` goes to 0 for a model that stopped sending (issue #31), by
the time Detections are received, not the time of their frames; a model still heard keeps its value."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from common.config import load_config
from contracts import Detections
from services.rules import metrics
from services.rules.service import RulesService
from services.rules.silence import SilentModels
from tests.conftest import write_site
from tests.support import frame_ref

MAX_AGE_S = 0.5


def _tracks(camera: str, model: str) -> float | None:
    return REGISTRY.get_sample_value("edgesight_tracks_active", {"camera": camera, "model": model})


def _service(tmp_path: Path) -> RulesService:
    rules = {"door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}}
    extra = {"cameras": {"quiet": {"url": "rtsp://h/1", "rules": rules}}, "tracker": {"max_age_s": MAX_AGE_S}}
    return RulesService(load_config(write_site(tmp_path, extra)))


async def _frames(service: RulesService, model: str, count: int, first_seq: int = 1) -> None:
    """Two people standing still, ``count`` frames of ``model``; frame times from 1 s on, 0.1 s apart."""
    boxes = np.array([[0.1, 0.2, 0.2, 0.6], [0.6, 0.2, 0.7, 0.6]], "<f4")
    for seq in range(first_seq, first_seq + count):
        at_ns = 10**9 + seq * 10**8
        ref = frame_ref("quiet", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=640, height=480)
        await service.handle(Detections.from_arrays(ref, model, boxes, [0, 0], [0.9, 0.9], labels={0: "person"}))


def test_a_silent_models_tracks_go_to_zero_and_a_heard_one_keeps_them(tmp_path: Path) -> None:
    service = _service(tmp_path)
    try:
        asyncio.run(_frames(service, "stops", 6))
        asyncio.run(_frames(service, "goes-on", 6))
        assert _tracks("quiet", "stops") == 2 and _tracks("quiet", "goes-on") == 2
        now = time.monotonic()
        assert service.silent.sweep(now) == []  # both heard just now
        assert _tracks("quiet", "stops") == 2
        later = now + MAX_AGE_S + 0.2
        service.silent.heard("quiet", "goes-on", later)  # still sending
        assert service.silent.sweep(later) == [("quiet", "stops")]
        assert _tracks("quiet", "stops") == 0  # before #31: 2 for ever
        assert _tracks("quiet", "goes-on") == 2
        assert service.silent.sweep(later + 10) == [("quiet", "goes-on")]  # once each silence, not each sweep
        assert service.silent.sweep(later + 20) == []
        asyncio.run(_frames(service, "stops", 1, first_seq=7))  # back: its gauge is live again
        assert _tracks("quiet", "stops") == 2
    finally:
        service.outbox.close()
        service.store.close()


def test_receive_time_decides_not_the_frames_clock() -> None:
    """A sender whose frames' clock stands still (or is far ahead) is heard as long as it sends."""
    silent = SilentModels(max_age_s=1.0)
    silent.heard("cam", "m", now=100.0)
    assert silent.sweep(now=100.9) == []
    silent.heard("cam", "m", now=101.5)
    assert silent.sweep(now=102.0) == []
    assert silent.sweep(now=102.6) == [("cam", "m")]


def test_a_camera_a_reload_removed_reads_zero() -> None:
    silent = SilentModels(max_age_s=60.0)
    metrics.ACTIVE_TRACKS.labels("gone-cam", "m").set(3)
    silent.heard("gone-cam", "m", now=0.0)
    silent.forget("gone-cam")
    assert _tracks("gone-cam", "m") == 0
    assert silent.sweep(now=1000.0) == []
