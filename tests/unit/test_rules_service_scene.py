"""Rules publishes a camera's Scene at most at the camera's fps (and never more than the console's live view
shows), per model, on the frames' own clock; every frame is still handled and counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from common.config import load_config
from contracts import Detections, Message, Scene
from services.rules.scene import SCENE_MAX_FPS
from services.rules.service import RulesService
from tests.conftest import write_site
from tests.support import frame_ref

RULES = {"gate": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}}


class Recorder:
    """Stands in for the service's publisher: keeps what it is given."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, Message]] = []

    async def publish(self, stream: str, key: str, message: Message) -> None:
        self.published.append((stream, key, message))

    def scenes(self) -> list[Scene]:
        return [message for stream, _, message in self.published if stream == "scene"]  # type: ignore[misc]


def _run(tmp_path: Path, fps: float, frame_times: list[float], models: tuple[str, ...] = ("people",)) -> RulesService:
    """One walker on camera ``cam`` (its ``fps`` as given), a Detections per model at each frame time."""
    site = write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "fps": fps, "rules": RULES}}})
    service = RulesService(load_config(site))
    service.publisher = Recorder()  # type: ignore[assignment]

    async def frames() -> None:
        for seq, t in enumerate(frame_times, 1):
            y = 0.2 + 0.6 * seq / len(frame_times)
            at_ns = round(t * 1e9)
            ref = frame_ref("cam", seq, capture_ns=at_ns + 1, monotonic_ns=at_ns + 1, width=640, height=480)
            box = np.array([[0.4, y - 0.1, 0.5, y]], "<f4")
            for model in models:
                detections = Detections.from_arrays(ref, model, box, class_ids=[0], scores=[0.9], labels={0: "person"})
                await service.handle(detections)

    try:
        asyncio.run(frames())
    finally:
        service.outbox.close()
        service.store.close()
    return service


def test_a_camera_faster_than_its_fps_gets_scenes_at_its_fps(tmp_path: Path) -> None:
    service = _run(tmp_path, fps=10, frame_times=[i / 30 for i in range(90)])  # 3 s at 30 fps
    scenes = service.publisher.scenes()  # type: ignore[union-attr]
    assert [scene.frame.seq for scene in scenes] == list(range(1, 91, 3))  # every third frame, evenly
    assert service.health_counters()["frames"] == 90  # every frame handled and counted
    assert scenes[-1].lines["gate"]["person"].in_ == 1  # the newest Scene has the counts of its frame


def test_a_camera_at_its_fps_loses_no_scene_to_jitter(tmp_path: Path) -> None:
    jitter = np.random.default_rng(1).uniform(-0.02, 0.02, 50)
    service = _run(tmp_path, fps=10, frame_times=[i / 10 + jitter[i] for i in range(50)])
    assert len(service.publisher.scenes()) == 50  # type: ignore[union-attr]


def test_scenes_never_outrun_the_live_view(tmp_path: Path) -> None:
    service = _run(tmp_path, fps=30, frame_times=[i / 30 for i in range(90)])
    assert len(service.publisher.scenes()) == pytest.approx(3 * SCENE_MAX_FPS, abs=1)  # type: ignore[union-attr]


def test_each_model_of_a_camera_has_its_scenes(tmp_path: Path) -> None:
    service = _run(tmp_path, fps=10, frame_times=[i / 20 for i in range(20)], models=("people", "vehicles"))
    scenes = service.publisher.scenes()  # type: ignore[union-attr]
    assert [scene.model for scene in scenes] == ["people", "vehicles"] * 10  # each at 10 a second, 1 s of frames
    assert service.health_counters()["frames"] == 40


def test_scenes_go_on_when_the_frames_clock_goes_back(tmp_path: Path) -> None:
    """ingest restarted on another boot, or a test's frames: the Scenes do not wait for the old clock."""
    service = _run(tmp_path, fps=10, frame_times=[100 + i / 10 for i in range(5)] + [i / 10 for i in range(5)])
    assert len(service.publisher.scenes()) == 10  # type: ignore[union-attr]
